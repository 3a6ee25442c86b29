"""The sinusoidal embedding of a noise level (Vaswani et al. 2017; Ho et al. 2020) that the
networks take as their conditioning input."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def time_embedding(t: Tensor, dim: int, *, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of a scalar per example (Vaswani et al. 2017; Ho et al. 2020).

    ``t: (B,)`` (a time in [0, 1] scaled by 1000, or a log-SNR) → ``(B, dim)``: cosines and sines of
    ``t`` at ``dim / 2`` geometrically spaced frequencies.
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)
