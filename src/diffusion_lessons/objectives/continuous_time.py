"""The variational bound of a diffusion model written through the SNR alone (chapter "Learning the
noise schedule"; Kingma et al. 2021, VDM).

With z_t = √ᾱ_t x + σ_t ε (``eq-forward-marginal``; VDM's α_t is our √ᾱ_t) and a denoiser
x̂_θ(z_t; λ_t) that predicts x, the diffusion part of the negative ELBO is

- discrete time, T steps, s = (i − 1)/T, t = i/T (label ``eq-vlb-discrete``):
  L_T(x) = (T/2) E_{ε, i∼U{1..T}} [(SNR(s) − SNR(t)) ‖x − x̂_θ(z_t; λ_t)‖²]
- continuous time (label ``eq-vlb-continuous``):
  L_∞(x) = −½ E_{ε, t∼U(0,1)} [SNR′(t) ‖x − x̂_θ(z_t; λ_t)‖²],  SNR′(t) = SNR(t) λ′(t).

Every function returns the *per-example* estimate ``(B,)``: its mean is the loss, its spread is the
Monte Carlo error that the chapter measures. A *schedule* is anything with a ``log_snr(t)`` method
(:class:`~diffusion_lessons.noise.schedules.Schedule`,
:class:`~diffusion_lessons.noise.learned_schedule.MonotoneLogSNR`). A *denoiser* is a callable
``x0_hat(z (B, D), log_snr (B,)) -> (B, D)``; conditioning on λ rather than t makes one model usable
under every schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from diffusion_lessons.checks import (
    check_choice,
    check_positive_int,
    check_step,
    promote_coefficient,
)
from diffusion_lessons.denoisers.parameterizations import eps_to_x0
from diffusion_lessons.noise.time_sampling import (
    SAMPLERS,
    _device,
    sample_steps,
    sample_times,
    uniform_times,
)
from diffusion_lessons.objectives.nelbo import prior_kl
from diffusion_lessons.process.forward import q_sample

Denoiser = Callable[[Tensor, Tensor], Tensor]


class LogSNRSchedule(Protocol):
    """A schedule: anything with a ``log_snr(t)`` method (:class:`.schedules.Schedule`, say)."""

    def log_snr(self, t: Tensor) -> Tensor: ...


# ---------------------------------------------------------------------------------------------
# The log-SNR and its derivative


def log_snr_and_derivative(
    schedule: LogSNRSchedule, t: Tensor, *, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """λ(t) and λ′(t) = dλ/dt by autograd, for ``t: (B,)``; both ``(B,)``.

    With ``create_graph=True`` both stay differentiable, so gradients reach a learned schedule;
    without it they are returned detached (enough to train the denoiser under a fixed schedule).
    """
    t = t.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        lam = schedule.log_snr(t)
        (dlam,) = torch.autograd.grad(
            lam.sum(), t, create_graph=create_graph, retain_graph=create_graph
        )
    if not create_graph:  # evaluation: no graph kept (gradients reach the model through z only)
        return lam.detach(), dlam
    return lam, dlam


def snr_derivative(schedule: LogSNRSchedule, t: Tensor, *, create_graph: bool = False) -> Tensor:
    """SNR′(t) = SNR(t) · λ′(t) (negative for a schedule that adds noise): ``(B,)``."""
    lam, dlam = log_snr_and_derivative(schedule, t, create_graph=create_graph)
    return torch.exp(lam) * dlam


# ---------------------------------------------------------------------------------------------
# The diffusion loss


def _noised(x0: Tensor, lam: Tensor, eps: Tensor) -> Tensor:
    if eps.shape != x0.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)} but x0 has shape {tuple(x0.shape)}")
    return q_sample(x0, torch.sigmoid(lam), eps=eps)[0]


def _sq_error(x0: Tensor, x0_hat: Tensor) -> Tensor:
    if x0_hat.shape != x0.shape:
        raise ValueError(f"x0_hat returned {tuple(x0_hat.shape)}, expected {tuple(x0.shape)}")
    return ((x0 - x0_hat) ** 2).reshape(x0.shape[0], -1).sum(1)


def continuous_diffusion_loss(
    x0: Tensor,
    x0_hat: Denoiser,
    schedule: LogSNRSchedule,
    t: Tensor,
    eps: Tensor,
    *,
    create_graph: bool = False,
) -> Tensor:
    """Per-example −½ SNR′(t) ‖x − x̂_θ(z_t; λ_t)‖² (label ``eq-vlb-continuous``): ``(B,)``.

    ``x0, eps: (B, D)``, ``t: (B,)`` (from :func:`~diffusion_lessons.noise.time_sampling.sample_times`). Its mean over t ∼ U(0, 1) and ε is
    L_∞(x). ``create_graph=True`` lets gradients reach the schedule through λ′(t).
    """
    lam, dlam = log_snr_and_derivative(schedule, t, create_graph=create_graph)
    lam, dlam = lam.to(x0.dtype), dlam.to(x0.dtype)
    z = _noised(x0, lam, eps)
    return -0.5 * torch.exp(lam) * dlam * _sq_error(x0, x0_hat(z, lam))


def discrete_diffusion_loss(
    x0: Tensor, x0_hat: Denoiser, schedule: LogSNRSchedule, T: int, i: Tensor, eps: Tensor
) -> Tensor:
    """Per-example (T/2)(SNR(s) − SNR(t)) ‖x − x̂_θ(z_t; λ_t)‖², s = (i−1)/T, t = i/T: ``(B,)``.

    Label ``eq-vlb-discrete``; ``i: (B,)`` integer steps in 1..T (from :func:`~diffusion_lessons.noise.time_sampling.sample_steps`). The
    SNR difference is computed as SNR(t) · expm1(λ_s − λ_t), accurate when the steps are small.
    """
    check_positive_int(T, name="T")
    i = check_step(i, T)
    s_time, t_time = (i - 1).double() / T, i.double() / T
    lam_s, lam_t = schedule.log_snr(s_time), schedule.log_snr(t_time)
    snr_gap = torch.exp(lam_t) * torch.expm1(lam_s - lam_t)
    lam_t = lam_t.to(x0.dtype)
    z = _noised(x0, lam_t, eps)
    return 0.5 * T * snr_gap.to(x0.dtype) * _sq_error(x0, x0_hat(z, lam_t))


def diffusion_loss(
    x0: Tensor,
    x0_hat: Denoiser,
    schedule: LogSNRSchedule,
    *,
    T: int | None = None,
    sampler: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """One Monte Carlo draw per example of L_T (``T`` an int) or L_∞ (``T=None``): ``(B,)``.

    Draws ε ∼ N(0, I) and the times with ``sampler``, then calls :func:`discrete_diffusion_loss`
    or :func:`continuous_diffusion_loss`.
    """
    n = x0.shape[0]
    if T is None:
        t = sample_times(n, sampler=sampler, generator=generator)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return continuous_diffusion_loss(x0, x0_hat, schedule, t, eps)
    i = sample_steps(n, T, sampler=sampler, generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return discrete_diffusion_loss(x0, x0_hat, schedule, T, i, eps)


def batch_mean_estimates(
    x0: Tensor,
    x0_hat: Denoiser,
    schedule: LogSNRSchedule,
    batch_size: int,
    *,
    sampler: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Split ``x0: (n B, D)`` into n minibatches of size B and return each one's L_∞ estimate ``(n,)``.

    Each minibatch draws its own times with ``sampler`` (one u per minibatch for
    "low_discrepancy"), exactly as a training step would; the variance of the result across
    minibatches is the variance of the minibatch estimator that the chapter compares.
    """
    check_positive_int(batch_size, name="batch_size")
    check_choice(sampler, SAMPLERS, name="time sampler")
    n = x0.shape[0] // batch_size
    if n < 1 or n * batch_size != x0.shape[0]:
        raise ValueError(
            f"x0 must hold a whole number of batches of {batch_size}, got {x0.shape[0]}"
        )
    if sampler == "uniform":
        t = uniform_times(n * batch_size, generator=generator)
    else:
        dev = _device(generator)
        u = torch.rand(n, 1, generator=generator, dtype=torch.float64, device=dev)
        grid = torch.arange(batch_size, dtype=torch.float64, device=dev) / batch_size
        t = torch.remainder(u + grid, 1.0)
        t = t.reshape(-1)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    per_example = continuous_diffusion_loss(x0, x0_hat, schedule, t, eps)
    return per_example.reshape(n, batch_size).mean(1)


