"""The exact answers of data/oracles.py, each against a second, independent route."""

import math

import pytest
import torch

from diffusion_lessons.data import oracles, toy


def _levels(n, seed, low=-6.0, high=6.0):
    g = torch.Generator().manual_seed(seed)
    return torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=g), g


def test_mixture_denoiser_is_tweedie_from_the_exact_score_per_example():
    """eq-tweedie: E[x_0 | x_t] = (x_t + σ² ∇log q(x_t)) / √ᾱ, with a different λ in every row."""
    mix = toy.eight_gaussians()
    lam, g = _levels(40, 0)
    lam[:8] = 0.5  # repeated levels are computed together; they must still land in their rows
    xt = torch.randn(40, 2, generator=g, dtype=torch.float64) * 2
    got = oracles.mixture_denoiser(mix)(xt, lam)
    for b in range(40):
        ab = torch.sigmoid(lam[b]).item()
        score = mix.noised(ab).score(xt[b : b + 1])
        tweedie = (xt[b : b + 1] + (1 - ab) * score) / math.sqrt(ab)
        torch.testing.assert_close(got[b : b + 1], tweedie, rtol=1e-9, atol=1e-9)
    assert oracles.mixture_denoiser(mix)(xt.float(), lam).dtype == torch.float32


def test_gaussian_optimal_x0_is_the_one_component_mixture_denoiser():
    """x̂_0 = √ᾱ v x_t / (ᾱ v + σ²) against conditioning a single Gaussian component."""
    v = 0.3
    one = toy.GaussianMixture(
        torch.ones(1), torch.zeros(1, 3), v * torch.eye(3, dtype=torch.float64)[None]
    )
    lam, g = _levels(25, 1, -12.0, 12.0)
    xt = torch.randn(25, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        oracles.gaussian_optimal_x0(v)(xt, lam),
        oracles.mixture_denoiser(one)(xt, lam),
        rtol=1e-10,
        atol=1e-12,
    )


def test_gaussian_eps_loss_exact_against_quadrature():
    """E_t D v SNR/(1 + v SNR), λ(t) linear, by a fine midpoint rule in t (a second route)."""
    v, d, lmax, lmin = 0.7, 5, 9.0, -4.0
    n = 200_000
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    snr = torch.exp(lmax + (lmin - lmax) * t)
    quad = (d * v * snr / (1 + v * snr)).mean().item()
    assert oracles.gaussian_eps_loss_exact(v, d, lmax, lmin) == pytest.approx(quad, rel=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="data_var must be > 0"):
        oracles.gaussian_optimal_x0(0.0)
    with pytest.raises(ValueError, match="mixture must be a data.GaussianMixture"):
        oracles.mixture_denoiser("eight")
    with pytest.raises(ValueError, match=r"log_snr must have shape \(B,\) = \(4,\)"):
        oracles.mixture_denoiser(toy.two_gaussians())(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="need log_snr_max > log_snr_min"):
        oracles.gaussian_eps_loss_exact(1.0, 2, -1.0, 1.0)
