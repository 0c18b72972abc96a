"""The pipeline's steps, each a function of a `RunConfig`: used by the CLI and the notebooks.

    prepare -> sample -> train -> embed -> evaluate -> query

Every step reads what earlier steps wrote into ``cfg.run_dir``:

    config.json, triplets_train.npy, triplets_val.npy, checkpoints/last.pt, loss_log.csv,
    train_summary.json,
    embeddings_<model>_<split>.npz, metrics_<model>.json, figures/
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ranking_lib.choices import check_choices
from ranking_lib.core.config import RunConfig
from ranking_lib.core.devices import resolve_device
from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import ensure_dir, read_json, write_json
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
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.protocol import evaluate_embeddings
from ranking_lib.retrieval.rerank import Reranker
from ranking_lib.retrieval.query import (
    QueryResult,
    pick_query_examples,
    query_split,
    query_vector,
)
from ranking_lib.training import distributed
from ranking_lib.training.checkpoint import checkpoint_identity, load_model_state, read_checkpoint
from ranking_lib.training.trainer import Trainer, TrainResult
from ranking_lib.training.parts import build_parts
from ranking_lib.training.views import instance_training
from ranking_lib.triplets.golden import golden_features
from ranking_lib.triplets.online import TRIPLET_SOURCES
from ranking_lib.triplets.samplers import (
    RelevanceTripletSampler,
    TripletSampler,
    load_triplets,
    save_triplets,
)


# ---- setup ---------------------------------------------------------------------------
def setup_torch(cfg: RunConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)


def run_path(cfg: RunConfig, *parts: str) -> Path:
    p = Path(cfg.run_dir).joinpath(*parts)
    ensure_dir(p.parent, "run directory")
    return p


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
    import logging

    caches = PreparedCaches(load_caches(cfg, progress))
    caches.checks = _prepare_checks(cfg, caches)
    for line in caches.checks:
        if line.startswith("warning: "):
            logging.getLogger(__name__).warning(line[len("warning: "):])
    if not Path(cfg.run_dir, "checkpoints", "last.pt").is_file():  # else config.json is the trained run's
        cfg.save(run_path(cfg, "config.json"))
    return caches


SAMPLING_MEMORY_FACTOR = 3  # peak memory of sampling n triplets: ~3x the n x 3 int64 array it returns


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_sample_size(cfg: RunConfig) -> None:
    """Refuse, before any work, triplet counts whose files cannot fit the run directory's disk or
    whose sampling cannot fit in memory (the sizes they would need, named in one line)."""
    from ranking_lib.core.fileio import free_bytes

    n = cfg.val_triplets * (2 if cfg.holdout_per_class else 1)
    n += cfg.val_triplets if cfg.triplet_source == "online" else cfg.num_triplets
    need = n * 3 * 8  # int64 (query, positive, negative)
    biggest = max(cfg.num_triplets if cfg.triplet_source == "presampled" else 0, cfg.val_triplets) * 3 * 8
    where = Path(cfg.run_dir)
    while not where.exists() and where != where.parent:
        where = where.parent
    free, mem = free_bytes(where), _available_memory()
    mb = lambda b: f"{b / 2**20:,.1f} MB"  # noqa: E731
    what = f"num_triplets={cfg.num_triplets:,} and val_triplets={cfg.val_triplets:,}"
    if free is not None and need > free:
        raise RankingError(f"{what} need {mb(need)} of triplet files in {cfg.run_dir}, but only {mb(free)} are free "
                           "there: lower --num-triplets / --val-triplets or free some space")
    if mem is not None and biggest * SAMPLING_MEMORY_FACTOR > mem:
        raise RankingError(f"{what} need about {mb(biggest * SAMPLING_MEMORY_FACTOR)} of memory to sample "
                           f"(a {mb(biggest)} array), but only {mb(mem)} are available: lower --num-triplets")


TRIPLET_SEED_OFFSETS = {"train": 0, "val": 1, "tune": 2}  # each triplet file's seed: cfg.seed + offset


def triplet_settings(cfg: RunConfig, name: str) -> dict:
    """The settings the run's triplet file `name` (train, val, tune) is sampled with, as its
    sidecar records them: `sample` writes them, `train` and `evaluate` refuse a file with others."""
    own = name == "train" and cfg.triplet_source == "presampled"  # else course triplets for scoring
    s = {"seed": cfg.seed + TRIPLET_SEED_OFFSETS[name], "holdout_per_class": cfg.holdout_per_class,
         "num_triplets": cfg.num_triplets if own else cfg.val_triplets, "sampler": "uniform"}
    if own and cfg.uses_relevance:
        s.update(sampler="relevance", out_of_class_fraction=cfg.out_of_class_fraction,
                 relevance_tp=cfg.relevance_tp, relevance_tr=cfg.relevance_tr)
    return s


def check_replacing_triplets(cfg: RunConfig, names: list[str]) -> None:
    """Refuse to replace a run's triplet files with triplets sampled with other settings (a copied
    run's ``config.json`` names the original's run_dir; a trained checkpoint depends on them)."""
    trained = Path(cfg.run_dir, "checkpoints", "last.pt").is_file()
    for name in names:
        try:
            side = read_json(Path(cfg.run_dir, f"triplets_{name}.json"), "triplet sidecar", missing_ok=True)
        except RankingError:  # an unreadable sidecar vouches for nothing: sampling again is the fix
            continue
        if not isinstance(side, dict):
            continue
        want = triplet_settings(cfg, name)
        diff = [k for k, v in want.items() if side.get(k, "uniform" if k == "sampler" else None) not in (None, v)]
        if diff:
            k = diff[0]
            also = " and a checkpoint trained on them" if trained and name == "train" else ""
            raise RankingError(f"run directory {cfg.run_dir} already holds triplets_{name}.npy sampled with "
                               f"{k}={side.get(k, 'uniform')!r}{also}; sampling with {k}={want[k]!r} would replace them: pass "
                               "--replace-triplets to do so, or --run-dir for a new run")


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
            sampler = RelevanceTripletSampler(cache.labels[ids], golden_features(cfg, cache)[ids],
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
    feats = golden_features(cfg, cache, progress)[kept] if cfg.uses_relevance else None
    return source(cache.labels[kept], cfg.batch_size, cfg.buffer_size, cfg.buffer_refresh_steps,
                  features=feats, out_of_class_fraction=cfg.out_of_class_fraction,
                  tp=cfg.relevance_tp, tr=cfg.relevance_tr, seed=cfg.seed, class_ids=cache.wnids,
                  index=kept)


def load_run_triplets(cfg: RunConfig, split: str, num_images: int) -> np.ndarray:
    """The run's triplet file of `split`, refused when sampled with other settings than `cfg`'s."""
    return load_triplets(run_path(cfg, f"triplets_{split}.npy"), num_images, expect=triplet_settings(cfg, split))


def initial_model(cfg: RunConfig, wnids: list[str], progress: bool = False) -> EmbeddingNet:
    """The network a training run starts from: `build_model`, then the head init of `cfg`."""
    model = build_model(cfg)
    init = HEAD_INITS.get(cfg.head_init)  # None: the head keeps its seeded random init
    if init is not None:
        copied = init(model, wnids)
        if progress:
            print(f"head initialised from the ImageNet classifier rows of {copied} dataset classes")
    return model


# What a training run produces: a fresh start (resume=False) removes them all first.
TRAINED_OUTPUTS = ("checkpoints/last.pt", "loss_log.csv", "train_summary.json", "metrics_trained.json",
                   "embeddings_trained_train.npz", "embeddings_trained_val.npz")


@writes_run_dir
def class_similarity(cfg: RunConfig, wnids) -> np.ndarray | None:
    """The classes' Wu–Palmer similarity a graded margin needs (``graded_margin``), else None;
    one line when WordNet or WordNet class ids are missing."""
    if cfg.graded_margin <= 0:
        return None
    from ranking_lib.retrieval.semantic import load_hierarchy

    hierarchy, note = load_hierarchy(wnids, cfg.wordnet_dir)
    if hierarchy is None:
        raise RankingError(f"graded_margin={cfg.graded_margin:g} grades by WordNet, which is not available here "
                           f"({note.rsplit(': WordNet-graded', 1)[0]}): set graded_margin 0")
    return hierarchy.similarity


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
    inputs = distributed.main_first(ctx, lambda: model_inputs(cfg, model, caches["train"], progress and ctx.is_main))
    triplets, views = distributed.main_first(  # instance triplets mixed in (instance_fraction), their views
        ctx, lambda: instance_training(cfg, triplets, model, caches["train"], progress and ctx.is_main))
    parts = build_parts(cfg, model, class_similarity(cfg, caches["train"].wnids))  # optimiser, loss, miner, terms
    trainer = Trainer(cfg, model, inputs, caches["train"].labels, triplets, run_dir=cfg.run_dir, replans=replans or (),
                      views=views, parts=parts)
    if resume:
        trainer.resume()  # refuses changed settings before config.json is rewritten
    evaluation_s = evaluation_seconds(cfg, len(caches["train"])) if cfg.budget_minutes is not None else 0.0
    # the budget's steps (a resumed run: its checkpoint's)
    trainer.apply_budget(steps_per_s, progress, spent_s=time.time() - started, evaluation_s=evaluation_s)
    cfg = trainer.cfg
    if ctx.is_main:
        cfg.save(run_path(cfg, "config.json"))
    result = trainer.fit(resume=resume, stop_at=stop_at, progress=progress)
    if ctx.is_main and trainer.cfg.steps != cfg.steps:  # the budget moved the schedule's end
        cfg = trainer.cfg
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
    net = build_model(cfg)
    if model == "trained":
        path = run_path(cfg, "checkpoints", "last.pt")
        load_model_state(net, read_checkpoint(path), path)
    return net.eval()


def embeddings_path(cfg: RunConfig, model: str, split: str) -> Path:
    return run_path(cfg, f"embeddings_{model}_{split}.npz")


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
        EmbeddingIndex(z, c.labels, list(c.paths)).save(embeddings_path(cfg, model, split),
                                                        meta=embeddings_meta(model, c, network))
        out[split] = embeddings_path(cfg, model, split)
        if progress:
            print(f"embedded {len(c)} {split} images in {time.perf_counter() - t0:.1f} s")
    distributed.barrier(ctx)
    return out


def index_options(cfg: RunConfig) -> dict:
    """`EmbeddingIndex` keyword arguments from the config's search fields."""
    return dict(backend=cfg.search_backend, nlist=cfg.index_nlist, nprobe=cfg.index_nprobe, pq_m=cfg.index_pq_m,
                refine=cfg.index_refine, hnsw_m=cfg.index_hnsw_m, ef_search=cfg.index_ef_search)