# ---------------------------------------------------------------------------------------------
# The two endpoint terms, so that the whole bound is −log p(x) ≤ prior + reconstruction + L


def gaussian_reconstruction_loss(x0: Tensor, log_snr_0: Tensor | float) -> Tensor:
    """E_ε[−log p(x | z_0)] for the decoder p(x | z_0) = N(x; z_0/√ᾱ_0, e^{−λ_0} I): ``(B,)``.

    z_0/√ᾱ_0 − x = e^{−λ_0/2} ε, so the expectation is (D/2)(log 2π − λ_0 + 1) exactly
    (a term of ``eq-vlb-total``). It falls as λ_0 grows, while L_∞ grows: the two balance.
    """
    d = x0[0].numel()
    lam = promote_coefficient(log_snr_0, x0)  # a Python float stays a double
    return (0.5 * d * (math.log(2 * math.pi) - lam + 1.0)).to(x0).expand(x0.shape[0])


def negative_elbo(
    x0: Tensor,
    x0_hat: Denoiser,
    schedule: LogSNRSchedule,
    t: Tensor,
    eps: Tensor,
    *,
    create_graph: bool = False,
) -> Tensor:
    """Per-example prior + reconstruction + L_∞ estimate: an upper bound on −log p(x) in nats ``(B,)``."""
    ends = schedule.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64, device=x0.device))
    diff = continuous_diffusion_loss(x0, x0_hat, schedule, t, eps, create_graph=create_graph)
    return prior_kl(x0, ends[1]) + gaussian_reconstruction_loss(x0, ends[0]) + diff


# ---------------------------------------------------------------------------------------------
# Denoisers


def x0_from_eps_model(model: nn.Module, *, dtype: torch.dtype | None = None) -> Denoiser:
    """Wrap an ε-model ``model(z (B, D), λ (B,))`` as the denoiser x̂ = (z − σ ε̂)/√ᾱ (eps_to_x0)."""

    def x0_hat(z: Tensor, lam: Tensor) -> Tensor:
        p = next(model.parameters())
        eps_hat = model(z.to(p.dtype), lam.to(p.dtype)).to(z.dtype if dtype is None else dtype)
        return eps_to_x0(z, eps_hat, torch.sigmoid(promote_coefficient(lam, z)))

    return x0_hat
