"""The simple losses: a denoiser's squared error against its own target, unweighted.

Book: chapter "Three equivalent objectives". A network predicts x_0, ε or the score; wrapped as a
denoiser (:class:`~diffusion_lessons.denoisers.denoiser.FromX0`,
:class:`~diffusion_lessons.denoisers.denoiser.FromEps`,
:class:`~diffusion_lessons.denoisers.denoiser.FromScore`), it is trained by the squared error in its
own units. In x_0 units each is the ELBO's squared error with a different weight
(``eq-implied-weights``); DDPM's L_simple is the ε one (Ho et al. 2020, eq. 14).

Three targets, three functions (:func:`x0_loss`, :func:`eps_loss`, :func:`score_loss`), not one
function with the target named by a string: each is a different objective (a different weighting of
the noise levels), and the shared part, drawing the step, the noise and x_t, is one private helper.
:func:`eps_loss_continuous` is L_simple in continuous time, t ∈ [0, 1] of a schedule (chapter 7 and
the image trainer, :mod:`~diffusion_lessons.training.engine`).

Every loss takes a denoiser ``D(x_t, log_snr) → x̂_0``
(:mod:`~diffusion_lessons.denoisers.denoiser`) and reads it back in the units of its target with
:func:`~diffusion_lessons.denoisers.denoiser.eps_from` or
:func:`~diffusion_lessons.denoisers.denoiser.score_from`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from diffusion_lessons.checks import append_dims, sum_except_batch
from diffusion_lessons.denoisers.denoiser import Denoiser, eps_from, score_from
from diffusion_lessons.noise.schedules import check_alpha_bar_grid, log_snr_from_alpha_bar
from diffusion_lessons.noise.time_sampling import uniform_steps
from diffusion_lessons.process.forward import q_sample


class _Draw(NamedTuple):
    xt: Tensor
    eps: Tensor
    log_snr: Tensor
    sigma: Tensor


def _draw_on_grid(x0: Tensor, alpha_bar: Tensor, generator: torch.Generator | None) -> _Draw:
    """i ~ U{1..T}, ε ~ N(0, I) and x_t = √ᾱ_i x_0 + σ_i ε, with λ_i = log(ᾱ_i / σ_i²) ``(B,)``."""
    ab = check_alpha_bar_grid(alpha_bar).to(x0.device)
    i = uniform_steps(x0.shape[0], len(ab) - 1, generator=generator, device=x0.device)
    ab_i = ab[i].to(x0)
    xt, eps = q_sample(x0, ab_i, generator=generator)
    sigma = append_dims((1 - ab_i).sqrt(), x0)
    return _Draw(xt, eps, log_snr_from_alpha_bar(ab[i]), sigma)


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(pred.shape)}, expected {tuple(target.shape)}"
        )
    return ((pred - target) ** 2).mean()


def x0_loss(
    denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None, *, alpha_bar: Tensor
) -> Tensor:
    """E_{i, x_0, ε} ‖x̂_0 − x_0‖², i uniform on 1..T: the unweighted x_0 loss (``eq-implied-weights``, w = 1).

    ``x0: (B, ...)``, ``alpha_bar: (T + 1,)`` the grid (ᾱ_0 = 1). Returns a scalar, the mean over
    examples and dimensions.
    """
    d = _draw_on_grid(x0, alpha_bar, generator)
    return _mse(denoiser(d.xt, d.log_snr), x0)


def eps_loss(
    denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None, *, alpha_bar: Tensor
) -> Tensor:
    """DDPM's L_simple = E_{i, x_0, ε} ‖ε̂ − ε‖², i uniform on 1..T (Ho et al. 2020, eq. 14).

    In x_0 units the weight is SNR (``eq-implied-weights``). ε̂ by
    :func:`~diffusion_lessons.denoisers.denoiser.eps_from` (an ε-network's own output). Shapes as
    in :func:`x0_loss`; returns a scalar.
    """
    d = _draw_on_grid(x0, alpha_bar, generator)
    return _mse(eps_from(denoiser, d.xt, d.log_snr), d.eps)


def score_loss(
    denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None, *, alpha_bar: Tensor
) -> Tensor:
    """Denoising score matching, E_{i, x_0, ε} ‖ŝ − ∇ log q(x_t | x_0)‖², target −ε/σ_i (Vincent 2011).

    In x_0 units the weight is SNR/σ² (``eq-implied-weights``). ŝ by
    :func:`~diffusion_lessons.denoisers.denoiser.score_from` (a score network's own output).
    Shapes as in :func:`x0_loss`; returns a scalar.
    """
    d = _draw_on_grid(x0, alpha_bar, generator)
    return _mse(score_from(denoiser, d.xt, d.log_snr), -d.eps / d.sigma)


def eps_loss_continuous(x0: Tensor, denoiser: Denoiser, schedule, t: Tensor, eps: Tensor) -> Tensor:
    """L_simple in continuous time, per example: ‖ε − ε̂(x_t, λ(t))‖² summed over dimensions, ``(B,)``.

    x_t = √ᾱ x_0 + σ ε with ᾱ = sigmoid(λ), σ² = sigmoid(−λ), λ = ``schedule.log_snr(t)``
    (``eq-forward-marginal``); ``x0, eps: (B, ...)``, ``t: (B,)`` in [0, 1]; ``schedule`` is
    anything with ``log_snr(t)``. Its mean over t ∼ U(0, 1) and ε is the ε loss with the weight SNR
    on the x_0 error (``eq-implied-weights``); the arguments are those of
    :func:`~diffusion_lessons.objectives.continuous_time.continuous_diffusion_loss`, which weighs
    the same error by −½ λ′(t) instead.
    """
    if eps.shape != x0.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)} but x0 has shape {tuple(x0.shape)}")
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape (B,) = ({x0.shape[0]},), got {tuple(t.shape)}")
    lam = schedule.log_snr(t)
    xt = q_sample(x0, torch.sigmoid(lam.double()), eps=eps)[0]
    eps_hat = eps_from(denoiser, xt, lam)
    if eps_hat.shape != x0.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(eps_hat.shape)}, expected {tuple(x0.shape)}"
        )
    return sum_except_batch((eps - eps_hat.to(eps.dtype)).pow(2))
