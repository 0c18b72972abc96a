"""The pipeline's steps, each a function of a `RunConfig`: used by the CLI and the notebooks.

    prepare -> sample -> train -> embed -> evaluate -> query

Every step reads what earlier steps wrote into ``cfg.run_dir``:

    config.json, triplets_train.npy, triplets_val.npy, checkpoints/last.pt, loss_log.csv,
    train_summary.json,
    embeddings_<model>_<split>.npz, metrics_<model>.json, figures/
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ranking_lib import fine_grained
from ranking_lib.choices import check_choices
from ranking_lib.core.config import RunConfig
from ranking_lib.core.devices import resolve_device
from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import read_json, write_json
from ranking_lib.core.plan import evaluation_seconds, pipeline_started
from ranking_lib.core.names import METRIC_SPLITS, MODELS  # noqa: F401 - re-exported for notebooks
from ranking_lib.core.runlock import RunDirLock
from ranking_lib.data import (
    SPLITS,
    ImageCache,
    TinyImageNet,
    load_image_rgb,
    load_or_build_cache,
)
from ranking_lib.data.holdout import holdout_split
from ranking_lib.models.inference import ModelInputs, embed_images
from ranking_lib.models.model import (
    EmbeddingNet,
    HEAD_INITS,
    build_model,
)
from ranking_lib.models.stage_cache import model_inputs, stage_inputs  # noqa: F401 - stage_inputs re-exported
from ranking_lib.run_settings import class_similarity, feature_options, make_trainer, model_kwargs, workload
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.run_files import (check_embeddings, check_index_size, check_network, check_replacing_triplets,  # noqa: F401
                                   check_sample_size, embeddings_meta, embeddings_path, index_options, network_record,
                                   run_path, triplet_settings)  # run_path, embeddings_path, ...: workflow.* in notebooks
from ranking_lib.retrieval.protocol import evaluate_embeddings
from ranking_lib.retrieval.rerank import Reranker
from ranking_lib.retrieval.query import (
    QueryResult,
    pick_query_examples,
    query_split,
    query_vector,
)
from ranking_lib.training import distributed
from ranking_lib.training.checkpoint import load_model_state, read_checkpoint
from ranking_lib.training.trainer import TrainResult
from ranking_lib.training.views import instance_training
from ranking_lib.triplets.golden import golden_features
from ranking_lib.triplets.online import TRIPLET_SOURCES
from ranking_lib.triplets.samplers import (
    RelevanceTripletSampler,
    TripletSampler,
    load_triplets,
    save_triplets,
)

logger = logging.getLogger(__name__)


# ---- setup ---------------------------------------------------------------------------
def setup_torch(cfg: RunConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)


def writes_run_dir(step):
    """Run `step(cfg, ...)` holding the run directory's lock (one writer per run dir), once every
    choice field of `cfg` names a registered choice (`choices.check_choices`)."""
    @functools.wraps(step)
    def locked(cfg: RunConfig, *args, **kwargs):
        check_choices(cfg)
        if not distributed.context().is_main:  # under torchrun rank 0 holds the lock and writes
            return step(cfg, *args, **kwargs)
        with RunDirLock(cfg.run_dir, step.__name__):
            return step(cfg, *args, **kwargs)
    return locked


def load_dataset(cfg: RunConfig) -> TinyImageNet:
    return TinyImageNet(cfg.data_dir, max_classes=cfg.max_classes)


def load_caches(cfg: RunConfig, progress: bool = True, splits: tuple[str, ...] = SPLITS) -> dict[str, ImageCache]:
    ds = load_dataset(cfg)
    for s in splits:  # every split's index is checked before any cache is built
        ds.items(s)
    return {s: load_or_build_cache(ds, s, cfg.cache_dir, skip_corrupt=cfg.skip_corrupt, progress=progress)
            for s in splits}


# ---- steps ---------------------------------------------------------------------------
class PreparedCaches(dict):
    """`prepare`'s caches by split; ``checks`` holds what it found about them, one line each
    (lines starting with ``warning:`` are also logged as warnings)."""

    checks: list[str]


def _prepare_checks(cfg: RunConfig, caches: dict[str, ImageCache]) -> list[str]:
    """Split checks (`data.checks.check_splits`: a file in both splits is refused) and the stray
    files beside the caches (`models.stage_cache.stray_files`, left alone)."""
    from ranking_lib.data.checks import check_splits
    from ranking_lib.models.stage_cache import stray_files

    lines = check_splits(Path(cfg.data_dir).expanduser().resolve(), caches["train"], caches["val"]).lines()
    cache_dir = caches["train"].cache_file.parent if caches["train"].cache_file is not None else None
    stray = stray_files(cache_dir, caches) if cache_dir is not None else []
    if stray:
        mb = sum(p.stat().st_size for p in stray if p.exists()) / 2**20
        lines.append(f"warning: {len(stray)} file(s) in {cache_dir} are not computed from the current caches "
                     f"({mb:,.1f} MB; first: {stray[0].name}); left alone: delete them if no other dataset "
                     "copy uses them")
    return lines


@writes_run_dir
def prepare(cfg: RunConfig, progress: bool = True) -> PreparedCaches:
    """Build (or verify) the decoded uint8 caches of train and val; check the splits (see
    `_prepare_checks`); save the run config."""
    caches = PreparedCaches(load_caches(cfg, progress))
    caches.checks = _prepare_checks(cfg, caches)
    for line in caches.checks:
        if line.startswith("warning: "):
            logger.warning(line[len("warning: "):])
    if not Path(cfg.run_dir, "checkpoints", "last.pt").is_file():  # else config.json is the trained run's
        cfg.save(run_path(cfg, "config.json"))
    return caches


@writes_run_dir
def sample(cfg: RunConfig, *, replace: bool = False) -> dict[str, np.ndarray]:
    """Sample training triplets (train split) and evaluation triplets (val split only).

    With ``triplet_source=online`` training draws its triplets as it runs; the train file then
    holds `val_triplets` course triplets of the training images, to score the train split.
    Triplets sampled with other settings are not replaced unless `replace`
    (`check_replacing_triplets`)."""
    check_sample_size(cfg)
    if not replace:
        check_replacing_triplets(cfg, ["train", "val"] + (["tune"] if cfg.holdout_per_class else []))
    caches = load_caches(cfg, progress=False)
    train = caches["train"]
    kept, held = holdout_split(train.labels, cfg.holdout_per_class, cfg.seed, train.wnids)
    # (name, split's cache, images it may use); indices map back into the split
    plan = [("train", train, kept), ("val", caches["val"], np.arange(len(caches["val"])))]
    if len(held):
        plan.append(("tune", train, held))
    else:
        Path(cfg.run_dir, "triplets_tune.npy").unlink(missing_ok=True)
    out = {}
    for name, cache, ids in plan:
        where = "train" if name == "tune" else name
        meta = {"split": where, "num_images": len(cache), **triplet_settings(cfg, name)}
        n, seed = meta["num_triplets"], meta["seed"]
        if name == "train" and cfg.triplet_source == "online":
            # training draws its own triplets as it runs: this file only scores the train split
            meta["purpose"] = "evaluation only: training draws its triplets online"
        if meta["sampler"] == "relevance":  # evaluation triplets stay the course's
            sampler = RelevanceTripletSampler(cache.labels[ids], golden_features_of(cfg, cache)[ids],
                                              out_of_class_fraction=cfg.out_of_class_fraction, tp=cfg.relevance_tp, tr=cfg.relevance_tr,
                                              seed=seed, class_ids=cache.wnids, split=where)
            t = ids[sampler.sample(n)]
            meta.update(in_class_negatives=int((cache.labels[t[:, 0]] == cache.labels[t[:, 2]]).sum()),
                        in_class_fallbacks=sampler.in_class_fallbacks)
        else:
            t = ids[TripletSampler(cache.labels[ids], seed=seed, class_ids=cache.wnids, split=where).sample(n)]
        save_triplets(run_path(cfg, f"triplets_{name}.npy"), t, meta)
        out[name] = t
    return out


def training_triplets(cfg: RunConfig, cache: ImageCache, progress: bool = True):
    """What training draws its triplets from: the run's pre-sampled file, or online buffers."""
    source = TRIPLET_SOURCES.get(cfg.triplet_source)  # None: the run's pre-sampled file
    if source is None:
        return load_run_triplets(cfg, "train", len(cache))
    kept, _ = holdout_split(cache.labels, cfg.holdout_per_class, cfg.seed, cache.wnids)
    feats = golden_features_of(cfg, cache, progress)[kept] if cfg.uses_relevance else None
    return source(cache.labels[kept], batch_size=cfg.batch_size, buffer_size=cfg.buffer_size,
                  refresh_steps=cfg.buffer_refresh_steps, features=feats, out_of_class_fraction=cfg.out_of_class_fraction,
                  tp=cfg.relevance_tp, tr=cfg.relevance_tr, seed=cfg.seed, class_ids=cache.wnids,
                  index=kept)


