"""Random-crop augmentation on image batches (per-sample shifts drawn from a caller-owned generator)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(x: Tensor, pad: int = 2, *, generator: torch.Generator, flip: bool = False) -> Tensor:
    """Pad each image of ``x`` (N, C, H, W) by ``pad`` on every side and cut an H x W window at a random offset,
    i.e. shift its content by up to ``pad`` pixels each way; with ``flip``, also mirror half of them left-right.

    Padding repeats the edge pixels rather than adding zeros: on standardised inputs zero is not the
    background, while the edge of a Fashion-MNIST image is. Offsets are drawn from ``generator`` (on the CPU),
    so a seeded generator gives the same batch of shifts whatever the device of ``x``.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop expects a (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"random_crop: pad must be an integer >= 0, got {pad!r}")
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    mirror = torch.rand(n, generator=generator).to(x.device) < 0.5 if flip else None
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
        cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (N, H, W, C) -> NCHW
    if mirror is not None:
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return x.contiguous()
