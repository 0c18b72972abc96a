"""Robust image decoding: one file to a ``(size, size, 3)`` uint8 RGB array, or a one-line
`CorruptImageError` naming the file. A file's EXIF orientation tag (a phone photo taken sideways
stores its pixels unrotated and says how to turn them) is applied before anything else."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ranking_lib.core.errors import CorruptImageError, DatasetError

__all__ = ["load_image_rgb", "MAX_PIXELS"]

MAX_PIXELS = 50_000_000
"""Images larger than this (width x height, read from the header before any pixel is decoded)
are refused: decoding one would take gigabytes of memory for a 64-px thumbnail."""


# ---------------------------------------------------------------------- decoding
def load_image_rgb(path, size: int = 64) -> np.ndarray:
    """Decode ``path`` to a ``(size, size, 3)`` uint8 RGB array (bilinear resize if needed), turned
    upright as its EXIF orientation tag says."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"image file not found: {path}")
    if not path.is_file():
        raise DatasetError(f"image path {path} is not a regular file (a directory, device or pipe); "
                           "pass an image file")
    try:
        with warnings.catch_warnings():  # the size is decided below, not by Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise DatasetError(f"image {path} is {w} x {h} pixels ({w * h / 1e6:.1f} megapixels), above the "
                                   f"{MAX_PIXELS / 1e6:.0f} megapixels this library decodes; downscale it first")
            img.load()  # forces a full decode so truncated files are detected
            ImageOps.exif_transpose(img, in_place=True)  # no-op without an orientation tag
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


def decode_job(job):
    """Worker: returns (array or None, error message or None). Must stay module level."""
    path, size = job
    try:
        return load_image_rgb(path, size), None
    except CorruptImageError as exc:
        return None, str(exc)


