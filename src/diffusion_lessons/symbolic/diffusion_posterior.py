"""Sympy derivations for the diffusion posterior q(x_{t-1} | x_t, x_0) (chapter "The
diffusion ELBO"): its mean and variance by completing the square, and the denoising
weight = ½ SNR drop.

Chapter 4 shows each function's source
(:func:`~diffusion_lessons.book.pages.show_source`) before it uses the result, so each
is written within the book's 88 columns.
"""

from __future__ import annotations

import sympy as sp


def posterior_derivation() -> dict[str, sp.Expr]:
    """Derive q(x_{t-1} | x_t, x_0) by completing the square, in one dimension.

    The 1-D case of ``eq-posterior``. By Bayes, q(x_{t-1} | x_t, x_0) is proportional
    to q(x_t | x_{t-1}) q(x_{t-1} | x_0), a product of N(x_t; √α_t x_{t-1}, 1 − α_t)
    (``eq-forward-step``) and N(x_{t-1}; √ᾱ_{t-1} x_0, 1 − ᾱ_{t-1})
    (``eq-forward-marginal``). Its log is a quadratic a x² + b x + const in x = x_{t-1},
    so it is the Gaussian with variance −1/(2a) and mean −b/(2a). Returns the symbols,
    the log-density ``exponent``, ``a``, ``b`` and the simplified ``mean`` (with its
    coefficients ``coef_x0``, ``coef_xt``) and ``variance`` with ᾱ_t = α_t ᾱ_{t-1}
    substituted back, plus ``mean_expected`` and ``variance_expected``: the closed forms
    of :func:`~diffusion_lessons.process.posterior.posterior_coefs`, for comparison.
    """
    x, xt, x0 = sp.symbols("x_{t-1} x_t x_0", real=True)
    a_t = sp.Symbol("alpha_t", positive=True)
    ab_prev = sp.Symbol(r"\bar{\alpha}_{t-1}", positive=True)
    ab_t = sp.Symbol(r"\bar{\alpha}_t", positive=True)
    # log q(x_t | x_{t-1}) + log q(x_{t-1} | x_0), dropping the terms free of x_{t-1}
    log_step = -((xt - sp.sqrt(a_t) * x) ** 2) / (2 * (1 - a_t))
    log_marginal = -((x - sp.sqrt(ab_prev) * x0) ** 2) / (2 * (1 - ab_prev))
    exponent = log_step + log_marginal
    # as a quadratic in x = x_{t-1}: a x² + b x + const
    poly = sp.Poly(sp.expand(exponent), x)
    a = poly.coeff_monomial(x**2)
    b = poly.coeff_monomial(x)
    # N(m, v) has log-density −x²/(2v) + x m/v + const: v = −1/(2a), m = −b/(2a)
    variance = sp.factor(sp.simplify(-1 / (2 * a)))
    mean = sp.simplify(-b / (2 * a))
    # write ᾱ_{t-1} = ᾱ_t / α_t, to read both in ᾱ_t
    to_ab_t = {ab_prev: ab_t / a_t}
    variance_t = sp.factor(sp.simplify(variance.subs(to_ab_t)))
    mean_t = sp.collect(sp.simplify(sp.expand(mean.subs(to_ab_t))), [xt, x0])
    # eq-posterior, to compare with
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


def denoising_weight_derivation() -> dict[str, sp.Expr]:
    """The weight of ‖x̂_0 − x_0‖² in the denoising KL, derived in sympy.

    The weight of ``eq-denoising-snr``. Two Gaussians with the same variance σ̃² I have
    KL = ‖μ_q − μ_p‖² / (2σ̃²); the means differ only through x_0, by c_0 (x_0 − x̂_0)
    (``eq-posterior``), so the weight is c_0² / (2σ̃²). Returns ``weight`` (that
    expression, simplified) and ``weight_expected`` = ½ (SNR(t−1) − SNR(t)) with
    SNR = ᾱ / (1 − ᾱ), both in α_t and ᾱ_{t-1}.
    """
    a_t = sp.Symbol("alpha_t", positive=True)
    ab_prev = sp.Symbol(r"\bar{\alpha}_{t-1}", positive=True)
    ab_t = a_t * ab_prev
    # eq-posterior: x_0's coefficient in the posterior mean, and the posterior variance
    c0 = sp.sqrt(ab_prev) * (1 - a_t) / (1 - ab_t)
    var = (1 - a_t) * (1 - ab_prev) / (1 - ab_t)
    # equal variances: KL = c_0² ‖x_0 − x̂_0‖² / (2 σ̃²)
    weight = sp.simplify(c0**2 / (2 * var))

    def snr(ab):
        return ab / (1 - ab)

    return {
        "alpha_t": a_t,
        "alpha_bar_prev": ab_prev,
        "weight": sp.factor(weight),
        "weight_expected": (snr(ab_prev) - snr(ab_t)) / 2,
    }