def embeddings_meta(model: str, cache: ImageCache, network: dict | None = None) -> dict:
    """What an embeddings file records about its source (checked by `check_embeddings`) and the
    network that computed it (`network_record`, checked by `check_network`)."""
    return {"model": model, "split": cache.split, "num_images": len(cache), "wnids": list(cache.wnids),
            "image_cache": None if cache.cache_file is None else str(cache.cache_file),
            "image_cache_crc32": cache.crc32, "network": network}


def network_record(cfg: RunConfig, model: str) -> dict:
    """Which network `model` is in this run: the trained one by its checkpoint's step and weights
    (`checkpoint_identity`), the frozen pretrained baseline by its backbone and input size."""
    if model == "baseline":
        return {"model": "baseline", "backbone": cfg.backbone, "pretrained": cfg.pretrained,
                "input_size": cfg.input_size}
    return {"model": model, **checkpoint_identity(Path(cfg.run_dir, "checkpoints", "last.pt"))}


def describe_network(record: dict) -> str:
    if record.get("model") == "baseline":
        return (f"the frozen {'pretrained ' if record.get('pretrained') else ''}baseline "
                f"({record.get('backbone')}, {record.get('input_size')} px)")
    return (f"the trained network of checkpoint step {record.get('checkpoint_step')} "
            f"(weights {str(record.get('weights_sha256'))[:12]})")


