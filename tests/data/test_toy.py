"""Toy data: exact densities against scipy and autograd, samples against their moments."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from diffusion_lessons.data import toy


def _random_mixture(seed=0, K=3, D=2):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) + 0.3 * torch.eye(D, dtype=torch.float64)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    return toy.GaussianMixture(
        w / w.sum(), torch.randn(K, D, generator=g, dtype=torch.float64), covs
    )


def test_mixture_log_prob_matches_scipy():
    gm = _random_mixture()
    x = torch.randn(50, 2, dtype=torch.float64)
    expected = np.log(
        sum(
            w * multivariate_normal(m, c).pdf(x.numpy())
            for w, m, c in zip(gm.weights.numpy(), gm.means.numpy(), gm.covs.numpy(), strict=True)
        )
    )
    assert np.allclose(gm.log_prob(x).numpy(), expected, rtol=1e-10)


def test_mixture_score_matches_autograd():
    gm = _random_mixture(1)
    x = torch.randn(40, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    assert torch.allclose(gm.score(x.detach()), grad, atol=1e-10)


def test_mixture_sample_moments():
    gm = _random_mixture(2)
    n = 200_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(0))
    cov = gm.covariance()
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert (torch.abs(x.mean(0) - gm.mean()) < 5 * se).all()
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.03, atol=0.03)


def test_noised_mixture_is_the_law_of_xt():
    """noised(ᾱ) against Monte Carlo of x_t = √ᾱ x_0 + √(1 − ᾱ) ε: moments and log-likelihood."""
    gm = toy.eight_gaussians()
    ab = 0.3
    n = 100_000
    g = torch.Generator().manual_seed(3)
    x0 = gm.sample(n, generator=g)
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(
        x0.shape, generator=g, dtype=torch.float64
    )
    law = gm.noised(ab)
    assert torch.allclose(xt.mean(0), law.mean(), atol=0.02)
    assert torch.allclose(torch.cov(xt.T), law.covariance(), atol=0.03)
    # The true law has the highest expected log-likelihood; a wrong variance does worse.
    wrong = toy.GaussianMixture(law.weights, law.means, law.covs * 1.3)
    assert law.log_prob(xt).mean() > wrong.log_prob(xt).mean()


def test_mixture_rejects_bad_parameters():
    with pytest.raises(ValueError, match="weights must be positive and sum to 1"):
        toy.isotropic_mixture([0.5, 0.6], [[0.0, 0.0], [1.0, 1.0]], 1.0)
    with pytest.raises(ValueError, match="symmetric positive definite"):
        toy.GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        toy.eight_gaussians().log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \[0, 1\]"):
        toy.eight_gaussians().noised(1.5)


def test_checkerboard_density_integrates_to_one_and_covers_samples():
    cb = toy.Checkerboard()
    h = 0.01
    g = torch.arange(-2.5 + h / 2, 2.5, h, dtype=torch.float64)
    pts = torch.cartesian_prod(g, g)
    assert (cb.log_prob(pts).exp().sum() * h * h).item() == pytest.approx(1.0, abs=1e-3)
    samples = cb.sample(5000, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(cb.log_prob(samples)).all()


def test_noised_mixtures_are_built_once_per_level_and_the_store_is_bounded(monkeypatch):
    """A sampler asks for the same ᾱ at every run: the noised mixture is reused, it equals one
    built afresh, and the store never holds more than its bound."""
    from diffusion_lessons.data import toy

    mix = toy.GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[1.0, -2.0], [0.5, 3.0]]),
        torch.tensor([[[1.0, 0.2], [0.2, 0.5]], [[0.4, 0.0], [0.0, 2.0]]]),
    )
    first = mix.noised(0.25)
    assert mix.noised(0.25) is first
    fresh = toy.GaussianMixture(mix.weights, 0.5 * mix.means, 0.25 * mix.covs + 0.75 * torch.eye(2))
    torch.testing.assert_close(first.covs, fresh.covs)
    torch.testing.assert_close(first.means, fresh.means)
    monkeypatch.setattr(toy, "_NOISED_CACHE_SIZE", 3)
    for a in (0.1, 0.2, 0.3, 0.4, 0.5):
        mix.noised(a)
    assert len(mix._noised) <= 3
    torch.testing.assert_close(mix.noised(0.25).covs, fresh.covs)
