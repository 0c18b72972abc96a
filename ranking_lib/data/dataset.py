"""`TinyImageNet`: the index of a dataset in the original ``tiny-imagenet-200`` layout
(``wnids.txt``, ``words.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images`` +
``val/val_annotations.txt``). No pixels are read here (see `decode` and `image_cache`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ranking_lib.core.errors import DatasetError

__all__ = ["TinyImageNet", "SPLITS", "IMAGE_SUFFIXES"]

SPLITS = ("train", "val")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _natural_key(name: str):
    """Sort key that orders ``x_2`` before ``x_10``."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name)]


def plain_name_problem(name: str) -> str | None:
    """Why `name` is not a plain file or folder name (one that stays inside its folder), or None."""
    if not name or name in (".", ".."):
        return "is empty, '.' or '..'"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if "\0" in name or any(ord(c) < 32 for c in name):
        return "contains a control character"
    return None


def _inside(path: Path, folder_real: str) -> bool:
    """True when `path`, symbolic links followed, lies inside the resolved folder `folder_real`."""
    return os.path.realpath(path).startswith(folder_real + os.sep)


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
            bad = plain_name_problem(wnid)
            if bad:
                raise DatasetError(f"{wnids_file} line {n}: class {wnid!r} {bad} (a class is a folder name "
                                   "under train/)")
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
            entries = [
                e
                for e in os.scandir(img_dir)
                if not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                and e.is_file()
            ]
            real_dir = None
            for e in entries:  # a link may not lead out of its class folder (into val/, say)
                if e.is_symlink():
                    real_dir = real_dir or os.path.realpath(img_dir)
                    if not _inside(Path(e.path), real_dir):
                        raise DatasetError(f"train image {e.path} is a link to {os.path.realpath(e.path)}, "
                                           f"outside {img_dir}: a split's images must lie in its own folder")
            names = [e.name for e in entries]
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
            bad = plain_name_problem(fname) or (None if not os.path.isabs(fname) else "is an absolute path")
            if bad:
                raise DatasetError(f"{ann_file} line {n}: file name {fname[:80]!r} {bad}; val annotations must "
                                   "name files inside val/images/ (no folders, '..' or absolute paths)")
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
            if (img_dir / fname).is_symlink():
                real_dir = os.path.realpath(img_dir)
                if not _inside(img_dir / fname, real_dir):
                    raise DatasetError(f"{ann_file} line {n}: {img_dir / fname} is a link to "
                                       f"{os.path.realpath(img_dir / fname)}, outside val/images/: a split's "
                                       "images must lie in its own folder")
            entries.append((label_of[wnid], fname))
        entries.sort(key=lambda e: (e[0], _natural_key(e[1])))
        return [(f"val/images/{fname}", label) for label, fname in entries], excluded


