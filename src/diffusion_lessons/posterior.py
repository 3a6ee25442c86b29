"""The forward process run backwards, given the data (book: chapter "The diffusion ELBO").

- q(x_{t-1} | x_t, x_0), the Gaussian that every denoising step imitates   (label ``eq-posterior``)
- its derivation by completing the square, in sympy                      (:func:`posterior_derivation`)
- E[x_0 | x_t] for Gaussian-mixture data, exactly   (chapter "Three equivalent objectives", ``eq-score-eps``)

Notation as in :mod:`diffusion_lessons.schedules`: ``alpha_bar`` is ᾱ_t, ``alpha_bar_prev`` is
ᾱ_{t-1}, and the per-step α_t = ᾱ_t / ᾱ_{t-1}.
"""

from __future__ import annotations

import sympy as sp
import torch
from torch import Tensor

from .checks import append_dims
from .data import GaussianMixture


def _check_pair(alpha_bar: Tensor, alpha_bar_prev: Tensor) -> None:
    if torch.isnan(alpha_bar).any() or torch.isnan(alpha_bar_prev).any():
        raise ValueError("alpha_bar and alpha_bar_prev must not contain NaN")
    if (alpha_bar_prev > 1).any() or (alpha_bar < 0).any():
        raise ValueError("alpha_bar and alpha_bar_prev must lie in [0, 1]")
    if (alpha_bar >= alpha_bar_prev).any():
        raise ValueError(
            "alpha_bar must be smaller than alpha_bar_prev (ᾱ_t < ᾱ_{t-1}: each step adds noise), "
            f"got alpha_bar up to {alpha_bar.max().item():.6g} and alpha_bar_prev down to "
            f"{alpha_bar_prev.min().item():.6g}"
        )


def posterior_coefs(
    alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of q(x_{t-1} | x_t, x_0) = N(c_0 x_0 + c_t x_t, σ̃² I) (label ``eq-posterior``).

    c_0 = √ᾱ_{t-1} (1 − α_t) / (1 − ᾱ_t), c_t = √α_t (1 − ᾱ_{t-1}) / (1 − ᾱ_t),
    σ̃² = (1 − α_t)(1 − ᾱ_{t-1}) / (1 − ᾱ_t), with α_t = ᾱ_t / ᾱ_{t-1}. Inputs: scalars or
    tensors of one shape with 0 ≤ ᾱ_t < ᾱ_{t-1} ≤ 1; returns (c_0, c_t, σ̃²) of that shape, in
    float64 (1 − ᾱ_t is tiny at small t).
    """
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    ab_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    _check_pair(ab, ab_prev)
    alpha = ab / ab_prev
    c0 = ab_prev.sqrt() * (1 - alpha) / (1 - ab)
    ct = alpha.sqrt() * (1 - ab_prev) / (1 - ab)
    var = (1 - alpha) * (1 - ab_prev) / (1 - ab)
    return c0, ct, var


def posterior_mean_var(
    x0: Tensor, xt: Tensor, alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (label ``eq-posterior``).

    ``x0, xt: (B, ...)`` of one shape; ``alpha_bar`` (ᾱ_t) and ``alpha_bar_prev`` (ᾱ_{t-1}):
    scalars or ``(B,)``. Returns ``(mean, var)``: the mean shaped like ``x0`` and the variance
    σ̃_t² broadcastable against it (the covariance is σ̃_t² I).
    """
    if x0.shape != xt.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)} but xt has shape {tuple(xt.shape)}")
    c0, ct, var = posterior_coefs(alpha_bar, alpha_bar_prev)
    c0, ct, var = (append_dims(c, xt, name="alpha_bar", x_name="xt").to(xt) for c in (c0, ct, var))
    return c0 * x0 + ct * xt, var


