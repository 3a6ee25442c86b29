"""Conversions between x_0, ε and score: round trips and the exact score of a Gaussian."""

import itertools

import pytest
import torch

from diffusion_lessons import parameterizations as P


@pytest.mark.parametrize("source,target", list(itertools.permutations(P.PARAMETERIZATIONS, 2)))
def test_round_trips(source, target):
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ab = torch.rand(5, generator=g, dtype=torch.float64) * 0.98 + 0.01
    pred = torch.randn(5, 3, generator=g, dtype=torch.float64)
    there = P.convert(pred, source=source, target=target, xt=xt, alpha_bar=ab)
    back = P.convert(there, source=target, target=source, xt=xt, alpha_bar=ab)
    assert torch.allclose(back, pred, atol=1e-10)


def test_true_noise_gives_true_x0_and_the_gaussian_score():
    """For x_0 ~ δ(x0), q(x_t | x_0) = N(√ᾱ x0, σ²I) has score −(x_t − √ᾱ x0)/σ² = −ε/σ."""
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    eps = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    ab = 0.36
    xt = 0.6 * x0 + 0.8 * eps
    assert torch.allclose(P.eps_to_x0(xt, eps, ab), x0)
    assert torch.allclose(P.x0_to_eps(xt, x0, ab), eps)
    assert torch.allclose(P.eps_to_score(xt, eps, ab), -(xt - 0.6 * x0) / 0.64)


def test_bad_input():
    xt = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"unknown source parameterization 'v'"):
        P.convert(xt, source="v", target="eps", xt=xt, alpha_bar=0.5)
    with pytest.raises(ValueError, match=r"pred has shape \(2, 4\) but xt has shape \(2, 3\)"):
        P.convert(torch.zeros(2, 4), source="x0", target="eps", xt=xt, alpha_bar=0.5)
    with pytest.raises(ValueError, match=r"alpha_bar has shape \(3,\) but xt has shape \(2, 3\)"):
        P.eps_to_x0(xt, xt, torch.full((3,), 0.5))


@pytest.mark.parametrize("param", P.PARAMETERIZATIONS)
def test_implied_weight_rescales_squared_errors(param):
    """eq-implied-weights: ‖pred − target‖² in each parameterization = w(ᾱ) ‖x̂_0 − x_0‖², via convert."""
    g = torch.Generator().manual_seed(1)
    x0, x0_hat, eps = (torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(3))
    ab = torch.rand(8, generator=g, dtype=torch.float64) * 0.98 + 0.01
    xt = ab.sqrt()[:, None] * x0 + (1 - ab).sqrt()[:, None] * eps
    pred = P.convert(x0_hat, source="x0", target=param, xt=xt, alpha_bar=ab)
    target = P.convert(x0, source="x0", target=param, xt=xt, alpha_bar=ab)
    ratio = ((pred - target) ** 2).sum(1) / ((x0_hat - x0) ** 2).sum(1)
    assert torch.allclose(ratio, P.implied_x0_weight(param, ab), rtol=1e-9)


def test_implied_weight_bad_input():
    with pytest.raises(ValueError, match="unknown parameterization 'v'"):
        P.implied_x0_weight("v", 0.5)
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\)"):
        P.implied_x0_weight("eps", 1.0)


def test_skip_x0_is_the_gaussian_posterior_mean_plus_a_correction():
    """SkipX0 with F_θ = 0 gives √ᾱ x_t, the exact E[x_0 | x_t] for N(0, I) data (eq-eps-to-x0)."""
    from diffusion_lessons import data, posterior

    ab = torch.tensor([1.0, 0.9, 0.5, 0.1], dtype=torch.float64)
    model = P.SkipX0(lambda x, t: torch.zeros_like(x), ab)
    standard = data.isotropic_mixture([1.0], [[0.0, 0.0]], 1.0)
    xt = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for i in (1, 2, 3):
        out = model(xt.float(), torch.full((6,), i / 3))
        exact = posterior.mixture_posterior_mean(standard, xt, ab[i].item())
        assert torch.allclose(out.double(), exact, atol=1e-6)
