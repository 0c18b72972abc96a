"""Checks across the splits of a prepared dataset: what `workflow.prepare` says about the data.

* No file may be both a database (train) and a query (val) image: the same file (same inode,
  a hard link or a copy through a link) in both splits is refused.
* Images whose decoded pixels are identical in both splits are counted and named (a hash of each
  64x64x3 row): the official Tiny ImageNet has a few such pairs, so they are reported, not refused.
* A class without images in a split is named: its val queries can never be answered right.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranking_lib.core.errors import DatasetError
from ranking_lib.data.image_cache import ImageCache

__all__ = ["SplitReport", "check_splits", "image_hashes"]


def image_hashes(images: np.ndarray, chunk: int = 4096) -> list[bytes]:
    """A 16-byte BLAKE2b digest of each decoded image (row of `images`), read in chunks."""
    out: list[bytes] = []
    for s in range(0, len(images), chunk):
        block = np.ascontiguousarray(images[s:s + chunk])
        out.extend(hashlib.blake2b(row.data, digest_size=16).digest() for row in block)
    return out


@dataclass
class SplitReport:
    """What `check_splits` found (the lines `prepare` prints)."""

    identical: list[tuple[str, str]] = field(default_factory=list)
    """(val path, train path) pairs with identical decoded pixels."""
    empty: list[tuple[str, str, int]] = field(default_factory=list)
    """(wnid, split without images, images of that class in the other split)."""

    def lines(self) -> list[str]:
        out = []
        if self.identical:
            v, t = self.identical[0]
            out.append(f"warning: {len(self.identical)} val image(s) have the same decoded pixels as a training "
                       f"image (first: {v} = {t}); each finds itself in the database at distance 0")
        else:
            out.append("train/val: no file in both splits, no val image with the pixels of a training image")
        for wnid, split, other in self.empty:
            if split == "train":
                out.append(f"warning: class {wnid} has no train images: its {other} val queries have no "
                           "same-class image in the database and can never be answered right")
            else:
                out.append(f"warning: class {wnid} has no {split} images ({other} in train)")
        return out


def _inodes(root: Path, paths) -> dict[tuple[int, int], str]:
    out = {}
    for rel in paths:
        st = os.stat(root / rel)
        out[(st.st_dev, st.st_ino)] = rel
    return out


def check_splits(root: str | Path, train: ImageCache, val: ImageCache) -> SplitReport:
    """Refuse a file shared by train and val (DatasetError); report identical pixels and empty
    classes (`SplitReport`)."""
    root = Path(root)
    t_files, v_files = _inodes(root, train.paths), _inodes(root, val.paths)
    shared = sorted(set(t_files) & set(v_files))
    if shared:
        a, b = v_files[shared[0]], t_files[shared[0]]
        raise DatasetError(f"{len(shared)} file(s) are both a val (query) and a train (database) image, "
                           f"first: {root / a} is {root / b}; a split's images must be its own")
    report = SplitReport()
    t_hash = dict(zip(image_hashes(train.images), train.paths))
    for h, p in zip(image_hashes(val.images), val.paths):
        if h in t_hash:
            report.identical.append((p, t_hash[h]))
    counts = {s: np.bincount(c.labels, minlength=len(c.wnids)) for s, c in (("train", train), ("val", val))}
    for label, wnid in enumerate(train.wnids):
        for split, other in (("train", "val"), ("val", "train")):
            if counts[split][label] == 0:
                report.empty.append((wnid, split, int(counts[other][label])))
    return report
