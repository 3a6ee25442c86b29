"""The sympy derivations of eq-forward-marginal, checked symbolically and against arithmetic."""

import math
import random

import pytest
import sympy as sp
import torch

from diffusion_lessons.latent import linear_gaussian
from diffusion_lessons.symbolic import forward_marginal, gaussian_identities


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_composition_gives_alpha_bar(n):
    """eq-forward-marginal: n composed steps have mean coefficient √ᾱ_n and variance 1 − ᾱ_n."""
    out = forward_marginal.forward_marginal_by_composition(n)
    ab = sp.Mul(*out["alphas"])
    assert sp.simplify(out["mean_coef"] - sp.sqrt(ab)) == 0
    assert sp.simplify(out["variance"] - (1 - ab)) == 0
    assert sp.expand(out["variance_simplified"] - (1 - ab)) == 0


def test_composition_by_plain_arithmetic():
    """The same composition done with floats, step by step, independently of sympy."""
    rng = random.Random(0)
    alphas = [rng.uniform(0.5, 0.99) for _ in range(4)]
    coef, var = 1.0, 0.0
    for a in alphas:
        coef, var = math.sqrt(a) * coef, a * var + (1 - a)
    out = forward_marginal.forward_marginal_by_composition(4)
    subs = dict(zip(out["alphas"], alphas, strict=True))
    assert float(out["mean_coef"].subs(subs)) == pytest.approx(coef)
    assert float(out["variance"].subs(subs)) == pytest.approx(var)


def test_induction_step():
    step = forward_marginal.forward_marginal_induction_step()
    assert sp.simplify(step["variance"] - (1 - step["alpha_bar_t"])) == 0
    assert sp.simplify(step["mean_coef"] ** 2 - step["alpha_bar_t"]) == 0


def test_composition_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be >= 1"):
        forward_marginal.forward_marginal_by_composition(0)


def test_sympy_posterior_1d_matches_library():
    """eq-lg-posterior in 1-D by completing the square, against linear_gaussian.linear_gaussian_posterior."""
    d = gaussian_identities.posterior_1d_by_completing_square()
    w, s, x, b = 1.3, 0.6, 0.9, -0.2
    subs = {d["w"]: w, d["s"]: s, d["x"]: x, d["b"]: b}
    model = linear_gaussian.LinearGaussian(
        torch.tensor([[w]], dtype=torch.float64), torch.tensor([b], dtype=torch.float64), s
    )
    mean, cov = linear_gaussian.linear_gaussian_posterior(
        model, torch.tensor([[x]], dtype=torch.float64)
    )
    assert math.isclose(float(d["mean"].subs(subs)), mean.item(), rel_tol=1e-12)
    assert math.isclose(float(d["variance"].subs(subs)), cov.item(), rel_tol=1e-12)


def test_sympy_gaussian_kl_is_the_closed_form():
    """eq-kl-gaussians in 1-D."""
    d = gaussian_identities.gaussian_kl_1d()
    assert sp.simplify(d["kl"] - d["closed_form"]) == 0
