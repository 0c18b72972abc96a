"""The pipeline's steps, each a function of a `RunConfig`: used by the CLI and the notebooks.

    prepare -> sample -> train -> embed -> evaluate -> query

Every step reads what earlier steps wrote into ``cfg.run_dir``:

    config.json, triplets_train.npy, triplets_val.npy, checkpoints/last.pt, loss_log.csv,
    train_summary.json,
    embeddings_<model>_<split>.npz, metrics_<model>.json, figures/
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ranking_lib.training import distributed
from ranking_lib.training.checkpoint import load_model_state, read_checkpoint
from ranking_lib.core.config import RunConfig
from ranking_lib.data import (
    SPLITS,
    ImageCache,
    TinyImageNet,
    load_image_rgb,
    load_or_build_cache,
)
from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import ensure_dir, write_json
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.models.inference import ModelInputs, embed_images
from ranking_lib.retrieval.metrics import retrieval_metrics, score_at_top_k, triplet_accuracy_from_index
from ranking_lib.models.model import EmbeddingNet, build_model, init_head_from_classifier
from ranking_lib.core.runlock import RunDirLock
from ranking_lib.triplets.online import OnlineTriplets
from ranking_lib.triplets.samplers import RelevanceTripletSampler, TripletSampler, load_triplets, save_triplets
from ranking_lib.models.stage_cache import load_or_build_stage_features
from ranking_lib.core.devices import resolve_device, uses_cpu_bf16
from ranking_lib.data.holdout import holdout_split
from ranking_lib.training.trainer import Trainer, TrainResult

MODELS = ("trained", "baseline")
METRIC_SPLITS = ("train", "tune", "val")  # in metrics_<model>.json; tune only with holdout_per_class


# ---- setup ---------------------------------------------------------------------------
def setup_torch(cfg: RunConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)


def run_path(cfg: RunConfig, *parts: str) -> Path:
    p = Path(cfg.run_dir).joinpath(*parts)
    ensure_dir(p.parent, "run directory")
    return p


def writes_run_dir(step):
    """Run `step(cfg, ...)` holding the run directory's lock (one writer per run dir)."""
    @functools.wraps(step)
    def locked(cfg: RunConfig, *args, **kwargs):
        if not distributed.context().is_main:  # under torchrun rank 0 holds the lock and writes
            return step(cfg, *args, **kwargs)
        with RunDirLock(cfg.run_dir, step.__name__):
            return step(cfg, *args, **kwargs)
    return locked


def load_dataset(cfg: RunConfig) -> TinyImageNet:
    return TinyImageNet(cfg.data_dir, max_classes=cfg.max_classes)


def load_caches(cfg: RunConfig, progress: bool = True, splits: tuple[str, ...] = SPLITS) -> dict[str, ImageCache]:
    ds = load_dataset(cfg)
    return {s: load_or_build_cache(ds, s, cfg.cache_dir, skip_corrupt=cfg.skip_corrupt, progress=progress)
            for s in splits}


# ---- steps ---------------------------------------------------------------------------
@writes_run_dir
def prepare(cfg: RunConfig, progress: bool = True) -> dict[str, ImageCache]:
    """Build (or verify) the decoded uint8 caches of train and val; save the run config."""
    caches = load_caches(cfg, progress)
    if not Path(cfg.run_dir, "checkpoints", "last.pt").is_file():  # else config.json is the trained run's
        cfg.save(run_path(cfg, "config.json"))
    return caches


