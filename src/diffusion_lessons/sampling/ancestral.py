"""Ancestral sampling: run the learned reverse chain p_θ(x_{t-1} | x_t) from x_T ~ N(0, I).

Book: chapter "The diffusion ELBO" (Ho et al. 2020, Algorithm 2). Each step asks the denoiser
D(x_t, λ_t) (:mod:`~diffusion_lessons.denoisers.denoiser`) for x̂_0 and draws x_{t-1} ~ q(x_{t-1} | x_t, x̂_0) (label ``eq-posterior``), the Gaussian the ELBO trained
p_θ to imitate. Randomness comes from an injectable ``torch.Generator``; a ``callback`` sees every
step, so a page can record the trajectory without copying the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffusion_lessons.denoisers.denoiser import Denoiser
from diffusion_lessons.noise.schedules import check_alpha_bar_grid, log_snr_from_alpha_bar
from diffusion_lessons.process.posterior import posterior_mean_var


@torch.no_grad()
def ancestral_sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    alpha_bar: Tensor,
    *,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    clip_x0: float | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw samples ``(B, ...) = shape`` with T ancestral steps; ``alpha_bar: (T + 1,)``.

    For i = T, …, 1: x̂_0 = ``denoiser(x_i, λ_i)`` with λ_i = log(ᾱ_i / (1 − ᾱ_i)) the grid's
    level, a ``(B,)`` float64 tensor (wrap an ε- or score-network with
    :class:`~diffusion_lessons.denoisers.denoiser.FromEps` or ``FromScore``); optionally clipped to
    [−clip_x0, clip_x0]; then ``callback(i, x_i, x̂_0)``; then x_{i-1} ~ N(μ̃(x_i, x̂_0), σ̃_i² I),
    with no noise added at the last step (x_0 = μ̃, which is x̂_0 when ᾱ_0 = 1).
    ``x_T`` fixes the starting noise (shape ``shape``); else it is drawn from ``generator``.
    """
    ab = check_alpha_bar_grid(alpha_bar)
    lam = log_snr_from_alpha_bar(ab).to(device)
    T = len(ab) - 1
    shape = tuple(shape)
    if x_T is None:
        x = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    elif tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {shape}")
    else:
        x = x_T.to(dtype=dtype, device=device)
    if clip_x0 is not None and clip_x0 <= 0:
        raise ValueError(f"clip_x0 must be None or > 0, got {clip_x0!r}")
    ones = torch.ones(shape[0], dtype=torch.float64, device=device)
    for i in range(T, 0, -1):
        x0_hat = denoiser(x, ones * lam[i])
        if clip_x0 is not None:
            x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
        if callback is not None:
            callback(i, x, x0_hat)
        mean, var = posterior_mean_var(x0_hat, x, ab[i], ab[i - 1])
        if i > 1:
            noise = torch.randn(shape, generator=generator, dtype=dtype, device=device)
            x = mean + var.sqrt() * noise
        else:
            x = mean
    return x
