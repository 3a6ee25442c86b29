"""Sympy derivations of the forward marginal q(x_t | x_0) (chapter "The forward process"): by
composing the steps, and by induction.

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
