"""Negative ELBO of 8-bit images in bits per dimension, for an ε-predicting model.

Two bounds on −log p(x), each split into the terms the papers report separately (nats per
example, shape ``(B,)``; :func:`to_bits_per_dim` converts):

- discrete time, T steps (Ho et al. 2020, eq. 5): prior KL(q(x_T|x_0) ‖ N(0, I)) + Σ_{i=2}^T
  KL(q(x_{i−1}|x_i, x_0) ‖ p_θ(x_{i−1}|x_i)) + reconstruction −log p_θ(x_0|x_1): :func:`ddpm_terms`;
- continuous time (Kingma et al. 2021, VDM): prior KL(q(z_1|x) ‖ N(0, I)) + reconstruction
  −log p(x|z_0) + diffusion loss L_∞ = −½ E_t[λ'(t) ‖ε − ε̂‖²]: :func:`vdm_terms`.

The model is called as ``model(x_t, t)`` with ``x_t: (B, C, H, W)`` and ``t: (B,)`` in [0, 1], and
returns ε̂. Images are scaled to [−1, 1] on a grid of ``bins`` values (256 for 8-bit data); the
decoders are discretized Gaussians (:func:`~diffusion_lessons.gaussians.discretized_gaussian_log_prob`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_lessons.checks import check_positive_int
from diffusion_lessons.denoisers.parameterizations import eps_to_x0
from diffusion_lessons.gaussians import (
    bits_per_dim,
    discretized_gaussian_log_prob,
    kl_diag_gaussians,
)
from diffusion_lessons.noise.schedules import MAX_BETA, Schedule
from diffusion_lessons.objectives.continuous_time import log_snr_and_derivative
from diffusion_lessons.objectives.discrete_time import prior_kl
from diffusion_lessons.process.forward import q_sample
from diffusion_lessons.process.posterior import posterior_mean_var

Model = Callable[[Tensor, Tensor], Tensor]


def _sum(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def continuous_diffusion_term(
    model: Model, x0: Tensor, t: Tensor, eps: Tensor, schedule: Schedule
) -> Tensor:
    """One-sample estimate of VDM's diffusion loss integrand: −½ λ'(t) ‖ε − ε̂_θ(x_t, t)‖², ``(B,)``.

    With x_t = √ᾱ_t x_0 + σ_t ε. Averaged over t ~ U[0, 1] and ε ~ N(0, I) it is L_∞ =
    −½ ∫_0^1 SNR'(t) ‖x_0 − x̂_θ‖² dt (Kingma et al. 2021, eq. 17; SNR'‖x − x̂‖² = λ'‖ε − ε̂‖²).
    ``x0, eps: (B, ...)``, ``t: (B,)``.
    """
    log_snr = schedule.log_snr(t)
    xt = q_sample(x0, torch.sigmoid(log_snr), eps=eps)[0]
    eps_hat = model(xt, t)
    # at least float32 (a half-precision model's output is widened), never less than the data
    dtype = torch.promote_types(torch.promote_types(eps_hat.dtype, eps.dtype), torch.float32)
    sq = _sum((eps.to(dtype) - eps_hat.to(dtype)) ** 2)
    return -0.5 * log_snr_and_derivative(schedule, t)[1].to(sq) * sq


def vdm_terms(
    model: Model,
    x0: Tensor,
    schedule: Schedule,
    *,
    bins: int = 256,
    t_min: float = 0.0,
    n_t: int = 1,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Continuous-time negative ELBO (Kingma et al. 2021), term by term, in nats: each ``(B,)``.

    ``prior`` = KL(q(z_1|x) ‖ N(0, I)); ``reconstruction`` = −log p(x | z_0) with the discretized
    Gaussian decoder p(x | z_0) = N(z_0 / α_0, σ_0² / α_0²) (α_0 = √ᾱ(t_min), its log-scale is
    −λ(t_min)/2); ``diffusion`` = (1 − t_min) E_{t ~ U[t_min, 1]}[−½ λ'(t)‖ε − ε̂‖²], estimated
    with ``n_t`` draws of (t, ε) per image; ``total`` their sum. λ(t_min) and λ(1) must be finite.
    """
    check_positive_int(n_t, name="n_t")
    lam0, lam1 = schedule.log_snr(torch.tensor([t_min, 1.0], dtype=torch.float64)).tolist()
    if not (abs(lam0) < float("inf") and abs(lam1) < float("inf")):
        raise ValueError(
            f"schedule {schedule.name!r} has λ(t_min={t_min}) = {lam0} and λ(1) = {lam1}; both "
            "must be finite (raise t_min, or use 'linear_log_snr')"
        )
    b, dev = x0.shape[0], x0.device
    prior = prior_kl(x0, torch.sigmoid(torch.tensor(lam1, dtype=torch.float64)))
    ab0 = torch.sigmoid(torch.tensor(lam0, dtype=torch.float64))
    noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=torch.float64)
    z0 = q_sample(x0.double(), ab0, eps=noise)[0]
    log_scale = torch.full_like(z0, -0.5 * lam0)
    recon = -discretized_gaussian_log_prob(x0.double(), z0 / ab0.sqrt(), log_scale, bins=bins)
    diffusion = torch.zeros(b, dtype=torch.float64, device=dev)
    for _ in range(n_t):
        t = t_min + (1.0 - t_min) * torch.rand(b, generator=generator, device=dev)
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        diffusion += continuous_diffusion_term(model, x0, t, eps, schedule).double()
    diffusion = (1.0 - t_min) * diffusion / n_t
    terms = {"prior": prior.double(), "reconstruction": recon, "diffusion": diffusion}
    terms["total"] = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
    return terms


