"""Tweedie's formula: the posterior mean from the score (chapter "Tweedie's formula"; Robbins 1956,
Efron 2011).

For x_t = √ᾱ x_0 + σ ε with σ = √(1 − ᾱ) and q the law of x_t,

    E[√ᾱ x_0 | x_t] = x_t + σ² ∇ log q(x_t)                 (label ``eq-tweedie``)
    E[ε | x_t]      = −σ ∇ log q(x_t)                        (label ``eq-eps-score``)

so a model of the score (or of ε) is a model of the posterior mean, and the other way round.
Shapes: ``xt, score: (N, D)``; ``alpha_bar`` a float in (0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .checks import check_positive_int


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


def posterior_mean_importance_sampling(
    x0_samples: Tensor, xt: Tensor, alpha_bar: Tensor | float
) -> tuple[Tensor, Tensor]:
    """E[x_0 | x_t] by self-normalized importance sampling from prior samples: a second, exact-free route.

    With x_0^(m) ∼ p(x_0), m = 1..M (``x0_samples: (M, D)``), the weights
    w_m ∝ N(x_t; √ᾱ x_0^(m), σ² I) make Σ_m w_m x_0^(m) converge to E[x_0 | x_t] as M grows.
    Returns the estimates ``(N, D)`` and each row's effective sample size 1/Σ w_m² ``(N,)``.
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
    return w @ x0, 1.0 / (w**2).sum(1)


def error_per_noise_level(
    estimate: Callable[[Tensor, float], Tensor],
    exact: Callable[[Tensor, float], Tensor],
    sample_x0: Callable[[int, torch.Generator], Tensor],
    alpha_bars: list[float],
    *,
    n: int = 4096,
    seed: int = 0,
) -> list[dict[str, float]]:
    """For each ᾱ, draw x_0 and x_t, and compare ``estimate(x_t, ᾱ)`` with ``exact(x_t, ᾱ)``.

    Returns one row per ᾱ: ``alpha_bar``; ``rmse``, √(mean ‖estimate − exact‖²) (how far the
    estimate is from the true posterior mean), with ``rmse_se`` its Monte Carlo standard error
    (delta method); and ``mmse_root``, √(mean ‖x_0 − exact‖²), the error of the best possible
    denoiser, for scale.
    """
    check_positive_int(n, name="n")
    rows = []
    for k, ab in enumerate(alpha_bars):
        a = _check_alpha_bar(ab, allow_one=False)
        gen = torch.Generator().manual_seed(seed + k)
        x0 = sample_x0(n, gen).to(torch.float64)
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        xt = math.sqrt(a) * x0 + math.sqrt(1.0 - a) * eps
        best = exact(xt, a)
        sq = ((estimate(xt, a).to(torch.float64) - best) ** 2).sum(1)
        mse = sq.mean().item()
        rmse = math.sqrt(mse)
        se = sq.std().item() / math.sqrt(n) / (2 * rmse) if rmse > 0 else 0.0
        rows.append(
            {
                "alpha_bar": a,
                "rmse": rmse,
                "rmse_se": se,
                "mmse_root": math.sqrt(((x0 - best) ** 2).sum(1).mean().item()),
            }
        )
    return rows


def tweedie_derivations() -> dict:
    """Tweedie's formula (``eq-tweedie``) on two priors where sympy can do everything, 1-D.

    - ``"gaussian"``: x_0 ∼ N(μ, s²). Tweedie's (x_t + σ² q′/q)/√ᾱ against the Gaussian
      conditioning formula μ + √ᾱ s² (x_t − √ᾱ μ)/(ᾱ s² + σ²).
    - ``"two_points"``: x_0 = m_1 or m_2 with probabilities w, 1 − w (far from Gaussian). Tweedie
      against Bayes' rule Σ_k m_k p(k | x_t).

    Each entry is ``(tweedie, direct)``; their difference simplifies to 0.
    """
    import sympy as sp

    xt, mu, m1, m2 = sp.symbols("x_t mu m_1 m_2", real=True)
    a, s, w = sp.symbols(r"\bar{\alpha} s w", positive=True)
    sig2 = 1 - a

    def normal(x, mean, var):
        return sp.exp(-((x - mean) ** 2) / (2 * var)) / sp.sqrt(2 * sp.pi * var)

    def tweedie(q):
        return (xt + sig2 * sp.diff(sp.log(q), xt)) / sp.sqrt(a)

    q_gauss = normal(xt, sp.sqrt(a) * mu, a * s**2 + sig2)
    direct_gauss = mu + sp.sqrt(a) * s**2 * (xt - sp.sqrt(a) * mu) / (a * s**2 + sig2)
    n1, n2 = w * normal(xt, sp.sqrt(a) * m1, sig2), (1 - w) * normal(xt, sp.sqrt(a) * m2, sig2)
    direct_two = (m1 * n1 + m2 * n2) / (n1 + n2)
    return {
        "gaussian": (tweedie(q_gauss), direct_gauss),
        "two_points": (tweedie(n1 + n2), direct_two),
        "symbols": {"xt": xt, "mu": mu, "m1": m1, "m2": m2, "alpha_bar": a, "s": s, "w": w},
    }
