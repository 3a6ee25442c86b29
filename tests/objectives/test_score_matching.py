"""Score matching (chapter 8): the objectives differ by constants, checked by exact Monte Carlo
against the sympy derivation; the denoising minimizer is Tweedie's posterior mean.

Oracles: symbolic.score_matching's constants (Vincent's and Hyvärinen's), evaluated at the
numbers used here; the exact score of Gaussian data and of a noised 2-D mixture (data.toy)
turned into a denoiser by Tweedie's formula (eq-tweedie). Paired differences (the same x_0, ε
for both objectives) have a small spread, so 4.5 standard errors is a sharp tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lessons import divergence
from diffusion_lessons.data.toy import GaussianMixture
from diffusion_lessons.montecarlo import mean_se
from diffusion_lessons.objectives import score_matching
from diffusion_lessons.symbolic.score_matching import dsm_minus_esm

pytestmark = pytest.mark.usefixtures("one_thread")

MU, TAU, LAM, DIM, N = 0.4, 0.8, 0.5, 2, 50_000


def noised(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x0 = MU + TAU * torch.randn(n, DIM, dtype=torch.float64, generator=gen)
    eps = torch.randn(n, DIM, dtype=torch.float64, generator=gen)
    a, s = math.sqrt(1 / (1 + math.exp(-LAM))), math.sqrt(1 / (1 + math.exp(LAM)))
    return x0, eps, a * x0 + s * eps, a, s


def from_score(score):
    """The denoiser whose score is ``score`` at every level: (x + σ² s(x))/√ᾱ (eq-tweedie)."""

    def denoiser(xt, log_snr):
        ab = torch.sigmoid(log_snr.double())[:, None]
        return (xt + (1 - ab) * score(xt)) / ab.sqrt()

    return denoiser


def gaussian_model(m, v):
    return lambda x: -(x - m) / v


@pytest.fixture(scope="module")
def constants():
    """Vincent's and Hyvärinen's constants at (μ, τ, √ᾱ, σ), per dimension, from sympy."""
    out = dsm_minus_esm()
    _, _, _, a, s = noised(2, 0)
    sym = out["symbols"]
    vals = {sym["mu"]: MU, sym["tau"]: TAU, sym["a"]: a, sym["sigma"]: s}
    return float(out["dsm_minus_esm"].subs(vals)), float(out["esm_minus_ism"].subs(vals))


@pytest.mark.parametrize(("m", "v"), [(0.0, 1.0), (0.5, 0.3), (-1.0, 2.0)])
def test_dsm_is_esm_plus_vincents_constant(constants, m, v):
    """Mean over n = 50,000 of J_DSM − J_ESM (paired) equals the sympy constant × D within 4.5
    standard errors, whatever the Gaussian model (m, v)."""
    x0, eps, xt, a, s = noised(N, 1)
    var_t = a**2 * TAU**2 + s**2
    model = gaussian_model(m, v)
    dsm = score_matching.denoising_score_matching(from_score(model), x0, LAM, eps)
    esm = score_matching.explicit_score_matching(model, lambda x: -(x - a * MU) / var_t, xt)
    assert mean_se(dsm - esm).within(DIM * constants[0]), (mean_se(dsm - esm), constants)


def test_esm_is_ism_plus_hyvarinens_constant(constants):
    """Mean of J_ESM − J_ISM equals ½ E‖∇ log q_t‖² = D/(2 w) from sympy within 4.5 standard
    errors, for a Gaussian model and for a nonlinear one (the identity holds for any model)."""
    _, _, xt, a, s = noised(N, 2)
    var_t = a**2 * TAU**2 + s**2

    def true_score(x):
        return -(x - a * MU) / var_t

    for model in (gaussian_model(0.5, 0.3), lambda x: torch.tanh(x) - 0.3 * x**3):
        esm = score_matching.explicit_score_matching(model, true_score, xt)
        ism = score_matching.implicit_score_matching(model, xt)
        assert mean_se(esm - ism).within(DIM * constants[1]), (mean_se(esm - ism), constants)


def test_implicit_score_matching_trace_term():
    """For s(x) = −(x − m)/v the trace is −D/v, so J_ISM = −D/v + ½ ‖s‖² exactly."""
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ism = score_matching.implicit_score_matching(gaussian_model(0.2, 0.5), x)
    torch.testing.assert_close(ism, -3 / 0.5 + 0.5 * ((x - 0.2) / 0.5).pow(2).sum(1))


def test_dsm_minimizer_is_tweedies_posterior_mean():
    """On a 2-D mixture, s* = ∇ log q_t (Tweedie's posterior mean read as a score) satisfies the
    normal equations of DSM: for any direction δ(x), J_DSM(s* + δ) − J_DSM(s*) − ½ ‖δ‖² =
    δ · (s* + ε/σ) has mean 0 (within 4.5 standard errors, n = 50,000; measured z = 1.6, 1.7,
    −0.6 for δ = tanh, identity, a constant). A wrong candidate, the clean data's score ∇ log p_0
    at x_t, fails the same check by far (measured z = −48, −63, −3; asserted beyond 10)."""
    covs = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]])
    mix = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.5, 0.5], [1.0, -0.5]]), covs)
    gen = torch.Generator().manual_seed(4)
    x0 = mix.sample(N, generator=gen)
    eps = torch.randn(N, 2, dtype=torch.float64, generator=gen)
    ab = 1 / (1 + math.exp(-LAM))

    def check(s_star, z):
        base = score_matching.denoising_score_matching(from_score(s_star), x0, LAM, eps)
        for delta in (
            torch.tanh,
            lambda x: x,
            lambda x: torch.ones_like(x) * torch.tensor([1.0, -2.0]),
        ):
            moved = score_matching.denoising_score_matching(
                from_score(lambda x, d=delta: s_star(x) + 0.3 * d(x)), x0, LAM, eps
            )
            a, s = math.sqrt(ab), math.sqrt(1 - ab)
            half_sq = 0.5 * (0.3 * delta(a * x0 + s * eps)).pow(2).sum(1)
            yield mean_se(moved - base - half_sq).within(0.0, z=z)

    assert all(check(mix.noised(ab).score, 4.5))
    assert not all(check(mix.score, 10.0))  # the clean data's score: z = −48, −63, −3


def test_bad_input_names_the_argument():
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    d = from_score(gaussian_model(0.0, 1.0))
    with pytest.raises(ValueError, match="eps has shape"):
        score_matching.denoising_score_matching(d, x0, 0.0, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="true_score"):
        score_matching.explicit_score_matching(lambda x: x, lambda x: x[:, :1], x0)
    with pytest.raises(ValueError, match="probe has shape"):
        divergence.hutchinson_divergence(lambda x: x, x0, torch.zeros(4, 1))
