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
(:class:`~diffusion_lessons.schedules.Schedule`,
:class:`~diffusion_lessons.learned_schedule.MonotoneLogSNR`). A *denoiser* is a callable
``x0_hat(z (B, D), log_snr (B,)) -> (B, D)``; conditioning on λ rather than t makes one model usable
under every schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from .checks import (
    append_dims,
    as_coefficient,
    check_choice,
    check_positive_int,
    check_step,
    promote_coefficient,
)
from .forward import q_sample
from .parameterizations import eps_to_x0

Denoiser = Callable[[Tensor, Tensor], Tensor]
SAMPLERS = ("uniform", "low_discrepancy")


class LogSNRSchedule(Protocol):
    """A schedule: anything with a ``log_snr(t)`` method (:class:`.schedules.Schedule`, say)."""

    def log_snr(self, t: Tensor) -> Tensor: ...


# ---------------------------------------------------------------------------------------------
# Time samplers


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def uniform_times(n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """n independent times t_b ∼ U(0, 1): ``(n,)`` float64."""
    check_positive_int(n, name="n")
    return torch.rand(n, generator=generator, dtype=torch.float64, device=_device(generator))


def low_discrepancy_times(n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """VDM's low-discrepancy times t_b = (u + b/n) mod 1, b = 0..n−1, one u ∼ U(0, 1): ``(n,)``.

    Each t_b alone is U(0, 1), so any average over the batch stays unbiased; together they cover
    [0, 1] evenly (one per interval of length 1/n), which lowers the variance of the batch mean.
    """
    check_positive_int(n, name="n")
    dev = _device(generator)
    u = torch.rand((), generator=generator, dtype=torch.float64, device=dev)
    return torch.remainder(u + torch.arange(n, dtype=torch.float64, device=dev) / n, 1.0)


def sample_times(
    n: int, *, sampler: str = "uniform", generator: torch.Generator | None = None
) -> Tensor:
    """Times from ``sampler`` ∈ {"uniform", "low_discrepancy"}: ``(n,)`` float64 in [0, 1)."""
    check_choice(sampler, SAMPLERS, name="time sampler")
    fn = uniform_times if sampler == "uniform" else low_discrepancy_times
    return fn(n, generator=generator)


def sample_steps(
    n: int, T: int, *, sampler: str = "uniform", generator: torch.Generator | None = None
) -> Tensor:
    """Discrete steps i ∈ {1..T}, each uniform: i = ⌊t T⌋ + 1 with t from :func:`sample_times`."""
    return steps_from_times(sample_times(n, sampler=sampler, generator=generator), T)


def steps_from_times(t: Tensor, T: int) -> Tensor:
    """The step i = ⌊t T⌋ + 1 ∈ {1..T} whose interval [(i−1)/T, i/T) holds t: ``(B,)`` long.

    Maps U(0, 1) to U{1..T}; with the same t, L_T and L_∞ use common random numbers.
    """
    check_positive_int(T, name="T")
    return torch.clamp(torch.floor(t * T).long() + 1, min=1, max=T)


# ---------------------------------------------------------------------------------------------
# Derivative of the SNR


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

    ``x0, eps: (B, D)``, ``t: (B,)`` (from :func:`sample_times`). Its mean over t ∼ U(0, 1) and ε is
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

    Label ``eq-vlb-discrete``; ``i: (B,)`` integer steps in 1..T (from :func:`sample_steps`). The
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


def prior_loss(x0: Tensor, log_snr_1: Tensor | float) -> Tensor:
    """KL(q(z_1 | x) ‖ N(0, I)) with q(z_1 | x) = N(√ᾱ_1 x, σ_1² I): ``(B,)`` (a term of ``eq-vlb-total``).

    Per dimension ½ (ᾱ_1 x² + σ_1² − 1 − log σ_1²) = ½ ᾱ_1 x² + ½ (−log σ_1² − ᾱ_1). The
    coefficients come from λ_1 in the promoted dtype of λ_1 and x0 (float64 for a Python float),
    then are cast to x0's dtype once, so σ² − 1 − log σ² does not cancel in float32.
    """
    lam = append_dims(as_coefficient(log_snr_1), x0, name="log_snr_1", x_name="x0")
    lam = promote_coefficient(lam, x0)
    ab = torch.sigmoid(lam)
    per_dim_const = 0.5 * (-torch.nn.functional.logsigmoid(-lam) - ab)  # ½ (σ² − 1 − log σ²)
    sq = (x0**2).reshape(x0.shape[0], -1).sum(1)
    d = x0[0].numel()
    return 0.5 * ab.to(x0).reshape(-1) * sq + (d * per_dim_const).to(x0).reshape(-1)


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
    return prior_loss(x0, ends[1]) + gaussian_reconstruction_loss(x0, ends[0]) + diff


# ---------------------------------------------------------------------------------------------
# Denoisers


def x0_from_eps_model(model: nn.Module, *, dtype: torch.dtype | None = None) -> Denoiser:
    """Wrap an ε-model ``model(z (B, D), λ (B,))`` as the denoiser x̂ = (z − σ ε̂)/√ᾱ (eps_to_x0)."""

    def x0_hat(z: Tensor, lam: Tensor) -> Tensor:
        p = next(model.parameters())
        eps_hat = model(z.to(p.dtype), lam.to(p.dtype)).to(z.dtype if dtype is None else dtype)
        return eps_to_x0(z, eps_hat, torch.sigmoid(promote_coefficient(lam, z)))

    return x0_hat


def gaussian_optimal_x0(data_var: float) -> Denoiser:
    """The exact E[x | z_t] for data x ∼ N(0, v I): x̂ = √ᾱ v z / (ᾱ v + σ²)."""

    def x0_hat(z: Tensor, lam: Tensor) -> Tensor:
        lam = promote_coefficient(append_dims(lam, z, name="log_snr", x_name="z"), z)
        ab = torch.sigmoid(lam)
        return (ab.sqrt() * data_var / (ab * data_var + 1.0 - ab)).to(z) * z

    return x0_hat


def gaussian_continuous_loss_exact(
    data_var: float, dim: int, log_snr_max: float, log_snr_min: float
) -> float:
    """L_∞ of the optimal denoiser for x ∼ N(0, v I_D): (D/2) log((1 + v SNR_max)/(1 + v SNR_min)).

    Its error E‖x − x̂‖² at SNR u is D v/(1 + v u), and L_∞ = ½ ∫_{SNR_min}^{SNR_max} of it du.
    """
    return (
        0.5
        * dim
        * (
            math.log1p(data_var * math.exp(log_snr_max))
            - math.log1p(data_var * math.exp(log_snr_min))
        )
    )


def gaussian_discrete_loss_exact(data_var: float, dim: int, log_snr: Tensor) -> float:
    """L_T of the optimal denoiser for x ∼ N(0, v I_D), given λ at the T + 1 grid points ``(T + 1,)``.

    L_T = ½ Σ_i (SNR_{i−1} − SNR_i) · D v/(1 + v SNR_i): an upper Riemann sum of L_∞'s integral.
    """
    snr = torch.exp(log_snr.double())
    return float(0.5 * ((snr[:-1] - snr[1:]) * dim * data_var / (1 + data_var * snr[1:])).sum())


# ---------------------------------------------------------------------------------------------
# Symbolic derivations shown on the page and re-run by the tests


def kl_term_snr_derivation() -> dict:
    """One KL term of the discrete bound in SNR form (label ``eq-vlb-kl-snr``), with sympy.

    q(z_s | z_t, x) and p(z_s | z_t) = q(z_s | z_t, x = x̂) share the variance σ_Q² and their means
    differ by c (x − x̂) with c = √ᾱ_s σ²_{t|s} / σ_t², σ²_{t|s} = σ_t² − (ᾱ_t/ᾱ_s) σ_s²; so the KL is
    ½ c²/σ_Q² ‖x − x̂‖². Returns ``{"weight": c²/σ_Q², "snr_gap": SNR(s) − SNR(t), ...}``.
    """
    import sympy as sp

    ab_s, ab_t = sp.symbols(r"\bar{\alpha}_s \bar{\alpha}_t", positive=True)
    sig2_s, sig2_t = 1 - ab_s, 1 - ab_t
    sig2_ts = sig2_t - ab_t / ab_s * sig2_s
    var_q = sig2_ts * sig2_s / sig2_t
    c = sp.sqrt(ab_s) * sig2_ts / sig2_t
    weight = c**2 / var_q
    snr_gap = ab_s / sig2_s - ab_t / sig2_t
    return {"alpha_bar_s": ab_s, "alpha_bar_t": ab_t, "weight": weight, "snr_gap": snr_gap}


def invariance_derivation() -> dict:
    """L_∞'s integrand for x ∼ N(0, v I_D) under an ARBITRARY schedule λ(t) (``eq-vlb-invariance``).

    With error D v/(1 + v SNR) the integrand −½ SNR′(t) D v/(1 + v SNR(t)) is the t-derivative of
    F(λ(t)) = −(D/2) log(1 + v e^{λ(t)}), a function of λ alone, so ∫_0^1 = F(λ(1)) − F(λ(0)).
    Returns ``{"integrand", "antiderivative", "t", "lam"}`` (``lam`` an undefined sympy function).
    """
    import sympy as sp

    t = sp.Symbol("t", real=True)
    v, d = sp.symbols("v D", positive=True)
    lam = sp.Function("lambda")(t)
    snr = sp.exp(lam)
    integrand = -sp.Rational(1, 2) * sp.diff(snr, t) * d * v / (1 + v * snr)
    antiderivative = -d / 2 * sp.log(1 + v * snr)
    return {"integrand": integrand, "antiderivative": antiderivative, "t": t, "lam": lam}


def continuous_limit_derivation() -> dict:
    """T (SNR(t − 1/T) − SNR(t)) → −SNR′(t) as T → ∞, for a symbolic SNR (``eq-vlb-continuous``)."""
    import sympy as sp

    t, T = sp.symbols("t T", positive=True)
    lmax, lmin = sp.symbols(r"\lambda_{max} \lambda_{min}", real=True)
    snr = sp.Lambda(t, sp.exp(lmax + (lmin - lmax) * t))
    limit = sp.limit(T * (snr(t - 1 / T) - snr(t)), T, sp.oo)
    return {"limit": sp.simplify(limit), "minus_snr_prime": sp.simplify(-sp.diff(snr(t), t))}
