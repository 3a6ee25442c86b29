"""The negative ELBO of a diffusion model, term by term, each written once in log-SNR form.

Chapters 4–6 and 10: −log p(x_0) ≤ prior + reconstruction + diffusion (``eq-diffusion-elbo``,
``eq-vlb-total``). The terms that discrete and continuous time share live here; the two bounds
(:mod:`~diffusion_lessons.objectives.discrete_time`,
:mod:`~diffusion_lessons.objectives.continuous_time`) only say where they are evaluated. Every
term is per example, ``(B,)``, in nats; x̂_0 is a denoiser's estimate of x_0
(:mod:`~diffusion_lessons.denoisers.denoiser`), λ = log SNR = log(ᾱ / σ²).

- :func:`prior_kl`                        KL(q(x_1 | x_0) ‖ N(0, I)) at the last level λ_1
- :func:`gaussian_reconstruction_nll`     −log N(x_0; x̂_0, e^{2 log_scale} I)
- :func:`discretized_reconstruction_nll`  the same Gaussian discretized to ``bins`` levels
- :func:`denoising_kl`                    ½ (SNR_s − SNR_t) ‖x̂_0 − x_0‖²      (``eq-denoising-snr``)
- :func:`diffusion_integrand`             −½ λ′(t) e^{λ(t)} ‖x̂_0 − x_0‖²     (``eq-vlb-continuous``)
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lessons import gaussians
from diffusion_lessons.checks import (
    append_dims,
    as_coefficient,
    promote_coefficient,
    sum_except_batch,
)


def _check_pair(x0: Tensor, x0_hat: Tensor) -> None:
    if x0_hat.shape != x0.shape:
        raise ValueError(
            f"x0 has shape {tuple(x0.shape)} but x0_hat has shape {tuple(x0_hat.shape)}"
        )


def _squared_error(x0: Tensor, x0_hat: Tensor) -> Tensor:
    """‖x̂_0 − x_0‖² per example: ``(B, ...)`` → ``(B,)``."""
    _check_pair(x0, x0_hat)
    return sum_except_batch((x0_hat - x0) ** 2)


def _per_example(coef: Tensor | float, x0: Tensor, name: str) -> Tensor:
    """A scalar or ``(B,)`` coefficient as a tensor of the promoted dtype of it and ``x0``."""
    c = append_dims(as_coefficient(coef), x0, name=name, x_name="x0")
    return promote_coefficient(c, x0).reshape(-1)


def prior_kl(x0: Tensor, log_snr_1: Tensor | float) -> Tensor:
    """KL(q(z_1 | x) ‖ N(0, I)) with q(z_1 | x) = N(√ᾱ_1 x, σ_1² I): ``(B,)`` (a term of ``eq-vlb-total``).

    Per dimension ½ (ᾱ_1 x² + σ_1² − 1 − log σ_1²) = ½ ᾱ_1 x² + ½ (−log σ_1² − ᾱ_1). The
    coefficients come from λ_1 in the promoted dtype of λ_1 and x0 (float64 for a Python float),
    then are cast to x0's dtype once, so σ² − 1 − log σ² does not cancel in float32.
    """
    lam = append_dims(as_coefficient(log_snr_1), x0, name="log_snr_1", x_name="x0")
    lam = promote_coefficient(lam, x0)
    ab = torch.sigmoid(lam)
    per_dim_const = 0.5 * (-torch.nn.functional.logsigmoid(-lam) - ab)  # ½ (σ² − 1 − log σ²)
    sq = sum_except_batch(x0**2)
    d = x0[0].numel()
    return 0.5 * ab.to(x0).reshape(-1) * sq + (d * per_dim_const).to(x0).reshape(-1)


def gaussian_reconstruction_nll(x0: Tensor, x0_hat: Tensor, log_scale: Tensor | float) -> Tensor:
    """−log p(x_0 | x_1) for the decoder N(x̂_0, e^{2 log_scale} I), continuous data: ``(B,)``.

    The reconstruction term of ``eq-diffusion-elbo`` (and of ``eq-vlb-total``, at z_0).
    ``x0, x0_hat: (B, ...)``; ``log_scale`` = log of the decoder's standard deviation, a scalar
    or shaped like ``x0``.
    """
    _check_pair(x0, x0_hat)
    log_scale = torch.as_tensor(log_scale, dtype=x0.dtype, device=x0.device).expand_as(x0)
    return -gaussians.gaussian_log_prob(x0, x0_hat, 2 * log_scale)


def discretized_reconstruction_nll(
    x0: Tensor, x0_hat: Tensor, log_scale: Tensor | float, bins: int
) -> Tensor:
    """−log P(x_0 | x_1) for N(x̂_0, e^{2 log_scale} I) discretized to ``bins`` levels: ``(B,)``.

    The reconstruction term of ``eq-diffusion-elbo`` for data with ``bins`` levels scaled to
    [−1, 1] (Ho et al. 2020, eq. 13; 256 for 8-bit images, 17 for scikit-learn's 8×8 digits),
    by :func:`~diffusion_lessons.gaussians.discretized_gaussian_log_prob`.

    DDPM writes its decoder as N(μ_θ(x_1, 1), β_1) with μ_θ(x_1, 1) = (x_1 − β_1/σ_1 ε̂)/√α_1.
    With ᾱ_0 = 1, α_1 = ᾱ_1 and β_1 = 1 − ᾱ_1 = σ_1², so μ_θ(x_1, 1) = (x_1 − σ_1 ε̂)/√ᾱ_1 = x̂_0
    (``eq-eps-to-x0``) and √β_1 = σ_1: it is this decoder with log_scale = log σ_1.
    """
    _check_pair(x0, x0_hat)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2 (the number of data levels), got {bins!r}")
    log_scale = torch.as_tensor(log_scale, dtype=x0.dtype, device=x0.device).expand_as(x0)
    return -gaussians.discretized_gaussian_log_prob(x0, x0_hat, log_scale, bins=bins)


def denoising_kl(
    x0: Tensor, x0_hat: Tensor, log_snr_s: Tensor | float, log_snr_t: Tensor | float
) -> Tensor:
    """KL(q(x_s | x_t, x_0) ‖ p_θ(x_s | x_t)) = ½ (SNR_s − SNR_t) ‖x̂_0 − x_0‖², s before t: ``(B,)``.

    Label ``eq-denoising-snr`` (one step of ``eq-diffusion-elbo``; times T it is a draw of
    ``eq-vlb-discrete``): p_θ is the posterior q(x_s | x_t, x̂_0) with the same variance
    (``eq-reverse-step``). The SNR gap is formed as e^{λ_t} expm1(λ_s − λ_t), accurate when the
    step is small, in the promoted dtype of λ and x0. ``x0, x0_hat: (B, ...)``; ``log_snr_s``,
    ``log_snr_t``: scalars or ``(B,)``, finite, with λ_s > λ_t.
    """
    sq = _squared_error(x0, x0_hat)
    lam_s = _per_example(log_snr_s, x0, "log_snr_s")
    lam_t = _per_example(log_snr_t, x0, "log_snr_t")
    if not (torch.isfinite(lam_s).all() and (lam_s > lam_t).all()):
        raise ValueError(
            "need finite log_snr_s > log_snr_t (s is the less noisy level; SNR_s is infinite "
            "at the data, where the reconstruction term takes over)"
        )
    weight = 0.5 * torch.exp(lam_t) * torch.expm1(lam_s - lam_t)
    return weight.to(sq) * sq


def diffusion_integrand(x0: Tensor, x0_hat: Tensor, log_snr: Tensor, dlog_snr_dt: Tensor) -> Tensor:
    """−½ λ′(t) e^{λ(t)} ‖x̂_0 − x_0‖² = −½ SNR′(t) ‖x̂_0 − x_0‖²: ``(B,)`` (``eq-vlb-continuous``).

    The integrand of L_∞ at one time t per example: its mean over t ∼ U(0, 1) and the noise is
    L_∞. ``x0, x0_hat: (B, ...)``; ``log_snr``, ``dlog_snr_dt``: ``(B,)`` λ(t) and λ′(t) (λ′ < 0).
    The product is formed in x0's dtype, so gradients reach a learned λ through both factors.
    """
    sq = _squared_error(x0, x0_hat)
    return -0.5 * torch.exp(log_snr.to(sq.dtype)) * dlog_snr_dt.to(sq.dtype) * sq