@writes_run_dir
def sample(cfg: RunConfig) -> dict[str, np.ndarray]:
    """Sample training triplets (train split) and evaluation triplets (val split only).

    With ``triplet_source=online`` training draws its triplets as it runs; the train file then
    holds `val_triplets` course triplets of the training images, to score the train split."""
    caches = load_caches(cfg, progress=False)
    train = caches["train"]
    kept, held = holdout_split(train.labels, cfg.holdout_per_class, cfg.seed, train.wnids)
    # (name, split's cache, images it may use, how many, seed); indices map back into the split
    plan = [("train", train, kept, cfg.num_triplets, cfg.seed),
            ("val", caches["val"], np.arange(len(caches["val"])), cfg.val_triplets, cfg.seed + 1)]
    if len(held):
        plan.append(("tune", train, held, cfg.val_triplets, cfg.seed + 2))
    else:
        Path(cfg.run_dir, "triplets_tune.npy").unlink(missing_ok=True)
    out = {}
    for name, cache, ids, n, seed in plan:
        where = "train" if name == "tune" else name
        meta = {"split": where, "seed": seed, "num_images": len(cache), "holdout_per_class": cfg.holdout_per_class}
        if name == "train" and cfg.triplet_source == "online":
            # training draws its own triplets as it runs: this file only scores the train split
            n, meta["purpose"] = cfg.val_triplets, "evaluation only: training draws its triplets online"
        if name == "train" and cfg.uses_relevance and cfg.triplet_source == "presampled":  # evaluation triplets stay the course's
            sampler = RelevanceTripletSampler(cache.labels[ids], golden_features(cfg, cache)[ids],
                                              cfg.out_of_class_fraction, cfg.relevance_tp, cfg.relevance_tr,
                                              seed=seed, class_ids=cache.wnids, split=where)
            t = ids[sampler.sample(n)]
            meta.update(sampler="relevance", out_of_class_fraction=cfg.out_of_class_fraction,
                        relevance_tp=cfg.relevance_tp, relevance_tr=cfg.relevance_tr,
                        in_class_negatives=int((cache.labels[t[:, 0]] == cache.labels[t[:, 2]]).sum()),
                        in_class_fallbacks=sampler.in_class_fallbacks)
        else:
            t = ids[TripletSampler(cache.labels[ids], seed=seed, class_ids=cache.wnids, split=where).sample(n)]
        save_triplets(run_path(cfg, f"triplets_{name}.npy"), t, meta)
        out[name] = t
    return out


def golden_features(cfg: RunConfig, cache: ImageCache, progress: bool = True) -> np.ndarray:
    """The frozen pretrained backbone's L2-normalised pooled features of every image of `cache`
    (the `baseline` model at the run's input size): the golden feature behind the relevance
    r_ij of relevance-weighted sampling. Computed once, float16, beside the image cache."""
    from ranking_lib.core.fileio import atomic_path
    from ranking_lib.models.stage_cache import stage_features_file

    net = build_model(cfg.replace(architecture="single")).eval()
    if cache.cache_file is None:
        inputs = ModelInputs(cache.images)
        path = None
    else:
        stem = stage_features_file(cache, net, cfg.pretrained, uses_cpu_bf16(resolve_device(cfg.device), cfg.bf16_cpu)).stem.replace("stage_", "golden_", 1)
        path = Path(cache.cache_file).parent / f"{stem}.npy"
        if path.is_file():
            try:
                z = np.load(path, allow_pickle=False)
                if z.shape == (len(cache), net.backbone.feature_dim) and np.isfinite(z).all():
                    return z
            except (OSError, ValueError):
                pass
        inputs = model_inputs(cfg.replace(architecture="single"), net, cache, progress)
    t0 = time.perf_counter()
    z = embed_images(net, inputs, cfg.embed_batch_size, cfg.device, baseline=True, progress=progress,
                     desc=f"golden features ({cache.split})", bf16_cpu=cfg.bf16_cpu).astype(np.float16)
    if path is not None:
        with atomic_path(path, need=z.nbytes + 128) as tmp:
            np.save(tmp, z)
    if progress:
        print(f"golden features of {len(cache)} {cache.split} images in {time.perf_counter() - t0:.1f} s")
    return z


def training_triplets(cfg: RunConfig, cache: ImageCache, progress: bool = True):
    """What training draws its triplets from: the run's pre-sampled file, or online buffers."""
    if cfg.triplet_source == "presampled":
        return load_run_triplets(cfg, "train", len(cache))
    kept, _ = holdout_split(cache.labels, cfg.holdout_per_class, cfg.seed, cache.wnids)
    feats = golden_features(cfg, cache, progress)[kept] if cfg.uses_relevance else None
    return OnlineTriplets(cache.labels[kept], cfg.batch_size, cfg.buffer_size, cfg.buffer_refresh_steps,
                          features=feats, out_of_class_fraction=cfg.out_of_class_fraction,
                          tp=cfg.relevance_tp, tr=cfg.relevance_tr, seed=cfg.seed, class_ids=cache.wnids,
                          index=kept)


