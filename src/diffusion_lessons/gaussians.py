"""Gaussian log-densities and KL divergences, in one place (used by the VAE and diffusion chapters).

Diagonal Gaussians are given by a mean and a log-variance of the same shape ``(B, ...)``; every
function sums over all dimensions but the first and returns shape ``(B,)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lessons.checks import check_same_shape, sum_except_batch

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(x; mean, diag(exp(log_var))), summed over all but the batch axis: ``(B,)``."""
    mean, log_var = torch.broadcast_tensors(mean, log_var)
    check_same_shape(x, mean, "x", "mean")
    return sum_except_batch(-0.5 * (LOG_2PI + log_var + (x - mean) ** 2 / log_var.exp()))


def kl_diag_gaussians(
    mean_q: Tensor, log_var_q: Tensor, mean_p: Tensor, log_var_p: Tensor
) -> Tensor:
    """KL(N(mean_q, diag var_q) ‖ N(mean_p, diag var_p)) in closed form, summed: ``(B,)``.

    Per dimension: ½ [log(var_p / var_q) + (var_q + (mean_q − mean_p)²) / var_p − 1].
    """
    mean_q, log_var_q, mean_p, log_var_p = torch.broadcast_tensors(
        mean_q, log_var_q, mean_p, log_var_p
    )
    per_dim = 0.5 * (
        log_var_p - log_var_q + (log_var_q.exp() + (mean_q - mean_p) ** 2) / log_var_p.exp() - 1.0
    )
    return sum_except_batch(per_dim)


def kl_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mean, diag exp(log_var)) ‖ N(0, I)) = ½ Σ (var + mean² − 1 − log var): ``(B,)``."""
    check_same_shape(mean, log_var, "mean", "log_var")
    return sum_except_batch(0.5 * (log_var.exp() + mean**2 - 1.0 - log_var))


def _log_diff_ndtr(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) − Φ(a)) for a < b, accurate in both tails and for b − a ≪ 1 or ≫ 1.

    Where a > 0 both CDFs are near 1, so it uses Φ(b) − Φ(a) = Φ(−a) − Φ(−b); then the larger
    argument hi is ≤ 0 or the bin holds the mode, and log(Φ(hi) − Φ(lo)) = log Φ(hi) +
    log(1 − e^d) with d = log Φ(lo) − log Φ(hi) ≤ 0, from ``torch.special.log_ndtr`` (accurate
    far into the lower tail, where Φ itself underflows). log(1 − e^d) is log(−expm1(d)) for
    d > −log 2 and log1p(−e^d) below (Mächler 2012), so neither a narrow nor a wide bin cancels.
    """
    flip = a > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    d = torch.special.log_ndtr(lo) - log_hi
    # both branches are evaluated; clamping keeps the unused one finite (and its gradient zero)
    near = torch.log(-torch.expm1(torch.clamp(d, max=-torch.finfo(d.dtype).tiny)))
    far = torch.log1p(-torch.exp(torch.clamp(d, max=-math.log(2.0))))
    return log_hi + torch.where(d > -math.log(2.0), near, far)


def discretized_gaussian_log_prob(
    x: Tensor, mean: Tensor, log_scale: Tensor, *, bins: int = 256
) -> Tensor:
    """log P(x) of 8-bit data under a Gaussian discretized to ``bins`` bins (Ho et al. 2020, eq. 13).

    ``x`` holds pixel values scaled to [−1, 1] (k ↦ 2k/(bins − 1) − 1); each value owns the bin
    of width 2/(bins − 1) around it, and the two edge bins extend to ∓∞, so the probabilities of
    all ``bins`` values sum to one. ``log_scale`` is log σ. Returns the sum over all but the batch
    axis: ``(B,)``, in nats.

    Each bin's log-probability log(Φ(b) − Φ(a)) is computed from log Φ without forming Φ
    (:func:`torch.special.log_ndtr`), so it stays exact to rounding however small it is (a narrow
    decoder far from x) and its gradient stays finite; the edge bins are log Φ(b) and log Φ(−a).
    """
    mean, log_scale = torch.broadcast_tensors(mean, log_scale)
    check_same_shape(x, mean, "x", "mean")
    if x.numel() and (x.min() < -1 - 1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(
            f"x must be scaled to [-1, 1], got values from {x.min().item()} to {x.max().item()}"
        )
    half = 1.0 / (bins - 1)
    inv_scale = torch.exp(-log_scale)
    a = (x - half - mean) * inv_scale  # the bin [x − half, x + half], standardized
    b = (x + half - mean) * inv_scale
    is_low, is_high = x < -1 + half, x > 1 - half  # the edge bins (−∞, b] and [a, ∞)
    # interior bins; the edge entries get a harmless finite bin so that no branch makes NaN
    edge = is_low | is_high
    inner = _log_diff_ndtr(torch.where(edge, -1.0, a), torch.where(edge, 1.0, b))
    log_prob = torch.where(
        is_low,
        torch.special.log_ndtr(torch.where(is_low, b, 0.0)),
        torch.where(is_high, torch.special.log_ndtr(torch.where(is_high, -a, 0.0)), inner),
    )
    return sum_except_batch(log_prob)


def bits_per_dim(nats: Tensor | float, num_dims: int) -> Tensor:
    """Convert a negative log-likelihood in nats (per example) to bits per dimension."""
    return torch.as_tensor(nats) / (num_dims * math.log(2.0))


# --- Gaussians with a full covariance (the posterior of the linear-Gaussian model is one) ---


def mvn_log_prob(x: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """log N(x; mean, cov) for a full covariance: ``x, mean: (B, k)``, ``cov: (k, k)`` or ``(B, k, k)`` → ``(B,)``."""
    chol = torch.linalg.cholesky(cov)
    diff = (x - mean).unsqueeze(-1)
    sol = torch.linalg.solve_triangular(
        chol.expand(*diff.shape[:-2], *chol.shape[-2:]), diff, upper=False
    )
    half_log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    k = x.shape[-1]
    return -0.5 * (k * LOG_2PI + (sol.squeeze(-1) ** 2).sum(-1)) - half_log_det


def kl_gaussians_full(mean_q: Tensor, cov_q: Tensor, mean_p: Tensor, cov_p: Tensor) -> Tensor:
    """KL(N(mean_q, cov_q) ‖ N(mean_p, cov_p)) in closed form (``eq-kl-gaussians``) → ``(B,)``.

    ½ [tr(Σ_p⁻¹ Σ_q) + (μ_p − μ_q)ᵀ Σ_p⁻¹ (μ_p − μ_q) − k + log det Σ_p − log det Σ_q];
    means ``(B, k)``, covariances ``(k, k)`` or ``(B, k, k)``.
    """
    mean_q, mean_p = torch.broadcast_tensors(mean_q, mean_p)
    k = mean_q.shape[-1]
    cov_q = cov_q.expand(mean_q.shape[0], k, k)
    cov_p = cov_p.expand(mean_q.shape[0], k, k)
    chol_p = torch.linalg.cholesky(cov_p)
    trace = torch.cholesky_solve(cov_q, chol_p).diagonal(dim1=-2, dim2=-1).sum(-1)
    diff = (mean_p - mean_q).unsqueeze(-1)
    maha = (diff * torch.cholesky_solve(diff, chol_p)).sum((-2, -1))
    logdet_p = 2 * torch.log(chol_p.diagonal(dim1=-2, dim2=-1)).sum(-1)
    logdet_q = torch.logdet(cov_q)
    return 0.5 * (trace + maha - k + logdet_p - logdet_q)
