"""Tiny ImageNet reader, robust image decoding and a decoded uint8 image cache.

* :class:`TinyImageNet` reads the standard ``tiny-imagenet-200`` layout (``wnids.txt``,
  ``words.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val/val_annotations.txt``).
* :func:`load_image_rgb` decodes one file to a ``(size, size, 3)`` uint8 RGB array.
* :func:`load_or_build_cache` decodes a split once into ``<split>_<size>px_images.npy`` plus a
  JSON meta file, and memory-maps it on later calls (rebuilt when stale, never used partial).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ranking_lib.errors import CorruptImageError, DatasetError
from ranking_lib.fileio import atomic_path, content_crc32, ensure_dir, reserve, sweep_stale_temps, write_text
from ranking_lib.progress import progress as progress_bar

__all__ = [
    "TinyImageNet",
    "load_image_rgb",
    "ImageCache",
    "default_cache_dir",
    "load_or_build_cache",
    "SPLITS",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CACHE_VERSION = 2  # 2: the meta file holds a CRC-32 of the pixels
# Use worker processes to decode when a split has at least this many images.
_POOL_MIN_IMAGES = 4000


def _natural_key(name: str):
    """Sort key that orders ``x_2`` before ``x_10``."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name)]


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from None
    return text.splitlines()


class TinyImageNet:
    """Index of a Tiny ImageNet directory (no pixels are read here).

    ``items(split)`` is computed lazily on first use and memoised; errors about a split's files
    (missing class folder, bad annotation, ...) are raised then.
    """

    def __init__(self, root, max_classes: int | None = None):
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise DatasetError(
                f"dataset directory not found: {root_path} "
                "(run data_scripts/download_tiny_imagenet.py or pass --data-dir)"
            )
        self.root: Path = root_path.resolve()
        wnids_file = self.root / "wnids.txt"
        if not wnids_file.is_file():
            raise DatasetError(f"wnids.txt not found in dataset directory {self.root}")
        all_wnids: list[str] = []
        seen: set[str] = set()
        for n, line in enumerate(_read_lines(wnids_file), 1):
            wnid = line.strip()
            if not wnid:
                continue
            if wnid in seen:
                raise DatasetError(f"{wnids_file} line {n} repeats class {wnid}")
            seen.add(wnid)
            all_wnids.append(wnid)
        if not all_wnids:
            raise DatasetError(f"{wnids_file} lists no classes")
        if max_classes is not None:
            if isinstance(max_classes, bool) or not isinstance(max_classes, (int, np.integer)):
                raise DatasetError(f"max_classes must be an integer, got {max_classes!r}")
            if max_classes <= 0:
                raise DatasetError(f"max_classes must be positive, got {max_classes}")
            if max_classes > len(all_wnids):
                raise DatasetError(
                    f"max_classes={max_classes} exceeds the {len(all_wnids)} classes in {wnids_file}"
                )
            max_classes = int(max_classes)
        self.max_classes: int | None = max_classes
        self.all_wnids: list[str] = all_wnids
        self.wnids: list[str] = all_wnids[:max_classes] if max_classes is not None else list(all_wnids)
        self.num_classes: int = len(self.wnids)
        self.class_names: list[str] = self._read_class_names()
        self._items: dict[str, list[tuple[str, int]]] = {}
        self._excluded: dict[str, int] = {}

    def _read_class_names(self) -> list[str]:
        words_file = self.root / "words.txt"
        names: dict[str, str] = {}
        if words_file.is_file():
            wanted = set(self.wnids)
            for line in _read_lines(words_file):
                wnid, sep, rest = line.partition("\t")
                wnid = wnid.strip()
                if not sep or wnid not in wanted or wnid in names:
                    continue
                first = rest.split(",")[0].strip()
                if first:
                    names[wnid] = first
        return [names.get(w, w) for w in self.wnids]

    def __repr__(self) -> str:
        return f"TinyImageNet(root={str(self.root)!r}, num_classes={self.num_classes})"

    # ------------------------------------------------------------------ items
    def items(self, split: str) -> list[tuple[str, int]]:
        """``[(relative POSIX path, label), ...]`` sorted by label, then natural file number."""
        self._check_split(split)
        if split not in self._items:
            items, excluded = self._scan_train() if split == "train" else self._scan_val()
            if not items:
                raise DatasetError(f"split '{split}' of {self.root} contains no images")
            self._items[split] = items
            self._excluded[split] = excluded
        return list(self._items[split])

    def excluded(self, split: str) -> int:
        """Images of ``split`` left out because their class lies beyond ``max_classes``."""
        self.items(split)
        return self._excluded[split]

    @staticmethod
    def _check_split(split) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r} (expected one of: {', '.join(SPLITS)})")

    def _scan_train(self) -> tuple[list[tuple[str, int]], int]:
        items: list[tuple[str, int]] = []
        for label, wnid in enumerate(self.wnids):
            img_dir = self.root / "train" / wnid / "images"
            if not img_dir.is_dir():
                raise DatasetError(f"train class folder missing for class {wnid}: {img_dir}")
            names = [
                e.name
                for e in os.scandir(img_dir)
                if not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                and e.is_file()
            ]
            names.sort(key=_natural_key)
            items.extend((f"train/{wnid}/images/{name}", label) for name in names)
        # Classes beyond max_classes are not read at all, so nothing is counted as excluded.
        return items, 0

    def _scan_val(self) -> tuple[list[tuple[str, int]], int]:
        ann_file = self.root / "val" / "val_annotations.txt"
        if not ann_file.is_file():
            raise DatasetError(f"val annotations not found: {ann_file}")
        label_of = {w: i for i, w in enumerate(self.wnids)}
        known = set(self.all_wnids)
        img_dir = self.root / "val" / "images"
        entries: list[tuple[int, str]] = []
        seen: set[str] = set()
        excluded = 0
        for n, line in enumerate(_read_lines(ann_file), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                fields = line.split()
            if len(fields) < 2:
                raise DatasetError(f"{ann_file} line {n} is malformed: {line.strip()[:80]!r}")
            fname, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in known:
                raise DatasetError(f"val annotation line {n} names unknown class {wnid} ({ann_file})")
            if fname in seen:
                raise DatasetError(f"val annotation line {n} repeats image {fname} ({ann_file})")
            seen.add(fname)
            if wnid not in label_of:
                excluded += 1
                continue
            if not (img_dir / fname).is_file():
                raise DatasetError(
                    f"val image missing: {img_dir / fname} (named on line {n} of {ann_file})"
                )
            entries.append((label_of[wnid], fname))
        entries.sort(key=lambda e: (e[0], _natural_key(e[1])))
        return [(f"val/images/{fname}", label) for label, fname in entries], excluded


# ---------------------------------------------------------------------- decoding
def load_image_rgb(path, size: int = 64) -> np.ndarray:
    """Decode ``path`` to a ``(size, size, 3)`` uint8 RGB array (bilinear resize if needed)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # forces a full decode so truncated files are detected
            if img.mode != "RGB":
                if img.mode in ("P", "PA") or "A" in img.getbands():
                    img = img.convert("RGBA")
                if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                    arr = np.asarray(img, dtype=np.float64)
                    hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                    img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8), "L")
                img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CorruptImageError(f"corrupt or truncated image: {path} ({reason})") from None
    if arr.shape != (size, size, 3):  # pragma: no cover - defensive
        raise CorruptImageError(f"corrupt or truncated image: {path} (decoded shape {arr.shape})")
    return arr


def _decode_job(job):
    """Worker: returns (array or None, error message or None). Must stay module level."""
    path, size = job
    try:
        return load_image_rgb(path, size), None
    except CorruptImageError as exc:
        return None, str(exc)


# ---------------------------------------------------------------------- cache
class ImageCache:
    """Decoded images of one split: ``images[i]`` is the uint8 RGB image of ``paths[i]``."""

    def __init__(self, images, labels, paths, wnids, class_names, split, skipped=(), cache_file=None):
        self.images: np.ndarray = images
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int64)
        self.paths: list[str] = list(paths)
        self.wnids: list[str] = list(wnids)
        self.class_names: list[str] = list(class_names)
        self.split: str = split
        self.skipped: list[str] = list(skipped)
        self.cache_file: Path | None = Path(cache_file) if cache_file is not None else None

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
    h = hashlib.sha1()
    h.update(json.dumps({"v": CACHE_VERSION, "split": split, "max_classes": dataset.max_classes,
                         "size": image_size, "wnids": dataset.wnids}).encode("utf-8"))
    root = str(dataset.root)
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


def _try_load(npy: Path, meta_file: Path, fingerprint: str, image_size: int):
    """Return (ImageCache-args dict, None) when the cache is valid, else (None, reason)."""
    if not meta_file.is_file():
        return None, "no cache yet" if not npy.exists() else "meta file missing (partial cache)"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"meta file unreadable ({exc.__class__.__name__})"
    if not isinstance(meta, dict) or meta.get("complete") is not True:
        return None, "meta says the cache is incomplete"
    if meta.get("fingerprint") != fingerprint:
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
                class_names=meta.get("class_names", []), skipped=meta.get("skipped", [])), None


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
                yield load_image_rgb(path, size), None
            except CorruptImageError as exc:
                yield None, str(exc)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_decode_job, jobs, chunksize=256)


def _build(dataset, split, items, npy, meta_file, fingerprint, skip_corrupt, image_size, progress, workers):
    # Drop the old meta first: whatever happens below, no stale meta can vouch for new data.
    _unlink_quiet(meta_file)
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
    return paths, labels, skipped


def load_or_build_cache(
    dataset: TinyImageNet,
    split: str,
    cache_dir=None,
    skip_corrupt: bool = False,
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

    loaded, reason = _try_load(npy, meta_file, fingerprint, image_size)
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
    paths, labels, skipped = _build(dataset, split, items, npy, meta_file, fingerprint,
                                    skip_corrupt, image_size, progress, workers)
    images = np.load(npy, mmap_mode="r")
    return ImageCache(images, labels, paths, dataset.wnids, dataset.class_names, split,
                      skipped=skipped, cache_file=npy)
