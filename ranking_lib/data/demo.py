"""Write a small *synthetic* dataset in the exact ``tiny-imagenet-200`` layout.

Each class is a combination of a shape (disk, square, triangle, ring, cross, ...), a texture
(plain, dots, checker, stripes at a class-specific angle) and a colour palette. Every image
draws a random rotation, scale, position, colour jitter, a noisy gradient background and 0-3
smaller clutter shapes taken from *other* classes, so the classes are separable but not
trivially. Output is byte-for-byte deterministic for a given seed.

    python -m ranking_lib.data.demo --out /tmp/demo [--classes 10 --train-per-class 100
        --val-per-class 20 --seed 0]
    python data_scripts/make_demo_dataset.py ...          (the same, from a checkout)

The ``demo`` profile's ``make_demo_data: true`` makes the runner and the CLI generate it in
``data_dir`` when that has no ``wnids.txt`` (:func:`ensure_demo_dataset`).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ranking_lib.core.errors import DatasetError

logger = logging.getLogger(__name__)

JPEG_QUALITY = 90
_SS = 2  # supersampling factor for anti-aliased edges

# (name, primary RGB, secondary RGB)
PALETTES = [
    ("red", (205, 40, 35), (250, 200, 180)),
    ("blue", (35, 75, 200), (175, 205, 250)),
    ("green", (40, 150, 55), (200, 240, 150)),
    ("yellow", (235, 200, 30), (110, 75, 20)),
    ("purple", (125, 45, 165), (235, 190, 245)),
    ("orange", (240, 130, 25), (60, 40, 120)),
    ("cyan", (30, 185, 200), (20, 50, 70)),
    ("pink", (240, 110, 170), (90, 20, 60)),
    ("white", (240, 240, 235), (70, 70, 80)),
    ("brown", (120, 70, 35), (230, 200, 140)),
]
SHAPES = ["disk", "square", "triangle", "ring", "cross", "star", "hexagon", "crescent", "bar", "diamond"]
# (texture kind, stripe angle in degrees or None, adjective used in the class name)
TEXTURES = [
    ("plain", None, "plain"),
    ("dots", None, "dotted"),
    ("checker", None, "checkered"),
    ("stripes", 0.0, "horizontally striped"),
    ("stripes", 90.0, "vertically striped"),
    ("stripes", 45.0, "diagonally striped"),
    ("stripes", 135.0, "cross-diagonally striped"),
]


def class_specs(num_classes: int, seed: int) -> list[dict]:
    """Pick ``num_classes`` distinct (shape, texture, palette) combinations, seeded."""
    max_classes = len(SHAPES) * len(TEXTURES) * len(PALETTES)
    if num_classes > max_classes:
        raise ValueError(f"at most {max_classes} classes can be generated, asked for {num_classes}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    # Draw from a *reduced* set of shapes and palettes so that many classes share a shape or a
    # colour and differ only in one or two attributes: separable, but not trivially.
    k = max(2, math.ceil(num_classes / 3))
    n_shapes, n_pals = min(len(SHAPES), k), min(len(PALETTES), k)
    while n_shapes * n_pals * len(TEXTURES) < num_classes:
        n_shapes, n_pals = min(len(SHAPES), n_shapes + 1), min(len(PALETTES), n_pals + 1)
    shapes = rng.permutation(len(SHAPES))[:n_shapes]
    pals = rng.permutation(len(PALETTES))[:n_pals]
    pool = [(int(s), t, int(p)) for s in shapes for t in range(len(TEXTURES)) for p in pals]
    picked = [pool[i] for i in rng.permutation(len(pool))[:num_classes]]
    specs = []
    for i, (s, t, p) in enumerate(picked):
        kind, angle, adj = TEXTURES[t]
        pname, c1, c2 = PALETTES[p]
        specs.append({
            "wnid": f"d{i + 1:07d}",
            "name": f"{pname} {adj} {_plural(SHAPES[s])}",
            "shape": SHAPES[s],
            "texture": kind,
            "angle": angle,
            "primary": np.array(c1, float),
            "secondary": np.array(c2, float),
        })
    return specs


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")


# ----------------------------------------------------------------------------- rendering
def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-size shape in its own (rotated, scaled) coordinates."""
    r = np.hypot(u, v)
    if shape == "disk":
        return r <= 1.0
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.82
    if shape == "diamond":
        return abs(u) * 0.75 + abs(v) * 1.25 <= 1.0
    if shape == "triangle":
        m = np.ones_like(u, bool)
        for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)):
            m &= -(u * math.cos(a) + v * math.sin(a)) <= 0.55
        return m
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.58)
    if shape == "cross":
        return ((abs(u) <= 0.3) & (abs(v) <= 1.0)) | ((abs(v) <= 0.3) & (abs(u) <= 1.0))
    if shape == "star":
        th = np.arctan2(v, u)
        return r <= 0.62 + 0.38 * np.cos(5 * th)
    if shape == "hexagon":
        m = np.ones_like(u, bool)
        for k in range(6):
            a = k * math.pi / 3
            m &= u * math.cos(a) + v * math.sin(a) <= 0.88
        return m
    if shape == "crescent":
        return (r <= 1.0) & (np.hypot(u - 0.45, v) >= 0.78)
    if shape == "bar":
        return (abs(u) <= 1.0) & (abs(v) <= 0.34)
    raise ValueError(shape)


