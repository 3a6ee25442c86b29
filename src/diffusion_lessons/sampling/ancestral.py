"""Ancestral sampling: run the learned reverse chain p_θ(x_{t-1} | x_t) from x_T ~ N(0, I).

Book: chapter "The diffusion ELBO" (Ho et al. 2020, Algorithm 2). Each step predicts x̂_0 from x_t
and draws x_{t-1} ~ q(x_{t-1} | x_t, x̂_0) (label ``eq-posterior``), the Gaussian the ELBO trained
p_θ to imitate. Randomness comes from an injectable ``torch.Generator``; a ``callback`` sees every
step, so a page can record the trajectory without copying the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffusion_lessons.checks import check_choice
from diffusion_lessons.denoisers.parameterizations import PARAMETERIZATIONS
from diffusion_lessons.noise.schedules import check_alpha_bar_grid
from diffusion_lessons.objectives.discrete_time import Model, predict_x0
from diffusion_lessons.process.posterior import posterior_mean_var


@torch.no_grad()
def ancestral_sample(
    model: Model,
    shape: Sequence[int],
    alpha_bar: Tensor,
    *,
    parameterization: str = "x0",
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    clip_x0: float | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw samples ``(B, ...) = shape`` with T ancestral steps; ``alpha_bar: (T + 1,)``.

    For i = T, …, 1: x̂_0 = the model's prediction at x_i, t = i/T, converted from
    ``parameterization`` (``"x0"``, ``"eps"`` or ``"score"``); optionally clipped to
    [−clip_x0, clip_x0]; then ``callback(i, x_i, x̂_0)``; then x_{i-1} ~ N(μ̃(x_i, x̂_0), σ̃_i² I),
    with no noise added at the last step (x_0 = μ̃, which is x̂_0 when ᾱ_0 = 1).
    ``x_T`` fixes the starting noise (shape ``shape``); else it is drawn from ``generator``.
    """
    check_choice(parameterization, PARAMETERIZATIONS, name="parameterization")
    ab = check_alpha_bar_grid(alpha_bar)
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
    steps = torch.ones(shape[0], dtype=torch.long, device=device)
    for i in range(T, 0, -1):
        x0_hat = predict_x0(model, x, steps * i, ab, parameterization=parameterization)
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
