"""The decoded uint8 image cache of a split.

:func:`load_or_build_cache` decodes a split once into ``<split>_<size>px_images.npy`` plus a JSON
meta file (paths, labels, fingerprint of the source files, CRC-32 of the pixels) and memory-maps
it on later calls: rebuilt when stale or damaged, never used partial.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

from ranking_lib.data import decode
from ranking_lib.data.dataset import TinyImageNet
from ranking_lib.core.errors import CorruptImageError, DatasetError
from ranking_lib.core.fileio import atomic_path, content_crc32, ensure_dir, reserve, sweep_stale_temps, write_text
from ranking_lib.core.progress import progress as progress_bar

__all__ = ["ImageCache", "default_cache_dir", "load_or_build_cache", "verify_content"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # 2: the meta file holds a CRC-32 of the pixels; 3: EXIF orientation applied
# Use worker processes to decode when a split has at least this many images.
_POOL_MIN_IMAGES = 4000


class ImageCache:
    """Decoded images of one split: ``images[i]`` is the uint8 RGB image of ``paths[i]``."""

    def __init__(self, images, labels, *, paths, wnids, class_names, split, skipped=(), cache_file=None,
                 crc32: int | None = None):
        self.images: np.ndarray = images
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int64)
        self.paths: list[str] = list(paths)
        self.wnids: list[str] = list(wnids)
        self.class_names: list[str] = list(class_names)
        self.split: str = split
        self.skipped: list[str] = list(skipped)
        self.cache_file: Path | None = Path(cache_file) if cache_file is not None else None
        self.crc32: int | None = crc32
        """CRC-32 of the pixels (as in the meta file): what files computed from the cache record."""

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.wnids)

    def __repr__(self) -> str:
        return (
            f"ImageCache(split={self.split!r}, n={len(self)}, classes={self.num_classes}, "
            f"image_shape={tuple(self.images.shape[1:])}, skipped={len(self.skipped)})"
        )


def _is_writable_dir(path: Path) -> bool:
    """True if ``path`` (or, when absent, its parent) is a directory we may write to.

    No side effects. Write permission bits are honoured even for root, so a dataset folder
    marked read-only (``chmod a-w``) is never written into.
    """
    target = path if path.exists() else path.parent
    try:
        if not target.is_dir():
            return False
        mode = target.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(target, os.W_OK | os.X_OK)


def default_cache_dir(root) -> Path:
    """``<root>/.ranking_cache`` when writable (or creatable), else a per-root dir in ~/.cache."""
    root = Path(root).expanduser().resolve()
    local = root / ".ranking_cache"
    if _is_writable_dir(local):
        return local
    digest = hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:12]
    return Path.home() / ".cache" / "ranking_lib" / digest


def _fingerprint(dataset: TinyImageNet, split: str, items, image_size: int) -> str:
    """Which dataset (its resolved root) and which content (class list, each image's path,
    label, size and mtime) a cache holds: two datasets sharing a cache folder never match."""
    h = hashlib.sha1()
    root = str(dataset.root)  # resolved by TinyImageNet
    h.update(json.dumps({"v": CACHE_VERSION, "split": split, "max_classes": dataset.max_classes,
                         "size": image_size, "wnids": dataset.wnids, "root": root}).encode("utf-8"))
    for rel, label in sorted(items):
        st = os.stat(os.path.join(root, rel))
        h.update(f"\n{rel}\t{label}\t{st.st_size}\t{st.st_mtime_ns}".encode("utf-8"))
    return h.hexdigest()


def _cache_files(cache_dir: Path, split: str, image_size: int) -> tuple[Path, Path]:
    stem = f"{split}_{image_size}px"
    return cache_dir / f"{stem}_images.npy", cache_dir / f"{stem}_meta.json"


_verified: dict[tuple, int] = {}  # (file, size, mtime, inode) -> crc already checked in this process


def verify_content(path: Path, arr: np.ndarray, expected: int | None) -> str | None:
    """None when `arr` (memory-mapped from `path`) has the CRC-32 `expected`; else the reason."""
    if expected is None:
        return f"{path.name} has no content checksum"
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if _verified.get(key) == expected:
        return None
    crc = content_crc32(arr)
    if crc != expected:
        return f"{path} is damaged or was modified (content checksum {crc:08x}, expected {expected:08x})"
    _verified[key] = crc
    return None


def _try_load(npy: Path, meta_file: Path, fingerprint: str, image_size: int, root: str | None = None):
    """Return (ImageCache-args dict, None) when the cache is valid, else (None, reason); `root`
    is the dataset's, to say when the cache is another dataset's."""
    if not meta_file.is_file():
        return None, "no cache yet" if not npy.exists() else "meta file missing (partial cache)"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"meta file unreadable ({exc.__class__.__name__})"
    if not isinstance(meta, dict) or meta.get("complete") is not True:
        return None, "meta says the cache is incomplete"
    if meta.get("fingerprint") != fingerprint:
        other = meta.get("root")
        if root is not None and isinstance(other, str) and other != root:
            return None, (f"it holds another dataset's images ({other}, {len(meta.get('paths') or [])} images; "
                          f"this dataset is {root}): datasets that share a cache folder replace each other's "
                          "caches, so give each its own --cache-dir")
        return None, "dataset changed since the cache was built (fingerprint differs)"
    if not npy.is_file():
        return None, "image array file missing"
    try:
        images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as exc:
        return None, f"image array unreadable ({' '.join(str(exc).split())[:100]})"
    paths, labels = meta.get("paths"), meta.get("labels")
    if not isinstance(paths, list) or not isinstance(labels, list) or len(paths) != len(labels):
        return None, "meta paths/labels malformed"
    expected = (len(paths), image_size, image_size, 3)
    if images.shape != expected or images.dtype != np.uint8:
        return None, f"image array shape {images.shape} != expected {expected}"
    damaged = verify_content(npy, images, meta.get("crc32"))
    if damaged:
        return None, damaged
    return dict(images=images, labels=labels, paths=paths, wnids=meta.get("wnids", []),
                class_names=meta.get("class_names", []), skipped=meta.get("skipped", []),
                crc32=meta.get("crc32")), None


def _unlink_quiet(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _decoded(jobs, workers: int):
    """Yield (array, error) for each job in order, using a process pool when worth it."""
    if workers <= 1 or len(jobs) < _POOL_MIN_IMAGES:
        for path, size in jobs:
            try:
                yield decode.load_image_rgb(path, size), None
            except CorruptImageError as exc:
                yield None, str(exc)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    with ctx.Pool(workers) as pool:
        yield from pool.imap(decode.decode_job, jobs, chunksize=256)


# Files computed from a split's cache live beside it under these prefixes (`models.stage_cache`:
# ``stage_<split>_*.npy`` with a ``.json`` sidecar naming its source, ``golden_<split>_*.npy``).
DERIVED_PREFIXES = ("stage_", "golden_")


def derived_files(cache_dir: Path, split: str, npy: Path) -> list[Path]:
    """The files in `cache_dir` computed from `split`'s cache `npy` (any earlier version of it).

    A stage file's sidecar names its source; a golden file (no sidecar) is counted when `npy` is
    the only image cache of its split in the folder."""
    only = [p.name for p in cache_dir.glob(f"{split}_*px_images.npy")] in ([], [npy.name])
    out = []
    for prefix in DERIVED_PREFIXES:
        for p in sorted(cache_dir.glob(f"{prefix}{split}_*.npy")):
            try:
                source = json.loads(p.with_suffix(".json").read_text()).get("source")
            except (OSError, ValueError, AttributeError):
                source = None
            if source == str(npy) or (source is None and only):
                out.append(p)
    return out


def _remove_derived(cache_dir: Path, split: str, npy: Path) -> None:
    """A rebuilt cache makes what was computed from the old one stale: remove it (logged)."""
    gone = derived_files(cache_dir, split, npy)
    for p in gone:
        _unlink_quiet(p.with_suffix(".json"))
        _unlink_quiet(p)
    if gone:
        logger.warning("removed %d file(s) computed from the old %s cache (first: %s)", len(gone), split,
                       gone[0].name)


def _build(dataset, split, items, npy, meta_file, fingerprint, skip_corrupt, image_size, progress, workers):
    # Drop the old meta first: whatever happens below, no stale meta can vouch for new data.
    _unlink_quiet(meta_file)
    _remove_derived(npy.parent, split, npy)
    root = str(dataset.root)
    jobs = [(os.path.join(root, rel), image_size) for rel, _ in items]
    kept_idx: list[int] = []
    skipped: list[str] = []
    with atomic_path(npy) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(items), image_size, image_size, 3))
        reserve(tmp, target=npy)  # a full disk: one line now, not a SIGBUS in the memory map
        n = 0
        bar = progress_bar(total=len(jobs), desc=f"decoding {split} images", unit="img", enabled=progress)
        try:
            for i, (img, err) in enumerate(_decoded(jobs, workers)):
                bar.update(1)
                if err is not None:
                    if not skip_corrupt:
                        raise CorruptImageError(err)
                    skipped.append(items[i][0])
                    continue
                arr[n] = img
                n += 1
                kept_idx.append(i)
        finally:
            bar.close()
        if n == 0:
            raise DatasetError(f"split '{split}' of {dataset.root}: every image is corrupt")
        arr.flush()
        del arr
        if n < len(items):  # shrink: rewrite the header-compatible prefix into a new file
            src = np.load(tmp, mmap_mode="r")
            with atomic_path(tmp) as tmp2:
                dst = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8,
                                                shape=(n, image_size, image_size, 3))
                reserve(tmp2, target=npy)
                dst[:] = src[:n]
                dst.flush()
                del dst, src
        crc = content_crc32(np.load(tmp, mmap_mode="r"))
    paths = [items[i][0] for i in kept_idx]
    labels = [int(items[i][1]) for i in kept_idx]
    meta = {
        "version": CACHE_VERSION,
        "split": split,
        "image_size": image_size,
        "max_classes": dataset.max_classes,
        "root": str(dataset.root),
        "paths": paths,
        "labels": labels,
        "wnids": dataset.wnids,
        "class_names": dataset.class_names,
        "skipped": skipped,
        "fingerprint": fingerprint,
        "crc32": crc,
        "complete": True,
    }
    write_text(meta_file, json.dumps(meta))
    if skipped:
        logger.warning("skipped %d corrupt images (first: %s)", len(skipped), skipped[0])
    return paths, labels, skipped, crc


def load_or_build_cache(
    dataset: TinyImageNet,
    split: str,
    cache_dir=None,
    *, skip_corrupt: bool = False,
    image_size: int = 64,
    progress: bool = True,
    workers: int | None = None,
) -> ImageCache:
    """Return the decoded images of ``split``, building ``<cache_dir>/<split>_<size>px_*`` if needed.

    A cache is reused only when its meta file says ``complete``, its fingerprint (class list,
    ``max_classes``, image size and path/size/mtime of every image) matches and the array shape
    agrees; otherwise it is rebuilt (the reason is logged). ``workers`` decode processes are
    used for large splits (default: CPU count capped at 8; 1 on machines with < 4 cores).
    """
    TinyImageNet._check_split(split)
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size <= 0:
        raise DatasetError(f"image_size must be a positive integer, got {image_size!r}")
    image_size = int(image_size)
    items = dataset.items(split)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(dataset.root)
    ensure_dir(cache_dir, "cache directory")
    sweep_stale_temps(cache_dir)
    npy, meta_file = _cache_files(cache_dir, split, image_size)
    fingerprint = _fingerprint(dataset, split, items, image_size)

    loaded, reason = _try_load(npy, meta_file, fingerprint, image_size, str(dataset.root))
    if loaded is not None:
        if loaded["skipped"] and not skip_corrupt:
            raise CorruptImageError(
                f"corrupt or truncated image: {dataset.root / loaded['skipped'][0]} "
                f"(cache {meta_file.name} skipped {len(loaded['skipped'])} corrupt images; "
                "pass skip_corrupt=True / --skip-corrupt to use it)"
            )
        if loaded["skipped"]:
            logger.warning("skipped %d corrupt images (first: %s)", len(loaded["skipped"]),
                           loaded["skipped"][0])
        return ImageCache(split=split, cache_file=npy, **loaded)

    log = logger.info if reason == "no cache yet" else logger.warning
    log("building %s image cache in %s: %s", split, cache_dir, reason)
    if workers is None:
        ncpu = os.cpu_count() or 1
        # With few cores the pickling overhead of a pool outweighs the parallel decode.
        workers = min(ncpu, 8) if ncpu >= 4 else 1
    paths, labels, skipped, crc = _build(dataset, split, items, npy, meta_file, fingerprint,
                                         skip_corrupt, image_size, progress, workers)
    images = np.load(npy, mmap_mode="r")
    return ImageCache(images, labels, paths=paths, wnids=dataset.wnids, class_names=dataset.class_names, split=split,
                      skipped=skipped, cache_file=npy, crc32=crc)
