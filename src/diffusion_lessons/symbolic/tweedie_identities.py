"""Sympy checks of Tweedie's formula on a Gaussian and a two-point prior (chapter "Tweedie's
formula")."""

from __future__ import annotations


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