def load_run_triplets(cfg: RunConfig, split: str, num_images: int) -> np.ndarray:
    return load_triplets(run_path(cfg, f"triplets_{split}.npy"), num_images)


def initial_model(cfg: RunConfig, wnids: list[str], progress: bool = False) -> EmbeddingNet:
    """The network a training run starts from: `build_model`, then the head init of `cfg`."""
    model = build_model(cfg)
    if cfg.head_init == "classifier":
        copied = init_head_from_classifier(model, wnids)
        if progress:
            print(f"head initialised from the ImageNet classifier rows of {copied} dataset classes")
    return model


# What a training run produces: a fresh start (resume=False) removes them all first.
TRAINED_OUTPUTS = ("checkpoints/last.pt", "loss_log.csv", "train_summary.json", "metrics_trained.json",
                   "embeddings_trained_train.npz", "embeddings_trained_val.npz")


@writes_run_dir
def train(cfg: RunConfig, progress: bool = True, resume: bool = True, stop_at: int | None = None) -> TrainResult:
    """Train the ranking network on the pre-sampled training triplets.

    Resumes from ``checkpoints/last.pt`` when it exists (see `Trainer.resume` for what is
    refused); ``resume=False`` first removes everything an earlier training run wrote."""
    setup_torch(cfg)
    ctx = distributed.context()
    if not resume and ctx.is_main:
        for rel in TRAINED_OUTPUTS:
            Path(cfg.run_dir, rel).unlink(missing_ok=True)
    distributed.barrier(ctx)  # no rank resumes from what rank 0 is removing
    caches = load_caches(cfg, progress=False)
    triplets = distributed.main_first(ctx, lambda: training_triplets(cfg, caches["train"], progress and ctx.is_main))
    model = initial_model(cfg, caches["train"].wnids, progress and ctx.is_main)
    inputs = distributed.main_first(ctx, lambda: model_inputs(cfg, model, caches["train"], progress and ctx.is_main))
    trainer = Trainer(cfg, model, inputs, caches["train"].labels, triplets, cfg.run_dir)
    if resume:
        trainer.resume()  # refuses changed settings before config.json is rewritten
    if ctx.is_main:
        cfg.save(run_path(cfg, "config.json"))
    result = trainer.fit(resume=resume, stop_at=stop_at, progress=progress)
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
    summary["world_size"] = ctx.world_size
    if ctx.is_main and (result.steps_run or not run_path(cfg, "train_summary.json").is_file()):
        write_json(run_path(cfg, "train_summary.json"), summary)  # else it describes the run
    return result


def load_model(cfg: RunConfig, model: str = "trained") -> EmbeddingNet:
    """The trained network from the run's checkpoint, or the untrained `baseline`."""
    if model not in MODELS:
        raise RankingError(f"model must be one of {MODELS} (got {model!r})")
    net = build_model(cfg)
    if model == "trained":
        path = run_path(cfg, "checkpoints", "last.pt")
        load_model_state(net, read_checkpoint(path), path)
    return net.eval()


def stage_inputs(cfg: RunConfig, net: EmbeddingNet, cache: ImageCache, progress: bool = True) -> ModelInputs:
    """Cached outputs of the frozen stages of the *pretrained* network for one split."""
    return ModelInputs(load_or_build_stage_features(net, cache, cfg.pretrained, cfg.embed_batch_size,
                                                    resolve_device(cfg.device), progress, cfg.bf16_cpu),
                       "stage_features")


def model_inputs(cfg: RunConfig, net: EmbeddingNet, cache: ImageCache, progress: bool = True) -> ModelInputs:
    """What `net` reads for one split under `cfg`: its frozen stages' cached outputs, or the images."""
    if not cfg.cache_stage_features:
        return ModelInputs(cache.images)
    staged = stage_inputs(cfg, net, cache, progress)
    return ModelInputs(staged.array, staged.kind, cache.images) if net.multiscale else staged


def embeddings_path(cfg: RunConfig, model: str, split: str) -> Path:
    return run_path(cfg, f"embeddings_{model}_{split}.npz")


