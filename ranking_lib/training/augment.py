"""Training-time augmentation on uint8 image batches (runs on the training device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flip_and_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 4) -> torch.Tensor:
    """Random horizontal flip (p = 0.5) and random translation by up to `max_shift` pixels
    (reflect padding) of a uint8 (N, H, W, 3) batch. Deterministic for a seeded generator."""
    n, h, w, _ = images.shape
    dev = images.device
    flip = torch.rand(n, generator=generator) < 0.5
    dx = torch.randint(-max_shift, max_shift + 1, (n,), generator=generator)
    dy = torch.randint(-max_shift, max_shift + 1, (n,), generator=generator)
    x = images.permute(0, 3, 1, 2)
    x = torch.where(flip.to(dev)[:, None, None, None], x.flip(-1), x)
    if max_shift > 0:
        p = max_shift
        padded = F.pad(x.float(), (p, p, p, p), mode="reflect")
        rows = (torch.arange(h)[None, :] + p + dy[:, None]).to(dev)  # (n, h)
        cols = (torch.arange(w)[None, :] + p + dx[:, None]).to(dev)  # (n, w)
        idx_r = rows[:, None, :, None].expand(n, 3, h, w + 2 * p)
        padded = padded.gather(2, idx_r)
        idx_c = cols[:, None, None, :].expand(n, 3, h, w)
        x = padded.gather(3, idx_c).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()
