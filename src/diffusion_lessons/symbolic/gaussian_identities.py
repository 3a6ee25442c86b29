"""Sympy derivations of two Gaussian identities used from chapter 1 on: the posterior of a
1-D Gaussian by completing the square and the KL between two 1-D Gaussians.

Chapter 1 shows each function's source (:func:`~diffusion_lessons.book.pages.show_source`)
before it uses the result, so each reads as the derivation on paper, one named step a line,
within the book's 88 columns.
"""

from __future__ import annotations

import sympy as sp


def posterior_1d_by_completing_square() -> dict[str, sp.Expr]:
    """p(z | x) for z ~ N(0, 1), x | z ~ N(w z + b, s²), completing the square.

    The 1-D case of ``eq-lg-posterior``. Returns the symbols, the log joint (up to
    constants) and, read off its quadratic in z, the posterior ``precision`` 1 + w²/s²,
    ``variance`` and ``mean`` w (x − b) / (s² + w²).
    """
    z, x, b = sp.symbols("z x b", real=True)
    w = sp.Symbol("w", real=True)
    s = sp.Symbol("s", positive=True)
    # log p(z) + log p(x | z), dropping the terms free of z
    log_joint = -(z**2) / 2 - (x - w * z - b) ** 2 / (2 * s**2)
    # as a quadratic in z: c_2 z² + c_1 z + c_0
    c2 = sp.expand(log_joint).coeff(z, 2)
    c1 = sp.expand(log_joint).coeff(z, 1)
    # N(m, v) has log-density −z²/(2v) + z m/v + const: match the coefficients
    precision = sp.simplify(-2 * c2)  # 1/v = −2 c_2
    mean = sp.simplify(c1 / precision)  # m = c_1 v
    return {
        "z": z,
        "x": x,
        "w": w,
        "b": b,
        "s": s,
        "log_joint": log_joint,
        "precision": precision,
        "variance": sp.simplify(1 / precision),
        "mean": mean,
    }


def gaussian_kl_1d() -> dict[str, sp.Expr]:
    """KL(N(m_q, s_q²) ‖ N(m_p, s_p²)) = E_q[log q − log p], taken symbolically.

    The 1-D case of ``eq-kl-gaussians``. Returns the symbols, ``kl`` (the expectation,
    simplified) and ``closed_form`` (the book's formula, to compare with).
    """
    m_q, m_p, eps = sp.symbols("m_q m_p epsilon", real=True)
    s_q, s_p = sp.symbols("s_q s_p", positive=True)
    # a draw from q through a standard normal ε
    z = m_q + s_q * eps
    # the two log-densities at z, dropping the −½ log 2π they share
    log_q = -sp.log(s_q) - (z - m_q) ** 2 / (2 * s_q**2)
    log_p = -sp.log(s_p) - (z - m_p) ** 2 / (2 * s_p**2)
    # log q − log p is a quadratic in ε: c_0 + c_1 ε + c_2 ε²
    c0, c1, c2 = (sp.expand(log_q - log_p).coeff(eps, k) for k in range(3))
    # its expectation, with E[ε] = 0 and E[ε²] = 1
    kl = sp.simplify(c0 + c1 * 0 + c2 * 1)
    # eq-kl-gaussians, to compare with
    quadratic = (s_q**2 + (m_q - m_p) ** 2) / (2 * s_p**2)
    closed_form = sp.log(s_p / s_q) + quadratic - sp.S.Half
    return {
        "m_q": m_q,
        "m_p": m_p,
        "s_q": s_q,
        "s_p": s_p,
        "kl": kl,
        "closed_form": closed_form,
    }