def _texture(kind: str, angle, x: np.ndarray, y: np.ndarray, period: float, phase: float) -> np.ndarray:
    """Float map in [0, 1]: 1 = primary colour, 0 = secondary colour."""
    if kind == "plain":
        return np.ones_like(x)
    if kind == "stripes":
        a = math.radians(angle)
        t = (-x * math.sin(a) + y * math.cos(a)) / period + phase
        return (np.sin(2 * math.pi * t) > 0).astype(float)
    if kind == "checker":
        return (((np.floor(x / period + phase) + np.floor(y / period + phase)) % 2) == 0).astype(float)
    if kind == "dots":
        gx = (x / period + phase) % 1.0 - 0.5
        gy = (y / period + phase) % 1.0 - 0.5
        return (np.hypot(gx, gy) > 0.28).astype(float)
    raise ValueError(kind)


def _draw_object(canvas, xx, yy, spec, rng, cx, cy, radius, jitter=True):
    """Paint one object of class ``spec`` into ``canvas`` (H, W, 3 float); returns its bbox."""
    theta = rng.uniform(0, 2 * math.pi)
    aspect = rng.uniform(0.85, 1.15)
    angle = spec["angle"] + rng.uniform(-12, 12) if spec["texture"] == "stripes" else None
    period = radius * rng.uniform(0.45, 0.7)
    phase = rng.uniform(0, 1)
    c1, c2 = spec["primary"].copy(), spec["secondary"].copy()
    if jitter:
        gain = rng.uniform(0.75, 1.2)
        shift = rng.normal(0, 15, 3)
        c1 = c1 * gain + shift
        c2 = c2 * gain + shift
    su, sv = rng.uniform(-1, 1), rng.uniform(-1, 1)
    # only evaluate the window that can contain the object
    h, w = canvas.shape[:2]
    ext = radius * 1.2
    r0, r1 = max(0, int(cy - ext)), min(h, int(cy + ext) + 2)
    q0, q1 = max(0, int(cx - ext)), min(w, int(cx + ext) + 2)
    if r0 >= r1 or q0 >= q1:
        return (int(cx), int(cy), int(cx), int(cy))
    x, y = xx[r0:r1, q0:q1], yy[r0:r1, q0:q1]
    dx, dy = x - cx, y - cy
    c, s = math.cos(theta), math.sin(theta)
    u = (c * dx + s * dy) / (radius * aspect)
    v = (-s * dx + c * dy) / (radius / aspect)
    mask = _shape_mask(spec["shape"], u, v)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (int(cx), int(cy), int(cx), int(cy))
    tex = _texture(spec["texture"], angle, x, y, period, phase)
    shade = 1.0 + 0.09 * (u * su + v * sv)
    colour = (tex[..., None] * c1 + (1 - tex[..., None]) * c2) * shade[..., None]
    canvas[r0:r1, q0:q1][mask] = colour[mask]
    return (q0 + xs.min(), r0 + ys.min(), q0 + xs.max(), r0 + ys.max())


def render_image(spec: dict, others: list[dict], rng: np.random.Generator, size: int = 64):
    """Return (uint8 RGB array (size, size, 3), bbox (x0, y0, x1, y1)) for one image."""
    big = size * _SS
    yy, xx = np.mgrid[0:big, 0:big].astype(float)
    # background: random two-colour gradient + low-frequency blobs
    a, b = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    g = math.radians(rng.uniform(0, 360))
    t = ((xx * math.cos(g) + yy * math.sin(g)) / big + 1) / 2
    canvas = a * (1 - t[..., None]) + b * t[..., None]
    low = rng.normal(0, 1, (4, 4, 3))
    low_img = np.asarray(Image.fromarray(((low - low.min()) / (np.ptp(low) + 1e-9) * 255).astype(np.uint8))
                         .resize((big, big), Image.BICUBIC), float)
    canvas += (low_img - 128) * 0.25

    # clutter behind the main object
    n_clutter = int(rng.integers(0, 4)) if others else 0
    front = []
    for _ in range(n_clutter):
        spec_c = others[int(rng.integers(len(others)))]
        args = (spec_c, rng.uniform(0, big), rng.uniform(0, big), big * rng.uniform(0.1, 0.2))
        if rng.uniform() < 0.3:
            front.append(args)
        else:
            _draw_object(canvas, xx, yy, args[0], rng, *args[1:])

    radius = big * rng.uniform(0.2, 0.36)
    margin = radius * 0.7
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    x0, y0, x1, y1 = _draw_object(canvas, xx, yy, spec, rng, cx, cy, radius)
    for args in front:  # small occluders in front
        _draw_object(canvas, xx, yy, args[0], rng, *args[1:])

    canvas += rng.normal(0, rng.uniform(3, 12), canvas.shape)
    img = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")
    img = img.resize((size, size), Image.BOX)
    bbox = tuple(int(min(size - 1, max(0, round(vv / _SS)))) for vv in (x0, y0, x1, y1))
    return np.asarray(img), bbox


