"""The probability-flow ODE: deterministic sampling and exact likelihoods (chapter 8).

Every SDE of :mod:`~diffusion_lessons.sampling.sde` has an ODE with the same marginals p_t
(Song et al. 2021, eq. 13):

    dx/dt = v(x, t) = f(x, t) − ½ g(t)² ∇ log p_t(x)          (:func:`probability_flow_velocity`)

Integrated from t = 1 to t ≈ 0 it maps prior noise to data deterministically: fixed steps by
:func:`euler` (one denoiser call per step) or :func:`heun` (two), adaptively by
:func:`solve_adaptive` (``torchdiffeq.odeint``, which reports its number of function
evaluations). :func:`ddim` is DDIM with η = 0 (Song, Meng & Ermon 2021, eq. 12): in the
variables y = x/√ᾱ and s = σ/√ᾱ = e^{−λ/2} the ODE reads dy/ds = ε̂, and a DDIM step is its
Euler step in s.

The ODE is also a change of variables, so log p_t(x(t)) changes at the rate −∇·v
(the instantaneous change of variables, Chen et al. 2018): integrating the divergence along the
path from the data to t = 1 gives log p_0(x) = log p_1(x(1)) + ∫ ∇·v dt
(:func:`log_likelihood_exact`, with
:func:`~diffusion_lessons.divergence.exact_divergence`;
:func:`log_likelihood_hutchinson`, with one fixed probe per point, Grathwohl et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torchdiffeq
from torch import Tensor

from diffusion_lessons.checks import check_time
from diffusion_lessons.denoisers.denoiser import Denoiser, alpha_sigma
from diffusion_lessons.divergence import exact_divergence, hutchinson_divergence
from diffusion_lessons.sampling.langevin import check_log_snr_ladder, check_output_shape
from diffusion_lessons.sampling.sde import SDE, Callback, check_times, marginal_score


def probability_flow_velocity(sde: SDE, denoiser: Denoiser, x: Tensor, t: Tensor | float) -> Tensor:
    """v(x, t) = f(x, t) − ½ g(t)² ∇ log p_t(x), the probability-flow ODE's velocity: ``(B, ...)``."""
    g2 = (sde.diffusion(t) ** 2).to(x)
    return sde.drift(x, t) - 0.5 * g2 * marginal_score(sde, denoiser, x, t)


# ---------------------------------------------------------------------------------------------
# Fixed steps


