"""Similarity beyond the label, of one run's embeddings: WordNet-graded neighbours and triplets,
near-duplicate recall under the standard and the held-out transforms, and one query's wrong
neighbours with their relation to its class (`semantic_metrics`; `workflow.evaluate` calls it
with what it loaded)."""

from __future__ import annotations

import logging

import numpy as np

from ranking_lib.core.config import RunConfig
from ranking_lib.data import ImageCache, TinyImageNet
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.query import pick_query_examples
from ranking_lib.run_files import index_options

logger = logging.getLogger(__name__)


def semantic_metrics(cfg: RunConfig, ds: TinyImageNet, db: EmbeddingIndex, *, kept: np.ndarray, held: np.ndarray,
                     val: EmbeddingIndex | None, metrics: dict[str, dict], embed_fn=None,
                     caches: dict[str, ImageCache] | None = None) -> dict:
    """Similarity beyond the label (`retrieval.semantic`), added to `metrics`' tune and val splits:

    * ``wup@k``, ``mistake_wup@k`` (all / wrong neighbours' mean Wu-Palmer similarity to the
      query's class), ``mistake_wup_chance``, ``semantic_triplet_acc`` (on `val_triplets` seeded
      WordNet triplets): with WordNet (`wordnet_dir`) and WordNet class ids, else left out;
    * ``near_dup_recall@1`` / ``@10`` (the standard transforms), ``near_dup_held_out_recall@1`` /
      ``@10`` (the held-out ones, which no training augmentation makes) and per transform:
      `near_dup_queries` images of the split transformed, embedded with the network, searched
      among the split's database plus the originals (embedded the same way).

    Returns what ``metrics_<model>.json`` keeps under ``semantic``: the WordNet directory, a note
    when the graded metrics were left out, and one val (else tune) query's wrong neighbours with
    their relation to its class (``example``) and near-duplicate recall by transform
    (``near_dup_by_transform``). `ds`: the run's dataset; `embed_fn` (images -> embeddings, by the
    network that computed `db`) and `caches` (the train and val images): the near-duplicate recall,
    left out without them."""
    from ranking_lib.retrieval.protocol import semantic_evaluation
    from ranking_lib.retrieval.near_duplicates import ALL_TRANSFORMS, FAMILIES, near_duplicate_ids, near_duplicate_recall
    from ranking_lib.retrieval.semantic import load_hierarchy

    info: dict = {"wordnet_dir": cfg.wordnet_dir, "note": None, "example": None}
    hierarchy, note = load_hierarchy(ds.wnids, cfg.wordnet_dir)
    if hierarchy is None:
        info["note"] = note
        logger.info(f"note: {note}")
    else:
        graded = semantic_evaluation(db, hierarchy.similarity, kept=kept, held=held, ks=cfg.ks,
                                     num_triplets=cfg.val_triplets, seed=cfg.seed, val=val,
                                     index_options=index_options(cfg))
        for split, m in graded.items():
            metrics[split].update(m)
        if hierarchy.missing:
            info["missing_wnids"] = hierarchy.missing
        info["example"] = _wrong_neighbours_example(cfg, ds, hierarchy, db, kept, held, val)
    if embed_fn is not None and caches is not None:
        plan = []
        if len(held):
            plan.append(("tune", caches["train"].images[held[near_duplicate_ids(len(held), cfg.near_dup_queries,
                                                                                 cfg.seed)]], db.embeddings[kept]))
        if val is not None:
            plan.append(("val", caches["val"].images[near_duplicate_ids(len(val), cfg.near_dup_queries, cfg.seed)],
                         db.embeddings))
        info["near_dup_by_transform"] = {}
        info["near_dup_families"] = {f: list(names) for f, names in FAMILIES.items()}
        for split, images, base in plan:
            m = near_duplicate_recall(embed_fn, images, base, seed=cfg.seed)
            per = {key: m.pop(key) for key in list(m) if key.rsplit("_", 1)[-1] in ALL_TRANSFORMS}
            metrics[split].update(m)
            info["near_dup_by_transform"][split] = per  # recall@k_<transform>
    return info


def _wrong_neighbours_example(cfg: RunConfig, ds: TinyImageNet, hierarchy, db: EmbeddingIndex,
                              kept: np.ndarray, held: np.ndarray, val: EmbeddingIndex | None) -> dict | None:
    """The first of the query examples (val, else tune) with a wrong neighbour among its
    `top_k_show` nearest: each wrong neighbour's class, lowest common hypernym and Wu-Palmer
    similarity to the query's class."""
    if val is not None:
        split, qe, ql, paths, base, base_labels = "val", val.embeddings, val.labels, val.paths, db, db.labels
    elif len(held):
        split, qe, ql = "tune", db.embeddings[held], db.labels[held]
        paths = [db.paths[i] for i in held] if db.paths is not None else None
        base = EmbeddingIndex(db.embeddings[kept], db.labels[kept], backend="torch")
        base_labels = db.labels[kept]
    else:
        return None
    picks = pick_query_examples(ql, min(cfg.num_query_examples, len(np.unique(ql))), cfg.query_seed)
    k = min(cfg.top_k_show, len(base))
    chosen = None
    for i in picks:
        idx, _ = base.topk(qe[i], k)
        wrong = [int(base_labels[j]) for j in idx if base_labels[j] != ql[i]]
        if wrong or chosen is None:
            chosen = (i, wrong)
        if wrong:
            break
    i, wrong = chosen
    q = int(ql[i])
    names = ds.class_names
    return {"split": split, "query_index": int(i), "query_path": None if paths is None else str(paths[i]),
            "query_class": names[q], "k": k,
            "wrong": [{"class": names[c], **hierarchy.relation(q, c)} for c in wrong]}