def load_run_triplets(cfg: RunConfig, split: str, num_images: int) -> np.ndarray:
    """The run's triplet file of `split`, refused when sampled with other settings than `cfg`'s."""
    return load_triplets(run_path(cfg, f"triplets_{split}.npy"), num_images, expect=triplet_settings(cfg, split))


def golden_features_of(cfg: RunConfig, cache: ImageCache, progress: bool = True) -> np.ndarray:
    """The golden features of `cache` (`triplets.golden`): the run's backbone, single architecture."""
    return golden_features(build_model(**model_kwargs(cfg, architecture="single")), cache, feature_options(cfg),
                           progress)


def initial_model(cfg: RunConfig, wnids: list[str], progress: bool = False) -> EmbeddingNet:
    """The network a training run starts from: `build_model`, then the head init of `cfg`."""
    model = build_model(**model_kwargs(cfg))
    init = HEAD_INITS.get(cfg.head_init)  # None: the head keeps its seeded random init
    if init is not None:
        copied = init(model, wnids)
        if progress:
            logger.info(f"head initialised from the ImageNet classifier rows of {copied} dataset classes")
    return model


# What a training run produces: a fresh start (resume=False) removes them all first.
TRAINED_OUTPUTS = ("checkpoints/last.pt", "loss_log.csv", "train_summary.json", "metrics_trained.json",
                   "embeddings_trained_train.npz", "embeddings_trained_val.npz")