@torch.no_grad()
def euler(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    times: Tensor,
    *,
    callback: Callback | None = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE over ``times`` (decreasing): ``(B, ...)``.

    x ← x + (t′ − t) v(x, t), one denoiser call per step; ``callback(k, t′, x)`` after each.
    """
    ts = check_times(times)
    for k in range(len(ts) - 1):
        t, t_next = ts[k], ts[k + 1]
        x = x + (t_next - t).item() * probability_flow_velocity(sde, denoiser, x, t)
        if callback is not None:
            callback(k + 1, t_next.item(), x)
    return x


@torch.no_grad()
def heun(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    times: Tensor,
    *,
    callback: Callback | None = None,
) -> Tensor:
    """Heun's method (the explicit trapezoidal rule, second order) on the ODE: ``(B, ...)``.

    x̃ = x + h v(x, t), then x ← x + (h/2) [v(x, t) + v(x̃, t′)] with h = t′ − t: two denoiser
    calls per step (Karras et al. 2022, Algorithm 1). A step that ends where s(t′) = 0 (t′ = 0
    on a schedule with λ(0) = ∞) has no score there and stays an Euler step.
    """
    ts = check_times(times)
    for k in range(len(ts) - 1):
        t, t_next = ts[k], ts[k + 1]
        h = (t_next - t).item()
        v = probability_flow_velocity(sde, denoiser, x, t)
        x_euler = x + h * v
        if sde.marginal(t_next)[1].item() > 0:
            v_next = probability_flow_velocity(sde, denoiser, x_euler, t_next)
            x = x + 0.5 * h * (v + v_next)
        else:
            x = x_euler
        if callback is not None:
            callback(k + 1, t_next.item(), x)
    return x


@torch.no_grad()
def ddim(
    denoiser: Denoiser,
    x: Tensor,
    log_snrs: Tensor,
    *,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """DDIM with η = 0 (Song, Meng & Ermon 2021, eq. 12) from ``x: (B, ...)`` at λ_1: ``(B, ...)``.

    ``log_snrs: (L,)`` increases strictly from λ_1 (the start, noisiest) to λ_L (which may be
    +∞: the data). Each step λ → λ′ computes x̂_0 = D(x, λ) and ε̂ = (x − √ᾱ x̂_0)/σ and moves
    to x′ = √ᾱ′ x̂_0 + σ′ ε̂ (``eq-forward-marginal`` with the predicted pair): L − 1 denoiser
    calls. In y = x/√ᾱ, s = e^{−λ/2} this is y′ = y + (s′ − s) ε̂, Euler's method on the
    probability-flow ODE dy/ds = ε̂. ``callback(k, x)`` sees the iterate after step k.
    """
    lam = check_log_snr_ladder(log_snrs).to(x.device)
    if torch.isinf(lam[:-1]).any():
        raise ValueError(f"log_snrs may be infinite only at its last entry, got {lam.tolist()}")
    for k in range(len(lam) - 1):
        level = lam[k].expand(x.shape[0])
        a, s = alpha_sigma(level, x)
        x0_hat = check_output_shape(denoiser(x, level), x, name="denoiser")
        eps_hat = (x - a * x0_hat) / s
        a_next, s_next = alpha_sigma(lam[k + 1], x)
        x = a_next * x0_hat + s_next * eps_hat
        if callback is not None:
            callback(k + 1, x)
    return x


# ---------------------------------------------------------------------------------------------
# Adaptive steps (torchdiffeq)


def _land_on(ts: Tensor, method: str) -> dict | None:
    """torchdiffeq's adaptive solvers step past the end time and interpolate back; making the
    end a ``step_t`` makes the last step land on it, so the velocity is never read beyond."""
    adaptive = method in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
    return {"step_t": ts} if adaptive else None


def _inside(t: Tensor, ts: Tensor) -> Tensor:
    """t in float64, moved onto [min ts, max ts]: torchdiffeq's first-step heuristic may probe a
    trial time beyond the interval, where the schedule is not defined."""
    return t.double().clamp(ts.min().item(), ts.max().item())


class ODESolution(NamedTuple):
    """The end point of an ODE solve and the number of function (denoiser) evaluations it took."""

    x: Tensor
    nfe: int


@torch.no_grad()
def solve_adaptive(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    *,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
) -> ODESolution:
    """Integrate the probability-flow ODE from ``t_start`` to ``t_end`` with ``torchdiffeq.odeint``.

    ``method``, ``rtol`` and ``atol`` are torchdiffeq's (Dormand–Prince 5(4) by default, the
    solver of Song et al. 2021 through scipy's RK45, with their tolerances 1e-5). Returns
    :class:`ODESolution` (x at ``t_end``, the number of velocity evaluations).
    """
    ts = check_times(torch.tensor([t_start, t_end], dtype=torch.float64), name="(t_start, t_end)")
    nfe = 0

    def velocity(t: Tensor, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return probability_flow_velocity(sde, denoiser, y, _inside(t, ts))

    path = torchdiffeq.odeint(
        velocity, x, ts.to(x), rtol=rtol, atol=atol, method=method, options=_land_on(ts, method)
    )
    return ODESolution(path[-1], nfe)


# ---------------------------------------------------------------------------------------------
# The likelihood by the instantaneous change of variables


class ODELogLikelihood(NamedTuple):
    """log p_{t_min}(x) per point ``(B,)``, the end point x(1), and the number of evaluations."""

    log_prob: Tensor
    x_end: Tensor
    nfe: int


Divergence = Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]


def _log_likelihood(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    prior_log_prob: Callable[[Tensor], Tensor],
    divergence: Divergence,
    t_min: float,
    tolerances: tuple[float, float],
) -> ODELogLikelihood:
    ts = check_times(torch.tensor([1.0, t_min], dtype=torch.float64), name="t_min").flip(0)
    nfe = 0

    def augmented(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        seen = []  # the velocity that the divergence evaluates, kept: one denoiser call

        def velocity(z: Tensor) -> Tensor:
            seen.append(probability_flow_velocity(sde, denoiser, z, _inside(t, ts)))
            return seen[-1]

        div = divergence(velocity, state[0])
        return seen[-1].detach(), div.detach()

    start = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    rtol, atol = tolerances
    with torch.no_grad():  # the divergences switch autograd on where they need it
        xs, delta = torchdiffeq.odeint(
            augmented, start, ts.to(x), rtol=rtol, atol=atol, options=_land_on(ts, "dopri5")
        )
    x_end = xs[-1]
    return ODELogLikelihood(prior_log_prob(x_end) + delta[-1], x_end, nfe)


def log_likelihood_exact(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    prior_log_prob: Callable[[Tensor], Tensor],
    *,
    t_min: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> ODELogLikelihood:
    """log p_{t_min}(x) of the model's ODE at ``x: (B, D...)``, exact divergence: ``(B,)``.

    Solves d/dt (x, Δ) = (v(x, t), ∇·v(x, t)) from (x, 0) at ``t_min`` to t = 1 with dopri5
    (``rtol``, ``atol``); then log p_{t_min}(x) = ``prior_log_prob(x(1))`` + Δ(1). The
    divergence is :func:`~diffusion_lessons.divergence.exact_divergence`, D
    backward passes per evaluation: for small D.
    """
    t_min = check_time(t_min, name="t_min").item()
    return _log_likelihood(sde, denoiser, x, prior_log_prob, exact_divergence, t_min, (rtol, atol))


def log_likelihood_hutchinson(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    prior_log_prob: Callable[[Tensor], Tensor],
    probe: Tensor,
    *,
    t_min: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> ODELogLikelihood:
    """As :func:`log_likelihood_exact`, with Hutchinson's divergence vᵀ (∂v/∂x) v and one
    ``probe`` v per point (shape of ``x``), held fixed along the path (Grathwohl et al. 2019).

    One vector–Jacobian product per evaluation in any dimension; with E[v vᵀ] = I the
    estimate of the integral, and so of log p, is unbiased over the probe (up to the solver's
    error, which depends on the probe).
    """
    if probe.shape != x.shape:
        raise ValueError(
            f"probe has shape {tuple(probe.shape)} but x has shape {tuple(x.shape)}; "
            "they must be equal"
        )
    t_min = check_time(t_min, name="t_min").item()

    def divergence(f: Callable[[Tensor], Tensor], y: Tensor) -> Tensor:
        return hutchinson_divergence(f, y, probe)

    return _log_likelihood(sde, denoiser, x, prior_log_prob, divergence, t_min, (rtol, atol))
