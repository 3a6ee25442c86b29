"""Symbolic derivations (sympy) that the chapters show and the tests re-run.

Each function returns sympy expressions, so a page can display them and a test can check them.
"""

from __future__ import annotations

import sympy as sp


def forward_marginal_by_composition(n: int) -> dict[str, sp.Expr]:
    """Compose n forward steps x_t = √α_t x_{t-1} + √(1 − α_t) ε_t symbolically (``eq-forward-step``).

    Writes x_n = c_0 x_0 + Σ_t c_t ε_t with independent standard-normal ε_t, and returns
    ``{"alphas": (α_1, …, α_n), "mean_coef": c_0, "variance": Σ_t c_t²,
    "variance_simplified": expanded form}``. The chapter shows that c_0 = √ᾱ_n and that the variance
    equals 1 − ᾱ_n (``eq-forward-marginal``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    alphas = sp.symbols(f"alpha_1:{n + 1}", positive=True)
    coef_x0 = sp.Integer(1)
    noise_coefs: list[sp.Expr] = []
    for a in alphas:
        # x_t = √a · (coef_x0 x_0 + Σ c ε) + √(1 − a) ε_t
        coef_x0 = sp.sqrt(a) * coef_x0
        noise_coefs = [sp.sqrt(a) * c for c in noise_coefs] + [sp.sqrt(1 - a)]
    variance = sp.Add(*(c**2 for c in noise_coefs))
    return {
        "alphas": alphas,
        "mean_coef": coef_x0,
        "variance": variance,
        "variance_simplified": sp.expand(variance),
    }


def forward_marginal_induction_step() -> dict[str, sp.Expr]:
    """The induction step behind ``eq-forward-marginal``.

    If x_{t-1} = √ᾱ_{t-1} x_0 + √(1 − ᾱ_{t-1}) ε, one more step gives mean coefficient
    √α_t √ᾱ_{t-1} and noise variance α_t (1 − ᾱ_{t-1}) + (1 − α_t) (the sum of two independent
    Gaussian variances). Returns those and their simplified forms, to compare with √ᾱ_t and 1 − ᾱ_t
    where ᾱ_t = α_t ᾱ_{t-1}.
    """
    a = sp.Symbol("alpha_t", positive=True)
    ab_prev = sp.Symbol(r"\bar{\alpha}_{t-1}", positive=True)
    mean_coef = sp.sqrt(a) * sp.sqrt(ab_prev)
    variance = a * (1 - ab_prev) + (1 - a)
    return {
        "alpha_t": a,
        "alpha_bar_prev": ab_prev,
        "mean_coef": mean_coef,
        "variance": variance,
        "variance_simplified": sp.expand(variance),
        "alpha_bar_t": a * ab_prev,
    }


# --- chapter 1: the linear-Gaussian posterior and the Gaussian KL ---


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
