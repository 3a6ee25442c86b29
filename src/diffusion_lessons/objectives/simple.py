"""The simple losses: a denoiser's squared error against its own target, unweighted.

Book: chapter "Three equivalent objectives". In x_0 units each is the ELBO's squared error with
a different weight (``eq-implied-weights``); DDPM's L_simple is the ε one (Ho et al. 2020, eq. 14).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lessons.checks import append_dims, check_choice
from diffusion_lessons.denoisers.parameterizations import PARAMETERIZATIONS
from diffusion_lessons.noise.schedules import check_alpha_bar_grid
from diffusion_lessons.noise.time_sampling import uniform_steps
from diffusion_lessons.objectives.discrete_time import Model
from diffusion_lessons.process.forward import q_sample


def denoising_loss(
    model: Model,
    x0: Tensor,
    generator: torch.Generator | None,
    *,
    alpha_bar: Tensor,
    parameterization: str,
) -> Tensor:
    """Mean squared error of the model's output against its own target, t uniform on 1..T.

    The target is x_0 for ``"x0"``, ε for ``"eps"`` and ∇ log q(x_t | x_0) = −ε/σ_t for
    ``"score"`` (denoising score matching, Vincent 2011). In x_0 units each is the ELBO's
    squared error with the weight of :func:`~diffusion_lessons.denoisers.parameterizations.implied_x0_weight`
    (``eq-implied-weights``). Returns a scalar (mean over examples and dimensions).
    """
    check_choice(parameterization, PARAMETERIZATIONS, name="parameterization")
    ab = check_alpha_bar_grid(alpha_bar).to(x0.device)
    T = len(ab) - 1
    i = uniform_steps(x0.shape[0], T, generator=generator, device=x0.device)
    ab_i = ab[i].to(x0)
    xt, eps = q_sample(x0, ab_i, generator=generator)
    t = i.to(x0.dtype) / T
    pred = model(xt, t)
    if pred.shape != x0.shape:
        raise ValueError(f"model output has shape {tuple(pred.shape)}, expected {tuple(x0.shape)}")
    sigma = append_dims((1 - ab_i).sqrt(), x0)
    target = {"x0": x0, "eps": eps, "score": -eps / sigma}[parameterization]
    return ((pred - target) ** 2).mean()


def l_simple(
    model: Model, x0: Tensor, generator: torch.Generator | None, *, alpha_bar: Tensor
) -> Tensor:
    """DDPM's L_simple = E_{t, x_0, ε} ‖ε − ε̂_θ(x_t, t)‖² (Ho et al. 2020, eq. 14; weighting in ``eq-implied-weights``)."""
    return denoising_loss(model, x0, generator, alpha_bar=alpha_bar, parameterization="eps")
