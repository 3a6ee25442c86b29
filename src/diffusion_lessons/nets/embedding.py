"""The sinusoidal embedding of a noise level (Vaswani et al. 2017; Ho et al. 2020): the one way the
networks take their noise input.

Each network multiplies its noise input c by its ``noise_scale`` before embedding it, so that the
range of c spans many periods of the embedding's frequencies. What c is depends on how the network
is used (:mod:`~diffusion_lessons.denoisers.denoiser`, the ``cond`` of the wrappers):

- chapters 4–5, :class:`~diffusion_lessons.nets.mlp.MLPDenoiser` with ``noise_scale=1000``: the time
  t = i/T ∈ [0, 1] of a T-step grid (``cond=denoiser.grid_time(alpha_bar)``), as in DDPM;
- chapters 6–7, the same MLP with ``noise_scale=4``: the log-SNR λ itself (``cond`` the identity),
  λ ∈ [−7, 13];
- the image trainer, :class:`~diffusion_lessons.nets.unet.UNet` with ``noise_scale=50``: λ itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def time_embedding(t: Tensor, dim: int, *, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of a scalar per example (Vaswani et al. 2017; Ho et al. 2020).

    ``t: (B,)``, the network's noise input already multiplied by its ``noise_scale`` (see the
    module docstring) → ``(B, dim)``: cosines and sines of ``t`` at ``dim / 2`` geometrically
    spaced frequencies from 1 to 1/``max_period``.
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


def embed_noise(mlp: nn.Module, t: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """``mlp(time_embedding(t, dim))`` in ``dtype``, for ``t: (B,)`` → ``(B, hidden)``.

    A batch whose rows share one noise level (every step of a sampler) is embedded once and
    broadcast to the B rows, a read-only view; a batch of mixed levels (training) row by row. The
    two give the same values up to the rounding of a one-row against a B-row matrix product.
    """
    if t.ndim == 1 and t.shape[0] > 1 and bool((t == t[0]).all()):
        return mlp(time_embedding(t[:1], dim).to(dtype)).expand(t.shape[0], -1)
    return mlp(time_embedding(t, dim).to(dtype))