def ddpm_terms(
    model: Model,
    x0: Tensor,
    schedule: Schedule,
    T: int = 1000,
    *,
    bins: int = 256,
    n_t: int | None = 1,
    max_beta: float = MAX_BETA,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Discrete-time negative ELBO with T steps (Ho et al. 2020, eq. 5), in nats: each ``(B,)``.

    Step i sits at t_i = i / T on the grid ``schedule.ddpm_alpha_bar(T, max_beta)``: ᾱ_0 = 1
    (step 0 is the data) and ᾱ_i = ᾱ(i / T), except that each step's β_i is capped at
    ``max_beta`` = 0.999 as in Nichol & Dhariwal (2021). The cap only acts where ᾱ vanishes in one
    step: without it the cosine schedule's last step has ᾱ_T = ᾱ(1), which is 0 up to rounding
    (3.7e-33), and its KL weights ‖ε − ε̂‖² by ½ ᾱ_{T−1}/ᾱ_T ≈ 3e26 (T = 1000).
    ``prior`` = KL(q(x_T|x_0) ‖ N(0, I)) (L_T); ``diffusion`` = Σ_{i=2}^T
    KL(q(x_{i−1}|x_i, x_0) ‖ p_θ(x_{i−1}|x_i)) with p_θ's mean the posterior mean at
    x̂_0 = (x_i − σ_i ε̂)/√ᾱ_i and its variance β̃_i (the L_{1:T−1} terms); summed exactly when
    ``n_t`` is None, else (T − 1) × the mean over ``n_t`` steps i ~ U{2..T} per image;
    ``reconstruction`` = −log p_θ(x_0|x_1), a discretized Gaussian with mean μ_θ(x_1, 1) and
    variance β_1 (L_0); ``total`` their sum.
    """
    check_positive_int(T, name="T")
    if T < 2:
        raise ValueError(f"T must be >= 2, got {T}")
    b, dev = x0.shape[0], x0.device
    ab_all = schedule.ddpm_alpha_bar(T, max_beta).to(dev)
    x = x0.double()

    def kl_at(i: Tensor) -> Tensor:  # i: (B,) long in 2..T
        ab, ab_prev = ab_all[i], ab_all[i - 1]
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        xt = q_sample(x, ab, eps=eps.double())[0]
        eps_hat = model(xt.to(x0.dtype), (i / T).to(x0.dtype)).double()
        x0_hat = eps_to_x0(xt, eps_hat, ab)
        mean_q, var = posterior_mean_var(x, xt, ab, ab_prev)
        mean_p, _ = posterior_mean_var(x0_hat, xt, ab, ab_prev)
        return kl_diag_gaussians(mean_q, var.log(), mean_p, var.log())

    if n_t is None:
        diffusion = sum(kl_at(torch.full((b,), i, device=dev)) for i in range(2, T + 1))
    else:
        check_positive_int(n_t, name="n_t")
        draws = [
            kl_at(torch.randint(2, T + 1, (b,), generator=generator, device=dev))
            for _ in range(n_t)
        ]
        diffusion = (T - 1) * torch.stack(draws).mean(0)
    # L_0: x_1 = √ᾱ_1 x_0 + σ_1 ε, decoder N(μ_θ(x_1, 1), β_1) with μ_θ = (x_1 − β_1/σ_1 ε̂)/√α_1.
    ab1 = ab_all[1]
    eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=torch.float64)
    x1 = q_sample(x, ab1, eps=eps)[0]
    eps_hat = model(x1.to(x0.dtype), torch.full((b,), 1.0 / T, device=dev, dtype=x0.dtype)).double()
    beta1 = 1.0 - ab1
    mean = (x1 - beta1 / (1.0 - ab1).sqrt() * eps_hat) / (1.0 - beta1).sqrt()
    log_scale = torch.full_like(mean, 0.5 * torch.log(beta1).item())
    recon = -discretized_gaussian_log_prob(x, mean, log_scale, bins=bins)
    terms = {"prior": prior_kl(x, ab_all[T]), "reconstruction": recon, "diffusion": diffusion}
    terms["total"] = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
    return terms


def to_bits_per_dim(terms: dict[str, Tensor], num_dims: int) -> dict[str, float]:
    """Average each term over the batch and convert nats → bits/dim (÷ (num_dims · ln 2))."""
    return {k: float(bits_per_dim(v.mean(), num_dims)) for k, v in terms.items()}


@torch.no_grad()
def evaluate_bits_per_dim(
    model: Model,
    images: Tensor,
    schedule: Schedule,
    *,
    method: str = "vdm",
    T: int = 1000,
    bins: int = 256,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Negative ELBO of ``images: (N, C, H, W)`` (in [−1, 1]) in bits/dim, term by term.

    ``method`` is ``"vdm"`` (:func:`vdm_terms`) or ``"ddpm"`` (:func:`ddpm_terms` with ``T``
    steps, one sampled step per image). Runs on the device of ``images``.
    """
    if method not in ("vdm", "ddpm"):
        raise ValueError(f"unknown method {method!r}; choose 'vdm' or 'ddpm'")
    gen = torch.Generator(device=images.device).manual_seed(seed)
    sums: dict[str, Tensor] = {}
    for start in range(0, images.shape[0], batch_size):
        x0 = images[start : start + batch_size]
        if method == "vdm":
            terms = vdm_terms(model, x0, schedule, bins=bins, generator=gen)
        else:
            terms = ddpm_terms(model, x0, schedule, T, bins=bins, generator=gen)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.double().sum()
    n, dims = images.shape[0], images[0].numel()
    return {k: float(bits_per_dim(v / n, dims)) for k, v in sums.items()}
