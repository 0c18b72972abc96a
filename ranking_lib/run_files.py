"""The files of a run directory and the checks made when one is opened: where each file lives
(`run_path`, `embeddings_path`), what an embeddings file records about its source and network
(`embeddings_meta`, `network_record`, `triplet_settings`) and the one-line refusals of a file that
does not fit the run (`check_embeddings`, `check_network`, `check_index_size`), or of triplet files
that would not fit its disk or memory or would replace other settings' (`check_sample_size`,
`check_replacing_triplets`). `workflow` opens and writes the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ranking_lib.core.config import RunConfig
from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import ensure_dir, read_json
from ranking_lib.data import ImageCache
from ranking_lib.data.holdout import holdout_split
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.training.checkpoint import checkpoint_identity


def run_path(cfg: RunConfig, *parts: str) -> Path:
    p = Path(cfg.run_dir).joinpath(*parts)
    ensure_dir(p.parent, "run directory")
    return p


def embeddings_path(cfg: RunConfig, model: str, split: str) -> Path:
    return run_path(cfg, f"embeddings_{model}_{split}.npz")


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


def check_embeddings(cfg: RunConfig, index: EmbeddingIndex, split: str, cache: ImageCache,
                     path: Path | None = None) -> None:
    """Refuse (one line naming the embeddings file) embeddings that do not describe the `split`
    of the dataset `cfg` runs on (its image `cache`): other rows, paths or labels, another class
    list or image cache."""
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
