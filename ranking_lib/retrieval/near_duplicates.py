"""Near-duplicate retrieval: instance-level similarity, beyond the label.

`near_duplicate_recall`: images under seeded transforms as queries against a database plus their
untouched originals; recall@k of the original, per transform and per family: the ``standard``
family (`TRANSFORMS`: crop and rescale, colour jitter, blur, JPEG re-encoding; the training views
of `training.views` draw from the same kinds of change) and the ``held_out`` family
(`HELD_OUT_TRANSFORMS`: small rotation, aspect change, overlaid text, gamma, partial occlusion),
which no training augmentation uses. It takes an ``embed`` callable, so any network (or any
feature function) can be measured. Percentages (0-100, Python float), like `metrics`.
"""

from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np

from ranking_lib.core.errors import RankingError


def _crop_rescale(img, rng):
    from PIL import Image

    w, h = img.size
    s = rng.uniform(0.6, 0.85)
    cw, ch = max(1, round(w * s)), max(1, round(h * s))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)


def _colour_jitter(img, rng):
    from PIL import ImageEnhance

    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(rng.uniform(0.6, 1.4))
    return img


def _blur(img, rng):
    from PIL import ImageFilter

    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.0, 2.0)))


def _jpeg(img, rng):
    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(10, 31)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


TRANSFORMS: dict[str, Callable] = {
    "crop": _crop_rescale,    # a 60-85 % side crop at a random place, resized back (bicubic)
    "jitter": _colour_jitter,  # brightness, contrast, saturation each x U(0.6, 1.4)
    "blur": _blur,            # Gaussian blur, radius U(1, 2) px
    "jpeg": _jpeg,            # JPEG re-encoding at quality U{10..30}
}
"""The standard near-duplicate transforms (PIL), each seeded per image."""


def _rotate(img, rng):
    from PIL import Image

    w, h = img.size
    angle = float(rng.uniform(8.0, 20.0) * rng.choice([-1.0, 1.0]))
    r = np.deg2rad(abs(angle))
    side = min(w, h) / (np.cos(r) + np.sin(r))  # the largest upright square inside the turned image
    x0, y0 = (w - side) / 2, (h - side) / 2
    turned = img.rotate(angle, resample=Image.BICUBIC)
    return turned.crop((round(x0), round(y0), round(x0 + side), round(y0 + side))).resize((w, h), Image.BICUBIC)


def _aspect(img, rng):
    from PIL import Image

    w, h = img.size
    a = rng.uniform(1.25, 1.5)
    sw, sh = (round(w * a), h) if rng.random() < 0.5 else (w, round(h * a))
    big = img.resize((sw, sh), Image.BICUBIC)  # stretched along one axis, then cut back to w x h
    x, y = (sw - w) // 2, (sh - h) // 2
    return big.crop((x, y, x + w, y + h))


def _text(img, rng):
    from PIL import ImageDraw, ImageFont

    w, h = img.size
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
    word = "".join(letters[i] for i in rng.integers(0, len(letters), int(rng.integers(3, 6))))
    font = ImageFont.load_default(size=max(8, round(h * rng.uniform(0.2, 0.3))))
    out = img.copy()
    draw = ImageDraw.Draw(out)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = int(rng.integers(0, max(1, w - (right - left)) + 1)) - left
    y = int(rng.integers(0, max(1, h - (bottom - top)) + 1)) - top
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    draw.text((x, y), word, font=font, fill=fill, stroke_width=1, stroke_fill=tuple(255 - v for v in fill))
    return out


