"""Near-duplicate groups in an index, the distance threshold that defines them, and the files
that show them (a CSV and an HTML contact sheet).

* `near_pairs`: every pair of indexed images within `threshold` of each other (Euclidean),
  found among each image's `k` nearest neighbours;
* `groups`: groups in which every two images are within the threshold (complete linkage);
* `calibrate`: the threshold on the project's near-duplicate protocol
  (`retrieval.near_duplicates.TRANSFORMS`: crop and rescale, colour jitter, blur, JPEG re-encoding; `n`
  originals and their transformed copies, a pair positive when both come from one original):
  the largest distance within which at most `FALSE_PAIR_RATE` (1 in 10,000) of the pairs of
  different images of one class fall, with the pair precision and recall there.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ranking_lib.core.errors import RankingError
from ranking_lib.core.fileio import write_text
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.near_duplicates import TRANSFORMS, transform_images

NEIGHBOURS = 16  # neighbours per image searched for pairs (a group can still be larger: components)


def near_pairs(embeddings: np.ndarray, threshold: float, *, k: int = NEIGHBOURS,
               index_options: dict | None = None) -> list[tuple[int, int, float]]:
    """``(i, j, distance)`` with i < j for pairs within `threshold`, sorted."""
    n = len(embeddings)
    if n < 2:
        return []
    index = EmbeddingIndex(embeddings, np.zeros(n, dtype=np.int64), **(index_options or {}))
    kk = min(k, n - 1)
    idx, dist = index.topk(embeddings, kk, exclude=np.arange(n))
    pairs = {}
    for i in range(n):
        for j, d in zip(idx[i], dist[i]):
            if d <= threshold:
                a, b = (i, int(j)) if i < j else (int(j), i)
                pairs[(a, b)] = float(d)
    return sorted((a, b, d) for (a, b), d in pairs.items())


def groups(embeddings: np.ndarray, pairs: list[tuple[int, int, float]], threshold: float) -> list[list[int]]:
    """Groups (of size >= 2) in which every two images are within `threshold` (complete linkage:
    `pairs` taken nearest first, two groups merged only when all their cross distances are within
    it, so a chain of similar images never becomes one group); each sorted, largest first (ties by
    first member)."""
    group = {i: [i] for i in range(len(embeddings))}  # image -> its group's member list (shared)
    for a, b, _ in sorted(pairs, key=lambda p: (p[2], p[0], p[1])):
        ga, gb = group[a], group[b]
        if ga is gb:
            continue
        cross = embeddings[ga][:, None, :] - embeddings[gb][None, :, :]
        if np.sqrt((cross ** 2).sum(-1)).max() > threshold:
            continue
        ga.extend(gb)
        for j in gb:
            group[j] = ga
    unique = {id(g): sorted(g) for g in group.values() if len(g) > 1}
    return sorted(unique.values(), key=lambda g: (-len(g), g[0]))


def protocol_distances(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distances of the positive pairs (an original and a copy, or two copies of one original)
    and of the negative pairs (two different images of one class: the similar photos a
    collection holds, which a near-duplicate threshold must keep apart) among `images` (uint8
    NHWC, the originals, of classes `labels`) and their copies under every transform of
    `TRANSFORMS`."""
    labels = np.asarray(labels)
    if len(images) < 2 or len(labels) != len(images):
        raise RankingError("calibrating a near-duplicate threshold needs at least 2 images, each with its class")
    z = [np.asarray(embed(images), dtype=np.float32)]
    z += [np.asarray(embed(transform_images(images, name, seed)), dtype=np.float32) for name in TRANSFORMS]
    source = np.tile(np.arange(len(images)), len(z))
    label = np.tile(labels, len(z))
    x = torch.from_numpy(np.concatenate(z))
    d = torch.cdist(x, x).numpy()
    iu = np.triu_indices(len(d), k=1)
    same = source[iu[0]] == source[iu[1]]
    same_class = (label[iu[0]] == label[iu[1]]) & ~same
    dist = d[iu]
    return dist[same], dist[same_class]


FALSE_PAIR_RATE = 1e-4  # of the protocol's pairs of different images of one class, the share within the threshold
PER_CLASS = 10  # calibration images drawn per class: 45 pairs of different images of one class each


