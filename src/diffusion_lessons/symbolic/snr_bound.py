"""Sympy derivations of the bound written through the SNR (chapter "Learning the noise
schedule"): the KL term in SNR form, its invariance to the schedule's path, its
continuous limit.

Chapter 6 shows each function's source
(:func:`~diffusion_lessons.book.pages.show_source`) before it uses the result, so each
is written within the book's 88 columns.
"""

from __future__ import annotations

import sympy as sp


def kl_term_snr_derivation() -> dict:
    """One KL term of the discrete bound in SNR form (``eq-vlb-kl-snr``), with sympy.

    q(z_s | z_t, x) and p(z_s | z_t) = q(z_s | z_t, x = x̂) share the variance σ_Q² and
    their means differ by c (x − x̂) with c = √ᾱ_s σ²_{t|s} / σ_t², where
    σ²_{t|s} = σ_t² − (ᾱ_t/ᾱ_s) σ_s²; so the KL is ½ c²/σ_Q² ‖x − x̂‖². Returns
    ``{"weight": c²/σ_Q², "snr_gap": SNR(s) − SNR(t), ...}``.
    """
    ab_s, ab_t = sp.symbols(r"\bar{\alpha}_s \bar{\alpha}_t", positive=True)
    sig2_s, sig2_t = 1 - ab_s, 1 - ab_t
    # the variance of q(z_t | z_s), one step from s to t
    sig2_ts = sig2_t - ab_t / ab_s * sig2_s
    # the posterior q(z_s | z_t, x): its variance, and x's coefficient in its mean
    var_q = sig2_ts * sig2_s / sig2_t
    c = sp.sqrt(ab_s) * sig2_ts / sig2_t
    # equal variances: KL = ½ c² ‖x − x̂‖² / σ_Q², so the weight of ½ ‖x − x̂‖² is
    weight = c**2 / var_q
    snr_gap = ab_s / sig2_s - ab_t / sig2_t
    return {
        "alpha_bar_s": ab_s,
        "alpha_bar_t": ab_t,
        "weight": weight,
        "snr_gap": snr_gap,
    }


def invariance_derivation() -> dict:
    """L_∞'s integrand for x ∼ N(0, v I_D) under an arbitrary schedule λ(t).

    The invariance of ``eq-vlb-invariance``. With error D v/(1 + v SNR) the integrand
    −½ SNR′(t) D v/(1 + v SNR(t)) is the t-derivative of F(λ(t)) =
    −(D/2) log(1 + v e^{λ(t)}), a function of λ alone, so ∫_0^1 = F(λ(1)) − F(λ(0)).
    Returns ``{"integrand", "antiderivative", "t", "lam"}`` (``lam`` an undefined
    sympy function).
    """
    t = sp.Symbol("t", real=True)
    v, d = sp.symbols("v D", positive=True)
    # any schedule: λ(t) is an undefined function, SNR(t) = e^{λ(t)}
    lam = sp.Function("lambda")(t)
    snr = sp.exp(lam)
    # −½ SNR′(t) times the optimal denoiser's error D v/(1 + v SNR(t))
    integrand = -sp.Rational(1, 2) * sp.diff(snr, t) * d * v / (1 + v * snr)
    # a function of λ(t) alone whose t-derivative is the integrand
    antiderivative = -d / 2 * sp.log(1 + v * snr)
    return {
        "integrand": integrand,
        "antiderivative": antiderivative,
        "t": t,
        "lam": lam,
    }


def continuous_limit_derivation() -> dict:
    """T (SNR(t − 1/T) − SNR(t)) → −SNR′(t) as T → ∞, for a symbolic SNR.

    The limit behind ``eq-vlb-continuous``, on a linear log-SNR from λ_max to λ_min.
    """
    t, T = sp.symbols("t T", positive=True)
    lmax, lmin = sp.symbols(r"\lambda_{max} \lambda_{min}", real=True)
    snr = sp.Lambda(t, sp.exp(lmax + (lmin - lmax) * t))
    # T steps of width 1/T: the SNR drop of one step, times T
    limit = sp.limit(T * (snr(t - 1 / T) - snr(t)), T, sp.oo)
    return {
        "limit": sp.simplify(limit),
        "minus_snr_prime": sp.simplify(-sp.diff(snr(t), t)),
    }
