"""Sympy checks of Tweedie's formula on a Gaussian and a two-point prior (chapter
"Tweedie's formula").

Chapter 7 shows the function's source
(:func:`~diffusion_lessons.book.pages.show_source`) before it uses the result, so it is
written within the book's 88 columns.
"""

from __future__ import annotations

import sympy as sp


def tweedie_derivations() -> dict:
    """Tweedie's formula (``eq-tweedie``) on two 1-D priors where sympy does everything.

    - ``"gaussian"``: x_0 ∼ N(μ, s²). Tweedie's (x_t + σ² q′/q)/√ᾱ against the Gaussian
      conditioning formula μ + √ᾱ s² (x_t − √ᾱ μ)/(ᾱ s² + σ²).
    - ``"two_points"``: x_0 = m_1 or m_2 with probabilities w, 1 − w (far from a
      Gaussian). Tweedie against Bayes' rule Σ_k m_k p(k | x_t).

    Each entry is ``(tweedie, direct)``; their difference simplifies to 0.
    """
    xt, mu, m1, m2 = sp.symbols("x_t mu m_1 m_2", real=True)
    a, s, w = sp.symbols(r"\bar{\alpha} s w", positive=True)
    sig2 = 1 - a

    def normal(x, mean, var):
        return sp.exp(-((x - mean) ** 2) / (2 * var)) / sp.sqrt(2 * sp.pi * var)

    def tweedie(q):
        # E[x_0 | x_t] = (x_t + σ² d/dx_t log q(x_t)) / √ᾱ
        return (xt + sig2 * sp.diff(sp.log(q), xt)) / sp.sqrt(a)

    # Gaussian prior: x_t ~ N(√ᾱ μ, ᾱ s² + σ²), and the posterior mean by conditioning
    q_gauss = normal(xt, sp.sqrt(a) * mu, a * s**2 + sig2)
    direct_gauss = mu + sp.sqrt(a) * s**2 * (xt - sp.sqrt(a) * mu) / (a * s**2 + sig2)
    # two points: q(x_t) = w N(√ᾱ m_1, σ²) + (1 − w) N(√ᾱ m_2, σ²), and Bayes' rule
    n1 = w * normal(xt, sp.sqrt(a) * m1, sig2)
    n2 = (1 - w) * normal(xt, sp.sqrt(a) * m2, sig2)
    direct_two = (m1 * n1 + m2 * n2) / (n1 + n2)
    return {
        "gaussian": (tweedie(q_gauss), direct_gauss),
        "two_points": (tweedie(n1 + n2), direct_two),
        "symbols": {
            "xt": xt,
            "mu": mu,
            "m1": m1,
            "m2": m2,
            "alpha_bar": a,
            "s": s,
            "w": w,
        },
    }
