"""Sympy: the three score-matching objectives on Gaussian data and a Gaussian model differ by
constants (chapter 8, "Score-based models").

Data x_0 ~ N(μ, τ²) in one dimension (D dimensions with independent coordinates add D such
terms), noised to x_t = a x_0 + σ ε, so that x_t ~ q_t = N(a μ, a² τ² + σ²); the model is the
score of a Gaussian N(m, v), s(x) = −(x − m)/v, with free parameters m and v. Each expectation
is taken exactly, by writing x_0 = μ + τ z_1, ε = z_2 with z_1, z_2 independent N(0, 1) and
replacing each monomial z_1^j z_2^k by its moment.
"""

from __future__ import annotations


def _standard_normal_moment(k: int) -> int:
    """E[z^k] for z ~ N(0, 1): 0 for odd k, (k − 1)!! for even k."""
    if k % 2:
        return 0
    out = 1
    for j in range(k - 1, 0, -2):
        out *= j
    return out


def gaussian_expectation(expr, zs):
    """E[expr] over independent standard normals ``zs`` for an ``expr`` polynomial in them."""
    import sympy as sp

    poly = sp.Poly(sp.expand(expr), *zs)
    total = sp.Integer(0)
    for powers, coef in poly.terms():
        moment = 1
        for k in powers:
            moment *= _standard_normal_moment(k)
        total += coef * moment
    return sp.simplify(total)


def dsm_minus_esm() -> dict:
    """J_DSM, J_ESM and J_ISM in closed form, and their differences, which are free of m and v.

    Returns a dict with the three objectives (``"dsm"``, ``"esm"``, ``"ism"``, expressions in
    the model's m, v and the data's μ, τ, a, σ), the differences ``"dsm_minus_esm"`` =
    ½ (1/σ² − 1/(a²τ² + σ²)) and ``"esm_minus_ism"`` = ½ E[(∂_x log q_t)²] = ½ / (a²τ² + σ²),
    and ``"symbols"``. The first is Vincent's (2011) constant, the second Hyvärinen's (2005).
    """
    import sympy as sp

    m, mu = sp.symbols("m mu", real=True)
    v, tau, a, sigma = sp.symbols("v tau a sigma", positive=True)
    z1, z2 = sp.symbols("z_1 z_2", real=True)
    xt = a * (mu + tau * z1) + sigma * z2
    var_t = a**2 * tau**2 + sigma**2

    def model_score(x):
        return -(x - m) / v

    true_score = -(xt - a * mu) / var_t
    dsm = gaussian_expectation(sp.Rational(1, 2) * (model_score(xt) + z2 / sigma) ** 2, (z1, z2))
    esm = gaussian_expectation(sp.Rational(1, 2) * (model_score(xt) - true_score) ** 2, (z1, z2))
    x = sp.Symbol("x", real=True)
    trace = sp.diff(model_score(x), x)  # −1/v, constant in x
    ism = gaussian_expectation(trace + sp.Rational(1, 2) * model_score(xt) ** 2, (z1, z2))
    return {
        "dsm": dsm,
        "esm": esm,
        "ism": ism,
        "dsm_minus_esm": sp.simplify(dsm - esm),
        "esm_minus_ism": sp.simplify(esm - ism),
        "symbols": {"m": m, "v": v, "mu": mu, "tau": tau, "a": a, "sigma": sigma},
    }