@writes_run_dir
def embed(cfg: RunConfig, model: str = "trained", progress: bool = True) -> dict[str, Path]:
    """Embed the train split (the database) and the val split (the queries; not while recipes are
    chosen on the tuning split, ``evaluate_val`` off)."""
    setup_torch(cfg)
    caches = load_caches(cfg, progress=False)
    net = load_model(cfg, model)
    splits = SPLITS if cfg.evaluate_val else ("train",)
    ctx = distributed.context()  # under torchrun each rank embeds a slice, rank 0 writes
    device = distributed.rank_device(cfg.device, ctx)
    out = {}
    for split in splits:
        c = caches[split]
        t0 = time.perf_counter()
        inputs = distributed.main_first(ctx, lambda: model_inputs(cfg, net, c, progress and ctx.is_main))
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
        EmbeddingIndex(z, c.labels, list(c.paths)).save(embeddings_path(cfg, model, split))
        out[split] = embeddings_path(cfg, model, split)
        if progress:
            print(f"embedded {len(c)} {split} images in {time.perf_counter() - t0:.1f} s")
    distributed.barrier(ctx)
    return out


def index_options(cfg: RunConfig) -> dict:
    """`EmbeddingIndex` keyword arguments from the config's search fields."""
    return dict(backend=cfg.search_backend, nlist=cfg.index_nlist, nprobe=cfg.index_nprobe, pq_m=cfg.index_pq_m,
                refine=cfg.index_refine, hnsw_m=cfg.index_hnsw_m, ef_search=cfg.index_ef_search)


def load_index(cfg: RunConfig, model: str, split: str) -> EmbeddingIndex:
    path = embeddings_path(cfg, model, split)
    if not path.is_file():
        raise RankingError(f"embeddings not found: {path} (run the 'embed' step for model {model!r})")
    return EmbeddingIndex.load(path, **index_options(cfg))


SCORE_K = 30  # the paper's score at top-30


def _score_at_top(embeddings: np.ndarray, triplets: np.ndarray) -> dict:
    """Score at top-30; on a split of 30 images or fewer every other image is in the top-K, so K
    is then the split's size minus one (recorded as ``score_at_top_30_k``)."""
    s = score_at_top_k(embeddings, triplets, min(SCORE_K, len(embeddings) - 1))
    return {f"score_at_top_{SCORE_K}": s["score"], f"score_at_top_{SCORE_K}_counted": s["counted"],
            f"score_at_top_{SCORE_K}_k": s["k"]}


@writes_run_dir
def evaluate(cfg: RunConfig, model: str = "trained") -> dict[str, dict]:
    """All metrics on train, tune (with ``holdout_per_class``) and val (with ``evaluate_val``);
    written to ``metrics_<model>.json``.

    * triplet_acc: % of the split's triplets with D(q,p) < D(q,n) (train: the training
      triplets; val: triplets drawn from val images only).
    * precision@k, any_hit@k, knn1, map@r: retrieval of the nearest *training* images; train
      queries are a seeded subset of `train_eval_queries` training images (never held-out ones),
      each excluded from its own result; tune queries are the held-out training images against
      the other training images; val queries are all val images.
    * score_at_top_30 (tune, val): the paper's score at top-K, see `metrics.score_at_top_k`;
      ``score_at_top_30_counted`` is how many triplets it counts.
    """
    db = load_index(cfg, model, "train")
    kept, held = holdout_split(db.labels, cfg.holdout_per_class, cfg.seed)
    metrics: dict[str, dict] = {}
    # train: seeded training images (never held-out ones) against all training images but themselves
    trip = load_run_triplets(cfg, "train", len(db))
    m = {"triplet_acc": triplet_accuracy_from_index(db.embeddings, trip), "num_triplets": int(len(trip))}
    ids = np.sort(np.random.default_rng(cfg.seed).choice(kept, size=min(cfg.train_eval_queries, len(kept)),
                                                         replace=False))
    m.update(retrieval_metrics(db, db.embeddings[ids], db.labels[ids], ks=cfg.ks, exclude_self=True, query_ids=ids))
    metrics["train"] = m
    if len(held):  # tune: held-out training images against the training images that were trained on
        trip = load_run_triplets(cfg, "tune", len(db))
        kept_db = EmbeddingIndex(db.embeddings[kept], db.labels[kept], **index_options(cfg))
        m = {"triplet_acc": triplet_accuracy_from_index(db.embeddings, trip), "num_triplets": int(len(trip))}
        m.update(retrieval_metrics(kept_db, db.embeddings[held], db.labels[held], ks=cfg.ks))
        m.update(_score_at_top(db.embeddings, trip))
        metrics["tune"] = m
    if cfg.evaluate_val:
        val = load_index(cfg, model, "val")
        trip = load_run_triplets(cfg, "val", len(val))
        m = {"triplet_acc": triplet_accuracy_from_index(val.embeddings, trip), "num_triplets": int(len(trip))}
        m.update(retrieval_metrics(db, val.embeddings, val.labels, ks=cfg.ks))
        m.update(_score_at_top(val.embeddings, trip))
        metrics["val"] = m
    write_json(run_path(cfg, f"metrics_{model}.json"), {"model": model, "config": cfg.to_dict(), **metrics})
    return metrics