def _gamma(img, rng):
    g = rng.uniform(0.45, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.2)
    lut = [min(255, round(255.0 * (i / 255.0) ** g)) for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _occlude(img, rng):
    from PIL import ImageDraw

    w, h = img.size
    area = rng.uniform(0.15, 0.25) * w * h
    aspect = rng.uniform(0.5, 2.0)
    bw, bh = min(w, max(1, round(np.sqrt(area * aspect)))), min(h, max(1, round(np.sqrt(area / aspect))))
    x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    out = img.copy()
    ImageDraw.Draw(out).rectangle((x, y, x + bw - 1, y + bh - 1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return out


HELD_OUT_TRANSFORMS: dict[str, Callable] = {
    "rotate": _rotate,    # turned by 8-20 degrees either way, the largest upright square cut out and resized back
    "aspect": _aspect,    # one axis stretched x U(1.25, 1.5), the centre cut back to the original size
    "text": _text,        # 3-5 letters or digits (a fifth to a third of the height high) in a random colour, outlined
    "gamma": _gamma,      # gamma U(0.45, 0.7) or U(1.5, 2.2)
    "occlude": _occlude,  # a flat rectangle of a random colour over 15-25 % of the image
}
"""The held-out near-duplicate transforms (PIL): kinds of change no training augmentation makes
(`training.views` keeps the aspect ratio and never turns, writes on, gamma-curves or covers an image)."""

FAMILIES: dict[str, tuple[str, ...]] = {"standard": tuple(TRANSFORMS), "held_out": tuple(HELD_OUT_TRANSFORMS)}
"""The near-duplicate families, each a tuple of transform names."""

ALL_TRANSFORMS: dict[str, Callable] = {**TRANSFORMS, **HELD_OUT_TRANSFORMS}
"""Every near-duplicate transform; a transform's seed index is its position here (the standard
ones first, so their copies are those of earlier versions)."""

FAMILY_KEY = {"standard": "near_dup_recall", "held_out": "near_dup_held_out_recall"}
"""The metric name of each family's recall over its transforms (``near_dup_recall@1`` kept for the standard one)."""


def transform_images(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """`images` (N, H, W, 3) uint8 under transform `name` of `ALL_TRANSFORMS`; image i's parameters
    come from the seed ``(seed, transform index, i)``, so a subset keeps its images' copies."""
    from PIL import Image

    if name not in ALL_TRANSFORMS:
        raise RankingError(f"unknown transform {name!r} (one of {', '.join(ALL_TRANSFORMS)})")
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise RankingError(f"images must be uint8 (N, H, W, 3) (got {a.dtype} {a.shape})")
    t, which = ALL_TRANSFORMS[name], list(ALL_TRANSFORMS).index(name)
    out = np.empty_like(a)
    for i in range(len(a)):
        rng = np.random.default_rng([int(seed), which, i])
        out[i] = np.asarray(t(Image.fromarray(a[i]), rng).convert("RGB"), dtype=np.uint8)
    return out


def near_duplicate_recall(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray, db_embeddings,
                          *, ks=(1, 10), seed: int = 0, transforms: Sequence[str] = tuple(ALL_TRANSFORMS)) -> dict:
    """Near-duplicate retrieval: recall@k of the original, in percent.

    The originals `images` (uint8 (N, H, W, 3)) are embedded with `embed` and added to
    `db_embeddings` (N_db, d); each transformed copy (`transform_images`, every transform in
    `transforms`, by default both families) embedded with `embed` is a query, and it is a hit at k
    when its own original is among its k nearest (Euclidean, ties by index; the copy itself is not
    in the database).

    Returns, for every k, ``near_dup_recall@k_<transform>`` per transform and each family's
    recall over its transforms in `transforms` (`FAMILY_KEY`: ``near_dup_recall@k`` for the
    standard family, ``near_dup_held_out_recall@k`` for the held-out one); and
    ``near_dup_queries`` (originals) and ``near_dup_database`` (searched items).
    """
    from ranking_lib.retrieval.index import EmbeddingIndex

    ks = sorted({int(k) for k in ks})
    unknown = [t for t in transforms if t not in ALL_TRANSFORMS]
    if unknown or not len(transforms):
        raise RankingError(f"near-duplicate transforms must be some of {', '.join(ALL_TRANSFORMS)} (got {list(transforms)})")
    a = np.asarray(images)
    if len(a) == 0:
        raise RankingError("near-duplicate retrieval needs at least one image")
    base = np.asarray(db_embeddings, dtype=np.float32)
    z0 = np.asarray(embed(a), dtype=np.float32)
    if z0.ndim != 2 or (len(base) and z0.shape[1] != base.shape[1]) or len(z0) != len(a):
        raise RankingError(f"embed returned {z0.shape} for {len(a)} images; the database is {base.shape}")
    database = np.concatenate([base.reshape(-1, z0.shape[1]), z0])
    index = EmbeddingIndex(database, np.zeros(len(database), dtype=np.int64), backend="torch")
    target = np.arange(len(base), len(database))
    k_max = min(ks[-1], len(database))
    out, hits = {}, {(f, k): [] for f in FAMILIES for k in ks}
    for name in transforms:
        zq = np.asarray(embed(transform_images(a, name, seed)), dtype=np.float32)
        idx, _ = index.topk(zq, k_max)
        family = next(f for f, names in FAMILIES.items() if name in names)
        for k in ks:
            h = (idx[:, :k] == target[:, None]).any(axis=1)
            out[f"near_dup_recall@{k}_{name}"] = float(100.0 * h.mean())
            hits[family, k].append(h)
    for (family, k), h in hits.items():
        if h:
            out[f"{FAMILY_KEY[family]}@{k}"] = float(100.0 * np.concatenate(h).mean())
    out["near_dup_queries"] = int(len(a))
    out["near_dup_database"] = int(len(database))
    return out


def near_duplicate_ids(n_images: int, n: int, seed: int = 0) -> np.ndarray:
    """The seeded, sorted subset of `n` of `n_images` images used as near-duplicate queries."""
    return np.sort(np.random.default_rng([int(seed), 6007]).choice(n_images, size=min(n, n_images), replace=False))
