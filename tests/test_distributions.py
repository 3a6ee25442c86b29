"""Gaussian densities and KLs against torch.distributions, Monte Carlo and direct sums."""

import math

import pytest
import torch
from torch.distributions import Normal

from diffusion_lessons import distributions as dist


def test_gaussian_log_prob_matches_torch_distributions():
    x, m, lv = torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    expected = Normal(m, (0.5 * lv).exp()).log_prob(x).sum((1, 2))
    assert torch.allclose(dist.gaussian_log_prob(x, m, lv), expected, atol=1e-5)


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mq, lvq, mp, lvp = (torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.5 for _ in range(4))
    n = 400_000
    z = mq + (0.5 * lvq).exp() * torch.randn(n, 2, 3, generator=g, dtype=torch.float64)
    log_ratio = Normal(mq, (0.5 * lvq).exp()).log_prob(z) - Normal(mp, (0.5 * lvp).exp()).log_prob(
        z
    )
    mc = log_ratio.sum(-1)  # (n, 2)
    exact = dist.kl_diag_gaussians(mq, lvq, mp, lvp)
    se = mc.std(0) / math.sqrt(n)
    assert (torch.abs(mc.mean(0) - exact) < 5 * se).all()


def test_kl_standard_normal_is_the_special_case():
    m, lv = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.allclose(
        dist.kl_standard_normal(m, lv),
        dist.kl_diag_gaussians(m, lv, torch.zeros(()), torch.zeros(())),
        atol=1e-5,
    )
    assert torch.allclose(
        dist.kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2)
    )


def test_discretized_gaussian_sums_to_one_over_all_pixel_values():
    values = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1  # every 8-bit value in [−1, 1]
    for mean, log_scale in [(0.0, math.log(0.1)), (0.9, math.log(0.02)), (-1.2, math.log(0.5))]:
        lp = dist.discretized_gaussian_log_prob(
            values[:, None],
            torch.full((256, 1), mean, dtype=torch.float64),
            torch.full((256, 1), log_scale, dtype=torch.float64),
        )
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_gaussian_matches_cdf_differences():
    """An interior bin's probability is Φ((x + h − μ)/σ) − Φ((x − h − μ)/σ), computed with scipy."""
    from scipy.stats import norm

    x = torch.tensor([[10 * 2 / 255 - 1]], dtype=torch.float64)
    mean, sigma = -0.9, 0.05
    h = 1 / 255
    expected = math.log(
        norm.cdf((x.item() + h - mean) / sigma) - norm.cdf((x.item() - h - mean) / sigma)
    )
    got = dist.discretized_gaussian_log_prob(
        x, torch.full_like(x, mean), torch.full_like(x, math.log(sigma))
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_bits_per_dim():
    assert dist.bits_per_dim(784 * math.log(2), 784).item() == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(ValueError, match=r"shapes must agree: x \(2, 3\), mean \(2, 4\)"):
        dist.gaussian_log_prob(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x must be scaled to \[-1, 1\]"):
        dist.discretized_gaussian_log_prob(
            torch.full((1, 2), 3.0), torch.zeros(1, 2), torch.zeros(1, 2)
        )


def _spd(k, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, k, k, generator=g, dtype=torch.float64)
    return a @ a.transpose(1, 2) + 0.5 * torch.eye(k, dtype=torch.float64)


def test_full_covariance_log_prob_and_kl_match_torch_distributions():
    """eq-kl-gaussians, and the full-covariance density, against torch.distributions."""
    from torch.distributions import MultivariateNormal, kl_divergence

    g = torch.Generator().manual_seed(0)
    mq, mp, x = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    cq, cp = _spd(3, 1), _spd(3, 2)
    expected = kl_divergence(MultivariateNormal(mq, cq), MultivariateNormal(mp, cp))
    assert torch.allclose(dist.kl_gaussians_full(mq, cq, mp, cp), expected, atol=1e-10)
    assert torch.allclose(
        dist.mvn_log_prob(x, mq, cq), MultivariateNormal(mq, cq).log_prob(x), atol=1e-10
    )