def load_metrics(cfg: RunConfig, model: str = "trained") -> dict:
    path = run_path(cfg, f"metrics_{model}.json")
    if not path.is_file():
        raise RankingError(f"metrics not found: {path} (run the 'evaluate' step)")
    return json.loads(path.read_text())


# ---- queries -------------------------------------------------------------------------
@dataclass
class QueryResult:
    query_index: int | None
    query_path: str
    query_label: int | None
    query_class: str | None
    top_indices: np.ndarray
    top_distances: np.ndarray
    top_labels: np.ndarray
    bottom_indices: np.ndarray
    bottom_distances: np.ndarray
    bottom_labels: np.ndarray

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def select_query_examples(cfg: RunConfig, n: int | None = None) -> list[int]:
    """`n` val indices from `n` different classes, chosen with cfg.query_seed."""
    n = cfg.num_query_examples if n is None else n
    labels = load_caches(cfg, progress=False, splits=("val",))["val"].labels
    classes = np.unique(labels)
    if n < 1 or n > len(classes):
        raise RankingError(f"asked for {n} query examples from different classes; val has {len(classes)} classes (use 1..{len(classes)})")
    rng = np.random.default_rng(cfg.query_seed)
    chosen = rng.choice(classes, size=n, replace=False)
    return [int(rng.choice(np.flatnonzero(labels == c))) for c in chosen]


def query(cfg: RunConfig, val_indices: list[int], k: int | None = None, model: str = "trained") -> list[QueryResult]:
    """Top-k and bottom-k training images for val images, by Euclidean distance."""
    k = cfg.top_k_show if k is None else k
    db, val = load_index(cfg, model, "train"), load_index(cfg, model, "val")
    class_names = load_dataset(cfg).class_names
    bad = [i for i in val_indices if not 0 <= i < len(val)]
    if bad:
        raise RankingError(f"val index {bad[0]} out of range (val has {len(val)} images)")
    q = val.embeddings[np.asarray(val_indices)]
    ti, td = db.topk(q, k)
    bi, bd = db.bottomk(q, k)
    return [QueryResult(int(v), val.paths[v], int(val.labels[v]), class_names[int(val.labels[v])],
                        ti[j], td[j], db.labels[ti[j]], bi[j], bd[j], db.labels[bi[j]])
            for j, v in enumerate(val_indices)]


def query_image_file(cfg: RunConfig, image_path: str | Path, k: int | None = None, model: str = "trained") -> QueryResult:
    """Top-k and bottom-k training images for any image file (resized to 64 px like the data)."""
    k = cfg.top_k_show if k is None else k
    img = load_image_rgb(image_path)
    net = load_model(cfg, model)
    z = embed_images(net, img[None], device=cfg.device, baseline=model == "baseline", progress=False,
                     bf16_cpu=cfg.bf16_cpu, flip_tta=cfg.flip_tta)[0]
    db = load_index(cfg, model, "train")
    ti, td = db.topk(z, k)
    bi, bd = db.bottomk(z, k)
    return QueryResult(None, str(image_path), None, None, ti, td, db.labels[ti], bi, bd, db.labels[bi])


def load_loss_log(cfg: RunConfig):
    import pandas as pd

    path = run_path(cfg, "loss_log.csv")
    if not path.is_file():
        raise RankingError(f"loss log not found: {path} (run the 'train' step)")
    return pd.read_csv(path)