def _jpeg_bytes(arr: np.ndarray, gray: bool = False) -> bytes:
    img = Image.fromarray(arr, "RGB")
    if gray:
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear a previous demo dataset there, refuse to touch anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        wnids = out / "wnids.txt"
        ids = wnids.read_text().split() if wnids.is_file() else []
        if not ids or not all(re.fullmatch(r"d\d{7}", w) for w in ids):
            raise ValueError(f"{out} is not empty and does not hold a demo dataset; choose another --out")
        for sub in ("train", "val"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def make_demo_dataset(out_dir, num_classes: int = 10, *, train_per_class: int = 100,
                      val_per_class: int = 20, seed: int = 0, size: int = 64) -> Path:
    """Generate the synthetic dataset under ``out_dir`` (created) and return its path."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError("train_per_class and val_per_class must be at least 1")
    out = Path(out_dir)
    _prepare_out(out)
    specs = class_specs(num_classes, seed)
    (out / "wnids.txt").write_text("".join(s["wnid"] + "\n" for s in specs))
    (out / "words.txt").write_text("".join(f"{s['wnid']}\t{s['name']}\n" for s in specs))

    # two grayscale training images to exercise the grayscale path
    gray = {(0, 0), (1 % num_classes, min(1, train_per_class - 1))}
    for c, spec in enumerate(specs):
        others = specs[:c] + specs[c + 1:]
        img_dir = out / "train" / spec["wnid"] / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        boxes = []
        for i in range(train_per_class):
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0, c, i]))
            arr, bbox = render_image(spec, others, rng, size)
            name = f"{spec['wnid']}_{i}.JPEG"
            (img_dir / name).write_bytes(_jpeg_bytes(arr, gray=(c, i) in gray))
            boxes.append(f"{name}\t" + "\t".join(map(str, bbox)) + "\n")
        (out / "train" / spec["wnid"] / f"{spec['wnid']}_boxes.txt").write_text("".join(boxes))

    val_dir = out / "val" / "images"
    val_dir.mkdir(parents=True, exist_ok=True)
    pairs = [(c, j) for c in range(num_classes) for j in range(val_per_class)]
    perm = np.random.default_rng(np.random.SeedSequence([seed, 2])).permutation(len(pairs))
    lines = []
    for k, p in enumerate(perm):
        c, j = pairs[p]
        spec = specs[c]
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, c, j]))
        arr, bbox = render_image(spec, specs[:c] + specs[c + 1:], rng, size)
        name = f"val_{k}.JPEG"
        (val_dir / name).write_bytes(_jpeg_bytes(arr))
        lines.append(f"{name}\t{spec['wnid']}\t" + "\t".join(map(str, bbox)) + "\n")
    (out / "val" / "val_annotations.txt").write_text("".join(lines))
    return out


def ensure_demo_dataset(data_dir, quiet: bool = False) -> bool:
    """Generate the default demo dataset in `data_dir` unless it already holds one (its
    ``wnids.txt``); True when it was generated."""
    data_dir = Path(data_dir)
    if (data_dir / "wnids.txt").is_file():
        return False
    if data_dir.exists() and not (data_dir.is_dir() and not any(data_dir.iterdir())):
        what = "is not a folder" if not data_dir.is_dir() else "is a folder with files but no wnids.txt"
        raise DatasetError(f"data_dir {data_dir} {what}: it holds no dataset, and the demo profile generates its "
                           "synthetic dataset only into a new or empty folder; pass the folder that holds "
                           "wnids.txt (e.g. data/tiny-imagenet-200) or a new one")
    if not quiet:
        logger.info(f"generating the synthetic demo dataset in {data_dir} ...")
    make_demo_dataset(data_dir)
    return True


def ensure_profile_data(profile, data_dir, overrides: dict | None = None, quiet: bool = False) -> bool:
    """:func:`ensure_demo_dataset` when `profile` (or `overrides`) says ``make_demo_data: true``
    (the demo profile)."""
    from ranking_lib.core.settings import load_profile

    make = (overrides or {}).get("make_demo_data", bool(profile) and load_profile(profile).get("make_demo_data"))
    return bool(make) and ensure_demo_dataset(data_dir, quiet)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (tiny-imagenet-200 layout)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        out = make_demo_dataset(args.out, args.classes, train_per_class=args.train_per_class, val_per_class=args.val_per_class, seed=args.seed)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote synthetic dataset ({args.classes} classes, {args.classes * args.train_per_class} train, "
          f"{args.classes * args.val_per_class} val images) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
