"""Negative ELBO of an image set in bits per dimension, term by term (chapter 10).

This module is only the loop over the images: batching, one random generator for the whole set,
the sums of each term, standard errors and the conversion nats → bits/dim. What is evaluated on
each batch is a *terms function* ``terms_fn(x0, generator=...) -> {name: (B,)}`` in nats, e.g.

- DDPM's discrete bound: ``functools.partial(discrete_time.ddpm_terms, denoiser,
  alpha_bar=schedule.ddpm_alpha_bar(T), bins=256)``
  (:func:`~diffusion_lessons.objectives.discrete_time.ddpm_terms`);
- VDM's continuous bound: ``functools.partial(continuous_time.vdm_terms, denoiser,
  schedule=schedule, bins=256)`` (:func:`~diffusion_lessons.objectives.continuous_time.vdm_terms`),

with ``denoiser = FromEps(net, cond=schedule_time(schedule))`` for an ε-network trained on
t ∈ [0, 1] (:mod:`~diffusion_lessons.denoisers.denoiser`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_lessons.checks import check_positive_int
from diffusion_lessons.gaussians import bits_per_dim

TermsFn = Callable[..., dict[str, Tensor]]
"""``terms_fn(x0 (B, ...), generator=torch.Generator) -> {name: (B,)}``, each term in nats."""


def to_bits_per_dim(terms: dict[str, Tensor], num_dims: int) -> dict[str, float]:
    """Average each term over the batch and convert nats → bits/dim (÷ (num_dims · ln 2))."""
    return {k: float(bits_per_dim(v.mean(), num_dims)) for k, v in terms.items()}


@torch.no_grad()
def evaluate_bits_per_dim(
    terms_fn: TermsFn,
    images: Tensor,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Negative ELBO of ``images: (N, C, H, W)`` (in [−1, 1]) in bits/dim, term by term.

    ``terms_fn`` is called on each batch of ``batch_size`` images with one generator seeded by
    ``seed`` (on the device of ``images``). Returns each term's mean over the N images in bits/dim,
    and ``"<term>_se"``, its Monte Carlo standard error (the per-image standard deviation over √N;
    0 when N = 1).
    """
    check_positive_int(batch_size, name="batch_size")
    if images.ndim < 2 or images.shape[0] < 1:
        raise ValueError(f"images must have shape (N, ...) with N >= 1, got {tuple(images.shape)}")
    gen = torch.Generator(device=images.device).manual_seed(seed)
    sums: dict[str, Tensor] = {}
    squares: dict[str, Tensor] = {}
    for start in range(0, images.shape[0], batch_size):
        terms = terms_fn(images[start : start + batch_size], generator=gen)
        for k, v in terms.items():
            v = v.double()
            sums[k] = sums.get(k, 0.0) + v.sum()
            squares[k] = squares.get(k, 0.0) + (v**2).sum()
    n, dims = images.shape[0], images[0].numel()
    out: dict[str, float] = {}
    for k, total in sums.items():
        mean = total / n
        var = (squares[k] / n - mean**2).clamp_min(0.0) * n / max(n - 1, 1)
        out[k] = float(bits_per_dim(mean, dims))
        out[f"{k}_se"] = float(bits_per_dim(var.sqrt() / math.sqrt(n), dims))
    return out
