"""Tweedie's formula: the posterior mean from the score (chapter "Tweedie's formula"; Robbins 1956,
Efron 2011).

For x_t = √ᾱ x_0 + σ ε with σ = √(1 − ᾱ) and q the law of x_t,

    E[√ᾱ x_0 | x_t] = x_t + σ² ∇ log q(x_t)                 (label ``eq-tweedie``)
    E[ε | x_t]      = −σ ∇ log q(x_t)                        (label ``eq-eps-score``)

so a model of the score (or of ε) is a model of the posterior mean, and the other way round.
Shapes: ``xt, score: (N, D)``; ``alpha_bar`` a float in (0, 1].

Also here: the importance-sampling route to E[x_0 | x_t] with its own error estimates, the RMS
distance between two estimates of it with its standard error (:func:`rms_error`), and the exact
denoising error of a prior on a few points (:func:`discrete_prior_denoising_error`), which shows
that the best denoiser's error for one data point need not fall as the SNR grows (chapter 6).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from diffusion_lessons.checks import check_positive_int
from diffusion_lessons.montecarlo import mean_se


def _check_alpha_bar(alpha_bar: Tensor | float, *, allow_one: bool = True) -> float:
    a = (
        float(torch.as_tensor(alpha_bar).item())
        if isinstance(alpha_bar, Tensor)
        else float(alpha_bar)
    )
    if not (0.0 < a < 1.0 or (allow_one and a == 1.0)):
        raise ValueError(
            f"alpha_bar must lie in (0, 1{']' if allow_one else ')'}, got {alpha_bar!r}"
        )
    return a


def _check_pair(xt: Tensor, other: Tensor, name: str) -> None:
    if xt.ndim != 2 or other.shape != xt.shape:
        raise ValueError(
            f"xt and {name} must have the same shape (N, D), got {tuple(xt.shape)} and "
            f"{tuple(other.shape)}"
        )


def tweedie_posterior_mean(xt: Tensor, score: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """E[x_0 | x_t] = (x_t + σ² ∇ log q(x_t)) / √ᾱ from the score of x_t (``eq-tweedie``): ``(N, D)``."""
    _check_pair(xt, score, "score")
    a = _check_alpha_bar(alpha_bar)
    return (xt + (1.0 - a) * score) / math.sqrt(a)


def tweedie_noise_mean(score: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """E[ε | x_t] = −σ ∇ log q(x_t) (``eq-eps-score``): the ε a perfect ε-model predicts, ``(N, D)``."""
    a = _check_alpha_bar(alpha_bar, allow_one=False)
    return -math.sqrt(1.0 - a) * score


class ImportanceSamplingEstimate(NamedTuple):
    """What :func:`posterior_mean_importance_sampling` returns; every field has one row per x_t.

    ``mean (N, D)``: Σ_m w_m x_0^(m). ``ess (N,)``: the effective sample size 1/Σ_m w_m².
    ``sd (N, D)``: the posterior standard deviation from the same weights,
    √(Σ_m w_m (x_0^(m) − mean)²). ``se (N, D)``: sd/√ess, the usual rough error of ``mean``.
    ``se_delta (N, D)``: √(Σ_m w_m² (x_0^(m) − mean)²), the delta-method error of a
    self-normalized estimate.
    """

    mean: Tensor
    ess: Tensor
    sd: Tensor
    se: Tensor
    se_delta: Tensor


def posterior_mean_importance_sampling(
    x0_samples: Tensor, xt: Tensor, alpha_bar: Tensor | float
) -> ImportanceSamplingEstimate:
    """E[x_0 | x_t] by self-normalized importance sampling from prior samples: a second, exact-free route.

    With x_0^(m) ∼ q(x_0), m = 1..M (``x0_samples: (M, D)``), the weights
    w_m ∝ N(x_t; √ᾱ x_0^(m), σ² I) make Σ_m w_m x_0^(m) converge to E[x_0 | x_t] as M grows.
    Returns an :class:`ImportanceSamplingEstimate`: the estimates ``(N, D)``, each row's effective
    sample size, and the posterior sd and two Monte Carlo errors computed from the same weights.
    """
    a = _check_alpha_bar(alpha_bar, allow_one=False)
    xt = torch.as_tensor(xt, dtype=torch.float64)
    x0 = torch.as_tensor(x0_samples, dtype=torch.float64)
    if x0.ndim != 2 or xt.ndim != 2 or x0.shape[1] != xt.shape[1]:
        raise ValueError(
            f"x0_samples (M, D) and xt (N, D) must share D, got {tuple(x0.shape)} and {tuple(xt.shape)}"
        )
    sq = torch.cdist(xt, math.sqrt(a) * x0) ** 2  # (N, M)
    w = torch.softmax(-sq / (2 * (1.0 - a)), dim=1)
    mean = w @ x0
    ess = 1.0 / (w**2).sum(1)
    # Σ_m w_m (x_m − mean)² per coordinate, without an (N, M, D) tensor
    var = (w @ x0**2 - mean**2).clamp(min=0.0)
    w2 = w**2  # Σ_m w_m² (x_m − mean)², expanded the same way
    var_delta = w2 @ x0**2 - 2 * mean * (w2 @ x0) + mean**2 * w2.sum(1, keepdim=True)
    var_delta = var_delta.clamp(min=0.0)
    sd = var.sqrt()
    return ImportanceSamplingEstimate(mean, ess, sd, sd / ess.sqrt()[:, None], var_delta.sqrt())


class RMSError(NamedTuple):
    """What :func:`rms_error` returns: the RMS distance, its standard error, the number of rows."""

    rmse: float
    se: float
    n: int


def rms_error(estimate: Tensor, reference: Tensor) -> RMSError:
    """√(mean_n ‖estimate_n − reference_n‖²) with its Monte Carlo standard error: ``(N, D)`` each.

    The rows are independent draws (of x_t, say, with ``reference`` the exact E[x_0 | x_t]); the
    error of the mean squared distance m is s/√N (:func:`~diffusion_lessons.montecarlo.mean_se`)
    and, by the delta method, that of √m is s/(2√(N m)) (0 when m = 0).
    """
    _check_pair(estimate, reference, "reference")
    sq = ((estimate.to(torch.float64) - reference.to(torch.float64)) ** 2).sum(1)
    est = mean_se(sq)
    rmse = math.sqrt(est.mean)
    return RMSError(rmse, est.se / (2 * rmse) if rmse > 0 else 0.0, est.n)


def discrete_prior_denoising_error(
    values: Tensor, probs: Tensor, snr: Tensor, *, n_grid: int = 4001, eps_max: float = 12.0
) -> Tensor:
    """f_k(u) = E_ε (m_k − E[x_0 | z_u])² for a 1-D prior on points, per point and SNR: ``(K, U)``.

    x_0 = m_k with probability π_k (``values, probs: (K,)``); z_u = √ᾱ x_0 + σ ε at the SNR
    u = ᾱ/σ² (``snr: (U,)``, u ≥ 0). Conditioning on z_u is conditioning on y = √u x_0 + ε, so
    E[x_0 | z_u] = Σ_k m_k p(k | y) with p(k | y) ∝ π_k exp(√u m_k y − u m_k²/2) (Bayes' rule).
    The expectation over ε ∼ N(0, 1) is a trapezoid rule on ``n_grid`` points of
    [−eps_max, eps_max] (the integrand is smooth on the scale 1/√u, so the rule is accurate while
    √u is much smaller than ``n_grid / (2 eps_max)``).

    Row k is the error of the exact posterior mean when the data point is m_k; ``probs @ result``
    is the data-averaged MMSE, which never increases with u. A single row can.
    """
    m = torch.as_tensor(values, dtype=torch.float64)
    p = torch.as_tensor(probs, dtype=torch.float64)
    u = torch.as_tensor(snr, dtype=torch.float64)
    if m.ndim != 1 or p.shape != m.shape or m.numel() < 1:
        raise ValueError(
            f"values and probs must be 1-D of the same length K >= 1, got shapes "
            f"{tuple(m.shape)} and {tuple(p.shape)}"
        )
    if not torch.isfinite(m).all():
        raise ValueError(f"values must be finite, got {m.tolist()}")
    if (p <= 0).any() or abs(p.sum().item() - 1.0) > 1e-6:
        raise ValueError(f"probs must be positive and sum to 1, got {p.tolist()}")
    p = p / p.sum()  # float32 probabilities sum to 1 only to about 1e-7
    if u.ndim != 1 or not torch.isfinite(u).all() or (u < 0).any():
        raise ValueError(f"snr must be a 1-D tensor of finite values >= 0, got {snr!r}")
    check_positive_int(n_grid, name="n_grid")
    if n_grid < 3 or not eps_max > 0:
        raise ValueError(f"need n_grid >= 3 and eps_max > 0, got {n_grid} and {eps_max}")
    eps = torch.linspace(-eps_max, eps_max, n_grid, dtype=torch.float64)
    weight = torch.exp(-0.5 * eps**2) / math.sqrt(2 * math.pi) * (eps[1] - eps[0])
    weight[0] = weight[-1] = weight[0] / 2  # trapezoid rule: half weight at the two ends
    log_p = torch.log(p)
    out = torch.empty(m.numel(), u.numel(), dtype=torch.float64)
    chunk = max(1, 2**21 // (m.numel() ** 2 * n_grid))  # SNRs per step: about 16 MB at a time
    for start in range(0, u.numel(), chunk):
        r = u[start : start + chunk].sqrt()[:, None, None]  # (C, 1, 1)
        y = r * m[:, None] + eps  # y for the data point m_k: (C, K, G)
        logits = log_p + (r * y)[..., None] * m - 0.5 * (r**2)[..., None] * m**2  # (C, K, G, K)
        post_mean = torch.softmax(logits, dim=-1) @ m  # E[x_0 | y]: (C, K, G)
        out[:, start : start + chunk] = ((m[:, None] - post_mean) ** 2 * weight).sum(-1).T
    return out
