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