@writes_run_dir
def train(cfg: RunConfig, *, progress: bool = True, resume: bool = True, stop_at: int | None = None,
          steps_per_s: float | None = None, replans: list | None = None) -> TrainResult:
    """Train the ranking network on the pre-sampled training triplets.

    Resumes from ``checkpoints/last.pt`` when it exists (see `Trainer.resume` for what is
    refused); ``resume=False`` first removes everything an earlier training run wrote. With
    ``train_minutes`` the steps are chosen from the step rate (measured, or `steps_per_s`) and
    saved in config.json; a resumed run keeps them. With ``budget_minutes`` the time spent
    counts from the pipeline's start (`core.plan.pipeline_started`), else from this call. The
    budget's moves of the schedule's end are in train_summary.json (``replans``); handed back as
    `replans` to a run of the final steps without a budget, they repeat its schedule."""
    started = pipeline_started(time.time())
    setup_torch(cfg)
    ctx = distributed.context()
    if not resume and ctx.is_main:
        for rel in TRAINED_OUTPUTS:
            Path(cfg.run_dir, rel).unlink(missing_ok=True)
    distributed.barrier(ctx)  # no rank resumes from what rank 0 is removing
    caches = load_caches(cfg, progress=False)
    triplets = distributed.main_first(ctx, lambda: training_triplets(cfg, caches["train"], progress and ctx.is_main))
    model = initial_model(cfg, caches["train"].wnids, progress and ctx.is_main)
    options = feature_options(cfg)
    inputs = distributed.main_first(ctx, lambda: model_inputs(model, caches["train"], options, progress and ctx.is_main))
    kept, _ = holdout_split(caches["train"].labels, cfg.holdout_per_class, cfg.seed, caches["train"].wnids)
    triplets, views = distributed.main_first(  # instance triplets mixed in (instance_fraction), their views
        ctx, lambda: instance_training(triplets, model, caches["train"], options, instance_fraction=cfg.instance_fraction,
                                       views_per_image=cfg.views_per_image, batch_size=cfg.batch_size, seed=cfg.seed,
                                       candidates=kept, progress=progress and ctx.is_main))
    # handed its parts (optimiser, loss, miner, fine-grained terms) and plain settings
    trainer = make_trainer(cfg, model, inputs, caches["train"].labels, triplets,
                           class_similarity=class_similarity(cfg, caches["train"].wnids), replans=replans or (),
                           views=views)
    if resume:
        trainer.resume()  # refuses changed settings before config.json is rewritten
    evaluation_s = evaluation_seconds(workload(cfg), len(caches["train"])) if cfg.budget_minutes is not None else 0.0
    # the budget's steps (a resumed run: its checkpoint's)
    trainer.apply_budget(steps_per_s, progress, spent_s=time.time() - started, evaluation_s=evaluation_s)
    cfg = cfg.replace(steps=trainer.steps)
    if ctx.is_main:
        cfg.save(run_path(cfg, "config.json"))
    result = trainer.fit(resume=resume, stop_at=stop_at, progress=progress)
    if ctx.is_main and trainer.steps != cfg.steps:  # the budget moved the schedule's end
        cfg = cfg.replace(steps=trainer.steps)
        cfg.save(run_path(cfg, "config.json"))
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    summary["world_size"] = ctx.world_size
    summary["steps_chosen_by_budget"] = result.budget["steps"] if result.budget else None
    if ctx.is_main and (result.steps_run or not run_path(cfg, "train_summary.json").is_file()):
        write_json(run_path(cfg, "train_summary.json"), summary)  # else it describes the run
    return result


