"""Sympy derivations of the forward marginal q(x_t | x_0) (chapter "The forward process"):
by induction, and by composing the steps.

Each function returns sympy expressions, so a page can display them and a test can check
them; chapter 3 shows each function's source
(:func:`~diffusion_lessons.book.pages.show_source`) before it uses the result, so each is
written within the book's 88 columns.
"""

from __future__ import annotations

import sympy as sp


def forward_marginal_induction_step() -> dict[str, sp.Expr]:
    """The induction step behind ``eq-forward-marginal``.

    If x_{t-1} = √ᾱ_{t-1} x_0 + √(1 − ᾱ_{t-1}) ε, one more step gives mean coefficient
    √α_t √ᾱ_{t-1} and noise variance α_t (1 − ᾱ_{t-1}) + (1 − α_t). Returns those and
    their simplified forms, to compare with √ᾱ_t and 1 − ᾱ_t where ᾱ_t = α_t ᾱ_{t-1}.
    """
    a = sp.Symbol("alpha_t", positive=True)
    ab_prev = sp.Symbol(r"\bar{\alpha}_{t-1}", positive=True)
    # one step x_t = √α_t x_{t-1} + √(1 − α_t) ε_t, with x_{t-1} as supposed:
    # x_0's coefficient in x_{t-1}, scaled by √α_t
    mean_coef = sp.sqrt(a) * sp.sqrt(ab_prev)
    # the old noise, scaled by √α_t, and the new one are independent: variances add
    variance = a * (1 - ab_prev) + (1 - a)
    return {
        "alpha_t": a,
        "alpha_bar_prev": ab_prev,
        "mean_coef": mean_coef,
        "variance": variance,
        "variance_simplified": sp.expand(variance),
        "alpha_bar_t": a * ab_prev,
    }


def forward_marginal_by_composition(n: int) -> dict[str, sp.Expr]:
    """Compose n forward steps x_t = √α_t x_{t-1} + √(1 − α_t) ε_t, symbolically.

    Each step is ``eq-forward-step``. Writes x_n = c_0 x_0 + Σ_t c_t ε_t, the ε_t
    independent standard normals, and returns ``alphas`` (α_1, …, α_n), ``mean_coef``
    c_0, ``variance`` Σ_t c_t² and ``variance_simplified`` (expanded). The chapter shows
    that c_0 = √ᾱ_n and that the variance is 1 − ᾱ_n (``eq-forward-marginal``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be >= 1 (the number of steps, an int), got {n!r}")
    alphas = sp.symbols(f"alpha_1:{n + 1}", positive=True)
    # start at x_0: coefficient 1, no noise yet
    coef_x0 = sp.Integer(1)
    noise_coefs: list[sp.Expr] = []
    for a in alphas:
        # one step scales every coefficient so far by √α_t
        # and adds the new noise ε_t with coefficient √(1 − α_t)
        coef_x0 = sp.sqrt(a) * coef_x0
        noise_coefs = [sp.sqrt(a) * c for c in noise_coefs] + [sp.sqrt(1 - a)]
    # the ε_t are independent standard normals: Var(Σ_t c_t ε_t) = Σ_t c_t²
    variance = sp.Add(*(c**2 for c in noise_coefs))
    return {
        "alphas": alphas,
        "mean_coef": coef_x0,
        "variance": variance,
        "variance_simplified": sp.expand(variance),
    }
