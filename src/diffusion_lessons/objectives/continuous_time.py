"""The variational bound of a diffusion model on a schedule λ(t), t ∈ [0, 1] (chapter "Learning the
noise schedule"; Kingma et al. 2021, VDM).

With z_t = √ᾱ_t x + σ_t ε (``eq-forward-marginal``; VDM's α_t is our √ᾱ_t) and a denoiser
D(z_t, λ_t) → x̂ (:mod:`~diffusion_lessons.denoisers.denoiser`), the diffusion part of the
negative ELBO is

- discrete time, T steps, s = (i − 1)/T, t = i/T (label ``eq-vlb-discrete``):
  L_T(x) = T E_{ε, i∼U{1..T}} [½ (SNR(s) − SNR(t)) ‖x − x̂(z_t; λ_t)‖²]
  (:func:`discrete_diffusion_loss`, a draw of T · :func:`~diffusion_lessons.objectives.nelbo.denoising_kl`)
- continuous time (label ``eq-vlb-continuous``):
  L_∞(x) = −½ E_{ε, t∼U(0,1)} [λ′(t) e^{λ(t)} ‖x − x̂(z_t; λ_t)‖²]
  (:func:`continuous_diffusion_loss`, a draw of :func:`~diffusion_lessons.objectives.nelbo.diffusion_integrand`).

Every function returns the *per-example* estimate ``(B,)``: its mean is the loss, its spread is the
Monte Carlo error that the chapter measures. A *schedule* is anything with a ``log_snr(t)`` method
(:class:`~diffusion_lessons.noise.schedules.Schedule`,
:class:`~diffusion_lessons.noise.learned_schedule.MonotoneLogSNR`).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from diffusion_lessons.checks import check_positive_int, check_step, promote_coefficient
from diffusion_lessons.denoisers.denoiser import Denoiser, alpha_sigma
from diffusion_lessons.noise.schedules import LogSNRSchedule, log_snr_and_derivative
from diffusion_lessons.noise.time_sampling import sample_steps, sample_times
from diffusion_lessons.objectives import nelbo

# ---------------------------------------------------------------------------------------------
# The log-SNR and its derivative


def snr_derivative(schedule: LogSNRSchedule, t: Tensor, *, create_graph: bool = False) -> Tensor:
    """SNR′(t) = SNR(t) · λ′(t) (negative for a schedule that adds noise): ``(B,)``."""
    lam, dlam = log_snr_and_derivative(schedule, t, create_graph=create_graph)
    return torch.exp(lam) * dlam


# ---------------------------------------------------------------------------------------------
# The diffusion loss


def _denoised(x0: Tensor, denoiser: Denoiser, lam: Tensor, eps: Tensor) -> Tensor:
    """x̂ = D(z_t, λ) at z_t = √ᾱ x + σ ε with the given noise ``eps``."""
    if eps.shape != x0.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)} but x0 has shape {tuple(x0.shape)}")
    # z_t = √ᾱ x + σ ε (eq-forward-marginal) with √ᾱ, σ from λ directly, as the denoiser forms
    # them: σ = √(1 − ᾱ) would cancel at large λ in float32 and disagree with the denoiser's σ.
    a, s = alpha_sigma(lam, x0)
    z = a * x0 + s * eps
    x0_hat = denoiser(z, lam)
    if x0_hat.shape != x0.shape:
        raise ValueError(f"x0_hat returned {tuple(x0_hat.shape)}, expected {tuple(x0.shape)}")
    return x0_hat


def continuous_diffusion_loss(
    x0: Tensor,
    denoiser: Denoiser,
    schedule: LogSNRSchedule,
    t: Tensor,
    eps: Tensor,
    *,
    create_graph: bool = False,
) -> Tensor:
    """Per-example −½ λ′(t) e^{λ(t)} ‖x − x̂(z_t; λ_t)‖² (label ``eq-vlb-continuous``): ``(B,)``.

    ``x0, eps: (B, ...)``, ``t: (B,)`` (from :func:`~diffusion_lessons.noise.time_sampling.sample_times`).
    Its mean over t ∼ U(0, 1) and ε is L_∞(x). ``create_graph=True`` lets gradients reach the
    schedule through λ(t) and λ′(t).

    For a denoiser that wraps an ε-model (:class:`~diffusion_lessons.denoisers.denoiser.FromEps`),
    x − x̂ = (σ/√ᾱ)(ε̂ − ε) and e^λ σ²/ᾱ = 1, so this is also −½ λ′(t) ‖ε − ε̂‖², VDM's ε-form
    (the identity of chapter 6's exercise; a test checks it, there is no second implementation).
    """
    lam, dlam = log_snr_and_derivative(schedule, t, create_graph=create_graph)
    lam, dlam = lam.to(x0.dtype), dlam.to(x0.dtype)
    x0_hat = _denoised(x0, denoiser, lam, eps)
    return nelbo.diffusion_integrand(x0, x0_hat, lam, dlam)


def discrete_diffusion_loss(
    x0: Tensor, denoiser: Denoiser, schedule: LogSNRSchedule, T: int, i: Tensor, eps: Tensor
) -> Tensor:
    """Per-example T · ½ (SNR(s) − SNR(t)) ‖x − x̂(z_t; λ_t)‖², s = (i−1)/T, t = i/T: ``(B,)``.

    Label ``eq-vlb-discrete``; ``i: (B,)`` integer steps in 1..T (from
    :func:`~diffusion_lessons.noise.time_sampling.sample_steps`), ``x0, eps: (B, ...)``. The step
    term is :func:`~diffusion_lessons.objectives.nelbo.denoising_kl` at λ(s) and λ(t), with its
    accurate SNR gap; λ(0) of the schedule must be finite (z_0 is a latent here, not the data).
    """
    check_positive_int(T, name="T")
    i = check_step(i, T)
    lam_s = schedule.log_snr((i - 1).double() / T)
    lam_t = schedule.log_snr(i.double() / T)
    x0_hat = _denoised(x0, denoiser, lam_t.to(x0.dtype), eps)
    return T * nelbo.denoising_kl(x0, x0_hat, lam_s, lam_t)


def continuous_loss_estimate(
    x0: Tensor,
    denoiser: Denoiser,
    schedule: LogSNRSchedule,
    *,
    sampler: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """One Monte Carlo draw of L_∞ per example: ``(B,)`` (``eq-vlb-continuous``).

    Draws the times with ``sampler`` (:func:`~diffusion_lessons.noise.time_sampling.sample_times`),
    then ε ∼ N(0, I), then calls :func:`continuous_diffusion_loss`.
    """
    t = sample_times(x0.shape[0], sampler=sampler, generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return continuous_diffusion_loss(x0, denoiser, schedule, t.to(x0.device), eps)


def discrete_loss_estimate(
    x0: Tensor,
    denoiser: Denoiser,
    schedule: LogSNRSchedule,
    T: int,
    *,
    sampler: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """One Monte Carlo draw of L_T per example: ``(B,)`` (``eq-vlb-discrete``).

    Draws the steps with ``sampler`` (:func:`~diffusion_lessons.noise.time_sampling.sample_steps`),
    then ε ∼ N(0, I), then calls :func:`discrete_diffusion_loss`.
    """
    i = sample_steps(x0.shape[0], T, sampler=sampler, generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return discrete_diffusion_loss(x0, denoiser, schedule, T, i.to(x0.device), eps)


# ---------------------------------------------------------------------------------------------
# The two endpoint terms, so that the whole bound is −log p(x) ≤ prior + reconstruction + L


def _endpoints(schedule: LogSNRSchedule, device) -> tuple[Tensor, Tensor]:
    """(λ(0), λ(1)) of the schedule, float64 (both must be finite)."""
    ends = schedule.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64, device=device))
    if not torch.isfinite(ends).all():
        raise ValueError(
            f"the schedule has λ(0) = {ends[0].item()} and λ(1) = {ends[1].item()}; both must "
            "be finite (use one with finite endpoints, e.g. schedules.from_endpoints)"
        )
    return ends[0], ends[1]


def gaussian_reconstruction_loss(x0: Tensor, log_snr_0: Tensor | float) -> Tensor:
    """E_ε[−log p(x | z_0)] for the decoder p(x | z_0) = N(x; z_0/√ᾱ_0, e^{−λ_0} I): ``(B,)``.

    The expectation, in closed form, of
    :func:`~diffusion_lessons.objectives.nelbo.gaussian_reconstruction_nll` with x̂ = z_0/√ᾱ_0 and
    log_scale = −λ_0/2: z_0/√ᾱ_0 − x = e^{−λ_0/2} ε, so it is (D/2)(log 2π − λ_0 + 1) exactly
    (a term of ``eq-vlb-total``). It falls as λ_0 grows, while L_∞ grows: the two balance.
    """
    d = x0[0].numel()
    lam = promote_coefficient(log_snr_0, x0)  # a Python float stays a double
    return (0.5 * d * (math.log(2 * math.pi) - lam + 1.0)).to(x0).expand(x0.shape[0])


def negative_elbo(
    x0: Tensor,
    denoiser: Denoiser,
    schedule: LogSNRSchedule,
    t: Tensor,
    eps: Tensor,
    *,
    create_graph: bool = False,
) -> Tensor:
    """Per-example prior + reconstruction + L_∞ estimate: an upper bound on −log p(x) in nats ``(B,)``.

    ``eq-vlb-total`` for continuous data: :func:`~diffusion_lessons.objectives.nelbo.prior_kl` at
    λ(1), the Gaussian decoder's expected loss :func:`gaussian_reconstruction_loss` at λ(0), and
    :func:`continuous_diffusion_loss` at ``t: (B,)``, ``eps: (B, ...)``.
    """
    lam_0, lam_1 = _endpoints(schedule, x0.device)
    diff = continuous_diffusion_loss(x0, denoiser, schedule, t, eps, create_graph=create_graph)
    return nelbo.prior_kl(x0, lam_1) + gaussian_reconstruction_loss(x0, lam_0) + diff


def vdm_terms(
    denoiser: Denoiser,
    x0: Tensor,
    schedule: LogSNRSchedule,
    *,
    bins: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """VDM's negative ELBO of images (Kingma et al. 2021), term by term, in nats: each ``(B,)``.

    ``prior`` = :func:`~diffusion_lessons.objectives.nelbo.prior_kl` at λ(1); ``reconstruction`` =
    :func:`~diffusion_lessons.objectives.nelbo.discretized_reconstruction_nll` of the decoder
    N(z_0/√ᾱ_0, e^{−λ_0}) at one draw of z_0; ``diffusion`` = one draw of
    :func:`continuous_diffusion_loss` at t ∼ U(0, 1); ``total`` their sum (``eq-vlb-total``).
    ``x0: (B, C, H, W)`` in [−1, 1] on ``bins`` levels; the noise of z_0 is drawn first, then t,
    then ε. λ(0) and λ(1) must be finite.
    """
    lam_0, lam_1 = _endpoints(schedule, x0.device)
    decoder = functools.partial(nelbo.discretized_reconstruction_nll, bins=bins)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    a0, s0 = alpha_sigma(lam_0, x0)
    z0 = a0 * x0 + s0 * noise
    recon = decoder(x0, z0 / a0, (-0.5 * lam_0).item())
    t = sample_times(x0.shape[0], generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    diffusion = continuous_diffusion_loss(x0, denoiser, schedule, t, eps)
    prior = nelbo.prior_kl(x0, lam_1)
    return {
        "prior": prior,
        "reconstruction": recon,
        "diffusion": diffusion,
        "total": prior + recon + diffusion,
    }