def calibration_ids(labels: np.ndarray, n: int, seed: int = 0, per_class: int = PER_CLASS) -> np.ndarray:
    """A seeded, sorted draw of about `n` images as groups of at least `per_class` images of one
    class (more when fewer classes hold `n`; classes chosen at random among those with two or
    more), so the draw holds many pairs of different images of one class: drawn at random from
    200 classes, 200 images hold about 100 such pairs, too few to measure a rate of 1 in 10,000;
    as 20 groups of 10, 900."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 6011])
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= 2]
    per_class = max(per_class, -(-n // max(len(classes), 1)))
    ids = []
    for c in rng.permutation(np.asarray(classes)) if classes else ():
        if len(ids) >= n:
            break
        members = np.flatnonzero(labels == c)
        ids.extend(rng.choice(members, size=min(per_class, len(members), max(n - len(ids), 2)), replace=False))
    return np.sort(np.asarray(ids, dtype=np.int64))


def calibrate(positive: np.ndarray, negative: np.ndarray, false_pair_rate: float = FALSE_PAIR_RATE) -> dict:
    """The largest threshold within which at most `false_pair_rate` of the `negative` pairs fall
    (a property of the network, not of how many images were drawn), with the pair precision and
    recall there, in percent."""
    if not len(positive) or not len(negative):
        raise RankingError("calibrating a near-duplicate threshold needs pairs of copies and pairs of different "
                           "images of one class (the val images drawn hold no two of a class: raise --near-dup-queries)")
    neg = np.sort(np.asarray(negative, dtype=np.float64))
    allowed = int(false_pair_rate * len(neg))
    t = float(np.nextafter(np.float32(neg[allowed]), np.float32(0)))  # `allowed` negatives are <= t
    tp = int((positive <= t).sum())
    fp = int((negative <= t).sum())
    return {"threshold": t, "precision": float(100 * tp / max(tp + fp, 1)), "recall": float(100 * tp / len(positive)),
            "false_pair_rate": false_pair_rate, "positive_pairs": int(len(positive)),
            "negative_pairs": int(len(negative)), "measured": allowed >= 1}


def calibration_note(calib: dict) -> str | None:
    """One line when the calibration's pairs could not measure its rate (fewer than 1 / rate pairs
    of different images of one class: the threshold then lies below all of them, and its precision
    says nothing about a large collection), else None."""
    if calib.get("measured", True):
        return None
    need = int(np.ceil(1 / calib["false_pair_rate"]))
    return (f"note: {calib['negative_pairs']:,} pairs of different images of one class cannot measure a false-pair "
            f"rate of 1 in {need:,} (at least {need:,} are needed): the threshold is only below all of them; raise "
            f"--near-dup-queries for a calibrated one")


# ---------------------------------------------------------------------------------- outputs
def _distance_to_first(embeddings: np.ndarray, group: list[int]) -> np.ndarray:
    e = embeddings[group]
    return np.sqrt(((e - e[0]) ** 2).sum(axis=1))


def write_csv(path: Path, found: list[list[int]], paths: list[str], embeddings: np.ndarray) -> Path:
    """One row per image of a group: group number, path, distance to the group's first image."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "path", "distance_to_first"])
    for g, members in enumerate(found, 1):
        for i, d in zip(members, _distance_to_first(embeddings, members)):
            w.writerow([g, paths[i], f"{d:.4f}"])
    return write_text(path, buf.getvalue())


def thumbnail_uri(path: Path, size: int = 128) -> str | None:
    """A PNG data URI of the image, at most `size` px on its longer side; None if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
    except Exception:  # noqa: BLE001 - a thumbnail that cannot be made shows as text
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_contact_sheet(path: Path, found: list[list[int]], paths: list[str], *, embeddings: np.ndarray,
                        root: Path, title: str) -> Path:
    """An HTML page: one row per group, each image's thumbnail, path and distance to the first."""
    rows = []
    for g, members in enumerate(found, 1):
        cells = []
        for i, d in zip(members, _distance_to_first(embeddings, members)):
            uri = thumbnail_uri(root / paths[i])
            img = f'<img src="{uri}" alt="">' if uri else '<div class="missing">unreadable</div>'
            cells.append(f'<figure>{img}<figcaption>{html.escape(paths[i])}<br>d = {d:.4f}</figcaption></figure>')
        rows.append(f'<section><h2>group {g} ({len(members)} images)</h2>{"".join(cells)}</section>')
    body = "".join(rows) or "<p>no near-duplicates at this threshold</p>"
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>near-duplicates</title><style>"
            "body{font-family:sans-serif}figure{display:inline-block;margin:4px;width:140px;vertical-align:top}"
            "figcaption{font-size:11px;word-break:break-all}.missing{width:128px;height:128px;background:#eee}"
            f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
    return write_text(path, page)