def posterior_derivation() -> dict[str, sp.Expr]:
    """Derive q(x_{t-1} | x_t, x_0) by completing the square, in one dimension (``eq-posterior``).

    By Bayes, q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), a product of
    N(x_t; √α_t x_{t-1}, 1 − α_t) (``eq-forward-step``) and N(x_{t-1}; √ᾱ_{t-1} x_0, 1 − ᾱ_{t-1})
    (``eq-forward-marginal``). Its log is a quadratic a x² + b x + const in x = x_{t-1}, so it is
    the Gaussian with variance −1/(2a) and mean −b/(2a). Returns the symbols, the log-density
    ``exponent``, ``a``, ``b`` and the simplified ``mean`` (with its coefficients ``coef_x0``,
    ``coef_xt``) and ``variance`` with ᾱ_t = α_t ᾱ_{t-1}
    substituted back, plus ``mean_expected`` and ``variance_expected``: the closed forms of
    :func:`posterior_coefs`, for comparison.
    """
    x, xt, x0 = sp.symbols("x_{t-1} x_t x_0", real=True)
    a_t = sp.Symbol("alpha_t", positive=True)
    ab_prev = sp.Symbol(r"\bar{\alpha}_{t-1}", positive=True)
    ab_t = sp.Symbol(r"\bar{\alpha}_t", positive=True)
    exponent = -((xt - sp.sqrt(a_t) * x) ** 2) / (2 * (1 - a_t)) - (
        x - sp.sqrt(ab_prev) * x0
    ) ** 2 / (2 * (1 - ab_prev))
    poly = sp.Poly(sp.expand(exponent), x)
    a = poly.coeff_monomial(x**2)
    b = poly.coeff_monomial(x)
    variance = sp.factor(sp.simplify(-1 / (2 * a)))
    mean = sp.simplify(-b / (2 * a))
    to_ab_t = {ab_prev: ab_t / a_t}
    variance_t = sp.factor(sp.simplify(variance.subs(to_ab_t)))
    mean_t = sp.collect(sp.simplify(sp.expand(mean.subs(to_ab_t))), [xt, x0])
    mean_expected = (
        sp.sqrt(ab_t / a_t) * (1 - a_t) * x0 + sp.sqrt(a_t) * (1 - ab_t / a_t) * xt
    ) / (1 - ab_t)
    variance_expected = (1 - a_t) * (1 - ab_t / a_t) / (1 - ab_t)
    return {
        "x_prev": x,
        "xt": xt,
        "x0": x0,
        "alpha_t": a_t,
        "alpha_bar_prev": ab_prev,
        "alpha_bar_t": ab_t,
        "exponent": exponent,
        "a": a,
        "b": b,
        "mean": mean_t,
        "coef_x0": sp.factor(sp.simplify(sp.diff(mean_t, x0))),
        "coef_xt": sp.factor(sp.simplify(sp.diff(mean_t, xt))),
        "variance": variance_t,
        "mean_expected": mean_expected,
        "variance_expected": variance_expected,
    }


def mixture_posterior_mean(mixture: GaussianMixture, xt: Tensor, alpha_bar: float) -> Tensor:
    """E[x_0 | x_t] exactly, when x_0 follows a Gaussian mixture (the target in ``eq-score-eps``).

    With x_t = √ᾱ x_0 + σ ε and component k = N(μ_k, Σ_k), (x_0, x_t) is jointly Gaussian within
    a component, so E[x_0 | x_t, k] = μ_k + √ᾱ Σ_k (ᾱ Σ_k + σ² I)⁻¹ (x_t − √ᾱ μ_k); averaging
    with the responsibilities p(k | x_t) of the noised mixture (:meth:`.GaussianMixture.noised`)
    gives E[x_0 | x_t] = Σ_k p(k | x_t) E[x_0 | x_t, k]. ``xt: (N, D)``, ``alpha_bar``: a float
    in [0, 1]. Returns ``(N, D)``, float64.
    """
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a data.GaussianMixture, got {type(mixture).__name__}")
    xt = torch.as_tensor(xt)
    if xt.ndim != 2 or xt.shape[1] != mixture.dim:
        raise ValueError(f"xt must have shape (N, {mixture.dim}), got {tuple(xt.shape)}")
    if isinstance(alpha_bar, Tensor):
        if alpha_bar.numel() != 1:
            raise ValueError(
                f"alpha_bar must be a single number, got shape {tuple(alpha_bar.shape)}"
            )
        alpha_bar = alpha_bar.item()
    a = float(alpha_bar)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha_bar must lie in [0, 1], got {alpha_bar!r}")
    xt = xt.to(torch.float64)
    noised = mixture.noised(a)
    resp = noised.responsibilities(xt)  # (N, K)
    gain = a**0.5 * mixture.covs @ torch.linalg.inv(noised.covs)  # (K, D, D)
    diff = xt[:, None, :] - a**0.5 * mixture.means[None]  # (N, K, D)
    per_component = mixture.means[None] + torch.einsum("kij,nkj->nki", gain, diff)
    return (resp[..., None] * per_component).sum(1)


def denoising_weight_derivation() -> dict[str, sp.Expr]:
    """The weight of ‖x̂_0 − x_0‖² in the denoising KL, derived in sympy (``eq-denoising-snr``).

    Two Gaussians with the same variance σ̃² I have KL = ‖μ_q − μ_p‖² / (2σ̃²); the means differ
    only through x_0, by c_0 (x_0 − x̂_0) (``eq-posterior``), so the weight is c_0² / (2σ̃²).
    Returns ``weight`` (that expression, simplified) and ``weight_expected`` =
    ½ (SNR(t−1) − SNR(t)) with SNR = ᾱ / (1 − ᾱ), both in α_t and ᾱ_{t-1}.
    """
    a_t = sp.Symbol("alpha_t", positive=True)
    ab_prev = sp.Symbol(r"\bar{\alpha}_{t-1}", positive=True)
    ab_t = a_t * ab_prev
    c0 = sp.sqrt(ab_prev) * (1 - a_t) / (1 - ab_t)
    var = (1 - a_t) * (1 - ab_prev) / (1 - ab_t)
    weight = sp.simplify(c0**2 / (2 * var))
    snr = lambda ab: ab / (1 - ab)  # noqa: E731
    return {
        "alpha_t": a_t,
        "alpha_bar_prev": ab_prev,
        "weight": sp.factor(weight),
        "weight_expected": (snr(ab_prev) - snr(ab_t)) / 2,
    }