def load_model(cfg: RunConfig, model: str = "trained") -> EmbeddingNet:
    """The trained network from the run's checkpoint, or the untrained `baseline`."""
    if model not in MODELS:
        raise RankingError(f"model must be one of {MODELS} (got {model!r})")
    net = build_model(**model_kwargs(cfg))
    if model == "trained":
        path = run_path(cfg, "checkpoints", "last.pt")
        load_model_state(net, read_checkpoint(path), path)
    return net.eval()


@writes_run_dir
def embed(cfg: RunConfig, model: str = "trained", progress: bool = True) -> dict[str, Path]:
    """Embed the train split (the database) and the val split (the queries; not while recipes are
    chosen on the tuning split, ``evaluate_val`` off)."""
    setup_torch(cfg)
    caches = load_caches(cfg, progress=False)
    net = load_model(cfg, model)
    network = network_record(cfg, model)
    splits = SPLITS if cfg.evaluate_val else ("train",)
    ctx = distributed.context()  # under torchrun each rank embeds a slice, rank 0 writes
    device = distributed.rank_device(cfg.device, ctx)
    out = {}
    options = feature_options(cfg)
    for split in splits:
        c = caches[split]
        t0 = time.perf_counter()
        inputs = distributed.main_first(ctx, lambda: model_inputs(net, c, options, progress and ctx.is_main))
        if ctx.enabled:
            part = ctx.shard(len(inputs))
            inputs = ModelInputs(inputs.array[part], inputs.kind, None if inputs.images is None else inputs.images[part])
        z = embed_images(net, inputs, cfg.embed_batch_size, device, baseline=model == "baseline",
                         progress=progress and ctx.is_main, desc=f"embed {split} ({model})", bf16_cpu=cfg.bf16_cpu,
                         flip_tta=cfg.flip_tta)
        if ctx.enabled:
            z = distributed.gather_to_main(torch.from_numpy(z).to(resolve_device(device)), ctx)
            if not ctx.is_main:
                continue
            z = z.cpu().numpy()
        EmbeddingIndex(z, c.labels, list(c.paths)).save(embeddings_path(cfg, model, split),
                                                        meta=embeddings_meta(model, c, network))
        out[split] = embeddings_path(cfg, model, split)
        if progress:
            logger.info(f"embedded {len(c)} {split} images in {time.perf_counter() - t0:.1f} s")
    distributed.barrier(ctx)
    return out


def load_index(cfg: RunConfig, model: str, split: str) -> EmbeddingIndex:
    """The `split`'s embeddings of `model`, checked against the dataset (`check_embeddings`)."""
    path = embeddings_path(cfg, model, split)
    if not path.is_file():
        raise RankingError(f"embeddings not found: {path} (run the 'embed' step for model {model!r})")
    cache = load_caches(cfg, progress=False, splits=(split,))[split]
    if split == "train":
        check_index_size(cfg, cache)
    index = EmbeddingIndex.load(path, **index_options(cfg))
    check_embeddings(cfg, index, split, cache, path)
    check_network(cfg, model, index, path)
    return index


@writes_run_dir
def evaluate(cfg: RunConfig, model: str = "trained") -> dict[str, dict]:
    """All metrics on train, tune (with ``holdout_per_class``) and val (with ``evaluate_val``),
    by the protocol of `retrieval.protocol.evaluate_embeddings`; written to ``metrics_<model>.json``.

    * triplet_acc: % of the split's triplets with D(q,p) < D(q,n).
    * precision@k, any_hit@k, map@r, ...: retrieval of the nearest *training* images.
    * score_at_top_30 (tune, val): the paper's score at top-K, see `metrics.score_at_top_k`;
      ``score_at_top_30_counted`` is how many triplets it counts.
    """
    db = load_index(cfg, model, "train")
    kept, held = holdout_split(db.labels, cfg.holdout_per_class, cfg.seed)
    triplets = {"train": load_run_triplets(cfg, "train", len(db))}
    if len(held):
        triplets["tune"] = load_run_triplets(cfg, "tune", len(db))
    val = None
    if cfg.evaluate_val:
        val = load_index(cfg, model, "val")
        triplets["val"] = load_run_triplets(cfg, "val", len(val))
    metrics = evaluate_embeddings(db, triplets, kept=kept, held=held, ks=cfg.ks,
                                  train_eval_queries=cfg.train_eval_queries, seed=cfg.seed, val=val,
                                  index_options=index_options(cfg), rerank=run_reranker(cfg, model))
    semantic = (semantic_metrics(cfg, model, db, kept=kept, held=held, val=val, metrics=metrics)
                if cfg.semantic_metrics else None)
    write_json(run_path(cfg, f"metrics_{model}.json"), {"model": model, "config": cfg.to_dict(), **metrics,
                                                        **({"semantic": semantic} if semantic else {})})
    return metrics


