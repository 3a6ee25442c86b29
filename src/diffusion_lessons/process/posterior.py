"""The forward process run backwards, given the data (book: chapter "The diffusion ELBO").

- q(x_{t-1} | x_t, x_0), the Gaussian that every denoising step imitates   (label ``eq-posterior``)
- its derivation by completing the square, in sympy                      (:func:`~diffusion_lessons.symbolic.diffusion_posterior.posterior_derivation`)
- E[x_0 | x_t] for Gaussian-mixture data, exactly   (chapter "Three equivalent objectives", ``eq-score-eps``)

Notation as in :mod:`diffusion_lessons.noise.schedules`: ``alpha_bar`` is ᾱ_t, ``alpha_bar_prev`` is
ᾱ_{t-1}, and the per-step α_t = ᾱ_t / ᾱ_{t-1}.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lessons.checks import append_dims


def _check_pair(alpha_bar: Tensor, alpha_bar_prev: Tensor) -> None:
    if torch.isnan(alpha_bar).any() or torch.isnan(alpha_bar_prev).any():
        raise ValueError("alpha_bar and alpha_bar_prev must not contain NaN")
    if (alpha_bar_prev > 1).any() or (alpha_bar < 0).any():
        raise ValueError("alpha_bar and alpha_bar_prev must lie in [0, 1]")
    if (alpha_bar >= alpha_bar_prev).any():
        raise ValueError(
            "alpha_bar must be smaller than alpha_bar_prev (ᾱ_t < ᾱ_{t-1}: each step adds noise), "
            f"got alpha_bar up to {alpha_bar.max().item():.6g} and alpha_bar_prev down to "
            f"{alpha_bar_prev.min().item():.6g}"
        )


def posterior_coefs(
    alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of q(x_{t-1} | x_t, x_0) = N(c_0 x_0 + c_t x_t, σ̃² I) (label ``eq-posterior``).

    c_0 = √ᾱ_{t-1} (1 − α_t) / (1 − ᾱ_t), c_t = √α_t (1 − ᾱ_{t-1}) / (1 − ᾱ_t),
    σ̃² = (1 − α_t)(1 − ᾱ_{t-1}) / (1 − ᾱ_t), with α_t = ᾱ_t / ᾱ_{t-1}. Inputs: scalars or
    tensors of one shape with 0 ≤ ᾱ_t < ᾱ_{t-1} ≤ 1; returns (c_0, c_t, σ̃²) of that shape, in
    float64 (1 − ᾱ_t is tiny at small t).
    """
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    ab_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    _check_pair(ab, ab_prev)
    alpha = ab / ab_prev
    c0 = ab_prev.sqrt() * (1 - alpha) / (1 - ab)
    ct = alpha.sqrt() * (1 - ab_prev) / (1 - ab)
    var = (1 - alpha) * (1 - ab_prev) / (1 - ab)
    return c0, ct, var


def posterior_mean_var(
    x0: Tensor, xt: Tensor, alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (label ``eq-posterior``).

    ``x0, xt: (B, ...)`` of one shape; ``alpha_bar`` (ᾱ_t) and ``alpha_bar_prev`` (ᾱ_{t-1}):
    scalars or ``(B,)``. Returns ``(mean, var)``: the mean shaped like ``x0`` and the variance
    σ̃_t² broadcastable against it (the covariance is σ̃_t² I).
    """
    if x0.shape != xt.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)} but xt has shape {tuple(xt.shape)}")
    c0, ct, var = posterior_coefs(alpha_bar, alpha_bar_prev)
    c0, ct, var = (append_dims(c, xt, name="alpha_bar", x_name="xt").to(xt) for c in (c0, ct, var))
    return c0 * x0 + ct * xt, var
