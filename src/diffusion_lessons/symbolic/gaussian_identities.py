"""Sympy derivations of two Gaussian identities used from chapter 1 on: the posterior of a 1-D
Gaussian by completing the square and the KL between two 1-D Gaussians."""

from __future__ import annotations

import sympy as sp


def posterior_1d_by_completing_square() -> dict[str, sp.Expr]:
    """p(z | x) for z ~ N(0, 1), x | z ~ N(w z + b, s²), by completing the square (``eq-lg-posterior``).

    Returns the log joint (up to constants) and its quadratic coefficients: the posterior precision
    1 + w²/s² and mean w (x − b) / (s² + w²).
    """
    z, x, b = sp.symbols("z x b", real=True)
    w = sp.Symbol("w", real=True)
    s = sp.Symbol("s", positive=True)
    log_joint = -(z**2) / 2 - (x - w * z - b) ** 2 / (2 * s**2)
    poly = sp.Poly(sp.expand(log_joint), z)
    a2, a1 = poly.coeff_monomial(z**2), poly.coeff_monomial(z)
    precision = sp.simplify(-2 * a2)
    mean = sp.simplify(a1 / precision)
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
    """KL(N(m_q, s_q²) ‖ N(m_p, s_p²)) = E_q[log q − log p], taken symbolically (``eq-kl-gaussians``).

    Writes z = m_q + s_q ε and uses E[ε] = 0, E[ε²] = 1 on the expanded log-ratio.
    """
    mq, mp, eps = sp.symbols("m_q m_p epsilon", real=True)
    sq, s_p = sp.symbols("s_q s_p", positive=True)
    z = mq + sq * eps
    log_q = -sp.log(sq) - (z - mq) ** 2 / (2 * sq**2)
    log_p = -sp.log(s_p) - (z - mp) ** 2 / (2 * s_p**2)
    ratio = sp.Poly(sp.expand(log_q - log_p), eps)
    moments = {0: 1, 1: 0, 2: 1}
    kl = sum(c * moments[m[0]] for m, c in zip(ratio.monoms(), ratio.coeffs(), strict=True))
    closed = sp.log(s_p / sq) + (sq**2 + (mq - mp) ** 2) / (2 * s_p**2) - sp.Rational(1, 2)
    return {
        "m_q": mq,
        "m_p": mp,
        "s_q": sq,
        "s_p": s_p,
        "kl": sp.simplify(kl),
        "closed_form": closed,
    }