def semantic_info(cfg: RunConfig, model: str = "trained") -> dict:
    """What ``metrics_<model>.json`` keeps under ``semantic`` (`semantic_metrics`: the WordNet
    directory, a note when graded metrics were left out, ...); {} when it has none."""
    return read_json(run_path(cfg, f"metrics_{model}.json"), "metrics").get("semantic") or {}


def run_reranker(cfg: RunConfig, model: str) -> Reranker:
    """The query-time re-ranking `evaluate` applies. With ``rerank: auto`` the trained network
    chooses on the tuning split; the untrained baseline then gets the trained network's choice
    (read from ``metrics_trained.json``), so both are searched the same way and the baseline's
    1280-d features are not run through every candidate (minutes on the full data); a baseline
    evaluated before the trained network chooses for itself."""
    if cfg.rerank == "auto" and model == "baseline":
        saved = read_json(run_path(cfg, "metrics_trained.json"), "metrics", missing_ok=True)
        chosen = ((saved or {}).get("tune") or {}).get("rerank") if isinstance(saved, dict) else None
        if isinstance(chosen, str) and (saved.get("config") or {}).get("rerank") == "auto":
            return Reranker.from_name(chosen)
    return Reranker(cfg.rerank, cfg.rerank_k, cfg.rerank_alpha)


def semantic_metrics(cfg: RunConfig, model: str, db: EmbeddingIndex, *, kept: np.ndarray, held: np.ndarray,
                     val: EmbeddingIndex | None, metrics: dict[str, dict]) -> dict:
    """`fine_grained.semantic_metrics` of `model`'s embeddings in this run: the dataset, and for
    the near-duplicate recall the network and the images, loaded here."""
    embed_fn, caches = None, None
    if cfg.near_dup_queries and (len(held) or val is not None):
        setup_torch(cfg)
        net = load_model(cfg, model)

        def embed(images: np.ndarray) -> np.ndarray:
            return embed_images(net, images, cfg.embed_batch_size, cfg.device, baseline=model == "baseline",
                                progress=False, bf16_cpu=cfg.bf16_cpu, flip_tta=cfg.flip_tta)

        embed_fn = embed
        caches = load_caches(cfg, progress=False, splits=("train", "val") if val is not None else ("train",))
    return fine_grained.semantic_metrics(cfg, load_dataset(cfg), db, kept=kept, held=held, val=val, metrics=metrics,
                                         embed_fn=embed_fn, caches=caches)


# ---- queries -------------------------------------------------------------------------
def select_query_examples(cfg: RunConfig, n: int | None = None) -> list[int]:
    """`n` val indices from `n` different classes, chosen with cfg.query_seed."""
    n = cfg.num_query_examples if n is None else n
    labels = load_caches(cfg, progress=False, splits=("val",))["val"].labels
    return pick_query_examples(labels, n, cfg.query_seed)


def query(cfg: RunConfig, val_indices: list[int], k: int | None = None, model: str = "trained") -> list[QueryResult]:
    """Top-k and bottom-k training images for val images, by Euclidean distance."""
    k = cfg.top_k_show if k is None else k
    db, val = load_index(cfg, model, "train"), load_index(cfg, model, "val")
    return query_split(db, val, list(val_indices), k, load_dataset(cfg).class_names)


def query_image_file(cfg: RunConfig, image_path: str | Path, k: int | None = None, model: str = "trained") -> QueryResult:
    """Top-k and bottom-k training images for any image file (resized to 64 px like the data)."""
    k = cfg.top_k_show if k is None else k
    img = load_image_rgb(image_path)
    net = load_model(cfg, model)
    z = embed_images(net, img[None], device=cfg.device, baseline=model == "baseline", progress=False,
                     bf16_cpu=cfg.bf16_cpu, flip_tta=cfg.flip_tta)[0]
    return query_vector(load_index(cfg, model, "train"), z, k, str(image_path))


def load_loss_log(cfg: RunConfig):
    import pandas as pd

    path = run_path(cfg, "loss_log.csv")
    if not path.is_file():
        raise RankingError(f"loss log not found: {path} (run the 'train' step)")
    return pd.read_csv(path)