def check_network(cfg: RunConfig, model: str, index: EmbeddingIndex, path: Path) -> None:
    """Refuse (one line naming the file) embeddings that `model`'s network in this run did not
    compute: a file copied from another run, a baseline's file renamed, or one left from an
    earlier checkpoint (an 'embed' stopped between its files). Used wherever a run's embeddings
    are opened (`load_index`: evaluate, query, the explorer, verify-run)."""
    have = (getattr(index, "meta", None) or {}).get("network")
    redo = f"re-run 'embed --model {model}'"
    if not isinstance(have, dict):
        raise RankingError(f"embedding file {path} does not record which network computed it (written by an "
                           f"earlier version, or edited): {redo}")
    try:
        want = network_record(cfg, model)
    except RankingError as e:
        raise RankingError(f"cannot check which network computed embedding file {path}: {e}") from None
    if have != want:
        raise RankingError(f"embedding file {path} was computed by {describe_network(have)}, not by this run's "
                           f"{model} network, {describe_network(want)} (copied from another run, renamed, or "
                           f"left by an 'embed' that stopped early): {redo}")


def check_index_size(cfg: RunConfig, cache: ImageCache) -> None:
    """Refuse an `index_nlist` the database cannot train (FAISS wants 39 vectors per IVF list),
    before the index is built; with a tuning split the database is the kept training images."""
    from ranking_lib.retrieval.index import IVF_BACKENDS

    if cfg.index_nlist is None or cfg.search_backend not in IVF_BACKENDS:
        return
    n = len(holdout_split(cache.labels, cfg.holdout_per_class, cfg.seed)[0])
    most = max(1, n // 39)
    if cfg.index_nlist > most:
        raise RankingError(f"index_nlist={cfg.index_nlist} is more IVF lists than a database of {n} vectors can "
                           f"train (FAISS needs 39 per list: at most {most} here); lower --index-nlist or omit it "
                           "for the default (~4 sqrt(N))")


def check_embeddings(cfg: RunConfig, index: EmbeddingIndex, split: str, cache: ImageCache | None = None,
                     path: Path | None = None) -> None:
    """Refuse (one line naming the embeddings file) embeddings that do not describe the `split`
    of the dataset `cfg` runs on: other rows, paths or labels, another class list or image cache."""
    cache = cache if cache is not None else load_caches(cfg, progress=False, splits=(split,))[split]
    what = f"embedding file {path or 'in memory'}"
    redo = "it was cut, edited or computed from other data; re-run 'embed'"
    where = f"the {split} split of {cfg.data_dir}"
    if len(index) != len(cache):
        raise RankingError(f"{what} has {len(index)} rows but {where} has {len(cache)} images: {redo}")
    if index.paths is not None and list(index.paths) != cache.paths:
        i = next(i for i, (a, b) in enumerate(zip(index.paths, cache.paths)) if a != b)
        raise RankingError(f"{what} row {i} is image {index.paths[i]!r} but image {i} of {where} is "
                           f"{cache.paths[i]!r}: {redo}")
    bad = np.flatnonzero(index.labels != cache.labels)
    if len(bad):
        i = int(bad[0])
        raise RankingError(f"{what}: {len(bad)} label(s) differ from {where}'s (first: row {i} has label "
                           f"{int(index.labels[i])}, the dataset says {int(cache.labels[i])}): {redo}")
    meta = getattr(index, "meta", None) or {}
    if meta.get("wnids") is not None and list(meta["wnids"]) != list(cache.wnids):
        raise RankingError(f"{what} was computed with another class list ({len(meta['wnids'])} classes, "
                           f"{where} has {len(cache.wnids)}): re-run 'embed'")
    crc = meta.get("image_cache_crc32")
    if crc is not None and cache.crc32 is not None and crc != cache.crc32:
        raise RankingError(f"{what} was computed from other images (image cache checksum {crc:08x}, now "
                           f"{cache.crc32:08x}): the images changed since 'embed'; re-run 'embed'")


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
    semantic = semantic_metrics(cfg, model, db, kept=kept, held=held, val=val, metrics=metrics) if cfg.semantic_metrics else None
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
    (``near_dup_by_transform``)."""
    from ranking_lib.retrieval.protocol import semantic_evaluation
    from ranking_lib.retrieval.semantic import (
        ALL_TRANSFORMS,
        FAMILIES,
        load_hierarchy,
        near_duplicate_ids,
        near_duplicate_recall,
    )

    ds = load_dataset(cfg)
    info: dict = {"wordnet_dir": cfg.wordnet_dir, "note": None, "example": None}
    hierarchy, note = load_hierarchy(ds.wnids, cfg.wordnet_dir)
    if hierarchy is None:
        info["note"] = note
        print(f"note: {note}")
    else:
        graded = semantic_evaluation(db, hierarchy.similarity, kept=kept, held=held, ks=cfg.ks,
                                     num_triplets=cfg.val_triplets, seed=cfg.seed, val=val,
                                     index_options=index_options(cfg))
        for split, m in graded.items():
            metrics[split].update(m)
        if hierarchy.missing:
            info["missing_wnids"] = hierarchy.missing
        info["example"] = _wrong_neighbours_example(cfg, ds, hierarchy, db, kept, held, val)
    if cfg.near_dup_queries and (len(held) or val is not None):
        setup_torch(cfg)
        net = load_model(cfg, model)

        def embed_fn(images: np.ndarray) -> np.ndarray:
            return embed_images(net, images, cfg.embed_batch_size, cfg.device, baseline=model == "baseline",
                                progress=False, bf16_cpu=cfg.bf16_cpu, flip_tta=cfg.flip_tta)

        caches = load_caches(cfg, progress=False, splits=("train", "val") if val is not None else ("train",))
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
