"""q(x_{t-1} | x_t, x_0) and E[x_0 | x_t] for mixtures, against independent calculations."""

import math

import pytest
import sympy as sp
import torch

from diffusion_lessons.data import oracles, toy
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, betas_linear
from diffusion_lessons.process import posterior
from diffusion_lessons.symbolic import diffusion_posterior

CASES = [
    (0.9, 0.95, 0.3, -1.2),
    (0.2, 0.5, 1.5, 0.4),
    (0.01, 0.011, -0.7, 2.0),
    (0.0, 0.3, 0.2, 0.1),
]


@pytest.mark.parametrize("ab_t,ab_prev,x0,xt", CASES)
def test_posterior_matches_bayes_on_a_grid(ab_t, ab_prev, x0, xt):
    """eq-posterior: normalize q(x_t | x_{t-1}) q(x_{t-1} | x_0) numerically over x_{t-1}."""
    alpha = ab_t / ab_prev
    grid = torch.linspace(-12, 12, 400_001, dtype=torch.float64)
    log_w = -((xt - math.sqrt(alpha) * grid) ** 2) / (2 * (1 - alpha)) - (
        grid - math.sqrt(ab_prev) * x0
    ) ** 2 / (2 * (1 - ab_prev))
    w = torch.exp(log_w - log_w.max())
    w = w / w.sum()
    mean_grid = (w * grid).sum().item()
    var_grid = (w * (grid - mean_grid) ** 2).sum().item()
    mean, var = posterior.posterior_mean_var(
        torch.tensor([[x0]], dtype=torch.float64),
        torch.tensor([[xt]], dtype=torch.float64),
        ab_t,
        ab_prev,
    )
    assert mean.item() == pytest.approx(mean_grid, abs=1e-6)
    assert var.item() == pytest.approx(var_grid, rel=1e-5)


def test_posterior_matches_precision_addition():
    """eq-posterior: a product of Gaussians in x_{t-1} adds precisions and precision-weighted means."""
    g = torch.Generator().manual_seed(0)
    ab_prev = torch.rand(7, generator=g, dtype=torch.float64) * 0.9 + 0.05
    ab_t = ab_prev * (torch.rand(7, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    alpha = ab_t / ab_prev
    x0 = torch.randn(7, 3, generator=g, dtype=torch.float64)
    xt = torch.randn(7, 3, generator=g, dtype=torch.float64)
    # as a function of x_{t-1}: N(x_t; √α x, 1 − α) has precision α/(1 − α), "mean" x_t/√α
    prec = alpha / (1 - alpha) + 1 / (1 - ab_prev)
    mean_expected = (
        (alpha.sqrt() / (1 - alpha))[:, None] * xt + (ab_prev.sqrt() / (1 - ab_prev))[:, None] * x0
    ) / prec[:, None]
    mean, var = posterior.posterior_mean_var(x0, xt, ab_t, ab_prev)
    assert torch.allclose(mean, mean_expected, atol=1e-12)
    assert torch.allclose(var[:, 0], 1 / prec, atol=1e-12)


def test_sympy_derivation_gives_the_closed_form():
    """eq-posterior: completing the square reproduces the closed-form mean and variance."""
    d = diffusion_posterior.posterior_derivation()
    assert sp.simplify(d["mean"] - d["mean_expected"]) == 0
    assert sp.simplify(d["variance"] - d["variance_expected"]) == 0
    # and the closed form agrees numerically with posterior_coefs
    vals = {d["alpha_t"]: 0.9, d["alpha_bar_t"]: 0.45}
    c0, ct, var = posterior.posterior_coefs(0.45, 0.5)
    assert float(d["variance"].subs(vals)) == pytest.approx(var.item(), rel=1e-12)
    assert float(d["coef_x0"].subs(vals)) == pytest.approx(c0.item(), rel=1e-12)
    assert float(d["coef_xt"].subs(vals)) == pytest.approx(ct.item(), rel=1e-12)


def test_posterior_by_monte_carlo_regression():
    """eq-posterior: simulate x_{t-1} ~ q(·|x_0), x_t ~ q(x_t|x_{t-1}); regress x_{t-1} on x_t."""
    ab = alpha_bar_from_betas(betas_linear(1000))
    t = 300
    n = 200_000
    g = torch.Generator().manual_seed(1)
    x0 = 1.3
    x_prev = math.sqrt(ab[t - 1]) * x0 + math.sqrt(1 - ab[t - 1]) * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    alpha = (ab[t] / ab[t - 1]).item()
    xt = math.sqrt(alpha) * x_prev + math.sqrt(1 - alpha) * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    design = torch.stack([torch.ones(n, dtype=torch.float64), xt], 1)
    coef = torch.linalg.lstsq(design, x_prev[:, None]).solution[:, 0]
    resid_var = (x_prev - design @ coef).var().item()
    c0, ct, var = posterior.posterior_coefs(ab[t], ab[t - 1])
    # standard errors: slope se = sd_resid / (sd_xt √n); residual variance se = var √(2/n)
    se_slope = math.sqrt(var.item()) / (xt.std().item() * math.sqrt(n))
    assert abs(coef[1].item() - ct.item()) < 5 * se_slope
    assert abs(coef[0].item() - c0.item() * x0) < 5 * se_slope * (
        1 + abs(xt.mean().item())
    ) + 5 * math.sqrt(var.item() / n)
    assert abs(resid_var - var.item()) < 5 * var.item() * math.sqrt(2 / n)


@pytest.mark.parametrize("ab", [0.02, 0.3, 0.8, 0.999])
def test_mixture_posterior_mean_matches_tweedie(ab):
    """mixture_posterior_mean against Tweedie (eq-score-eps): E[x_0|x_t] = (x_t + σ² ∇log p_t(x_t)) / √ᾱ."""
    mix = toy.GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.0, 0.5], [1.5, -0.5]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]]]),
    )
    xt = mix.noised(ab).sample(500, generator=torch.Generator().manual_seed(2))
    tweedie = (xt + (1 - ab) * mix.noised(ab).score(xt)) / math.sqrt(ab)
    assert torch.allclose(oracles.mixture_posterior_mean(mix, xt, ab), tweedie, atol=1e-9)


def test_mixture_posterior_mean_by_importance_weighting():
    """mixture_posterior_mean by Monte Carlo: E[x_0|x_t] ∝ E_{x_0~p}[x_0 q(x_t|x_0)]."""
    mix = toy.eight_gaussians()
    ab = 0.4
    n = 400_000
    x0 = mix.sample(n, generator=torch.Generator().manual_seed(3))
    xt = torch.tensor([[0.3, -0.8], [1.5, 1.0], [0.0, 0.0]], dtype=torch.float64)
    exact = oracles.mixture_posterior_mean(mix, xt, ab)
    for j in range(len(xt)):
        logw = -((xt[j] - math.sqrt(ab) * x0) ** 2).sum(1) / (2 * (1 - ab))
        w = torch.softmax(logw, 0)
        est = (w[:, None] * x0).sum(0)
        ess = 1 / (w**2).sum()
        # standard error from the weighted spread and the effective sample size
        se = ((w[:, None] * (x0 - est) ** 2).sum(0) / ess).sqrt()
        assert ((est - exact[j]).abs() < 5 * se + 1e-3).all(), (est, exact[j], se)


def test_mixture_posterior_mean_limits():
    mix = toy.two_gaussians()
    xt = torch.randn(10, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.allclose(oracles.mixture_posterior_mean(mix, xt, 1.0), xt, atol=1e-12)
    assert torch.allclose(
        oracles.mixture_posterior_mean(mix, xt, 0.0), mix.mean().expand(10, 2), atol=1e-12
    )


def test_bad_input():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="x0 has shape"):
        posterior.posterior_mean_var(z, torch.zeros(2, 4), 0.5, 0.6)
    with pytest.raises(ValueError, match="alpha_bar must be smaller than alpha_bar_prev"):
        posterior.posterior_mean_var(z, z, 0.6, 0.5)
    with pytest.raises(ValueError, match="alpha_bar has shape"):
        posterior.posterior_mean_var(z, z, torch.full((3,), 0.5), torch.full((3,), 0.6))
    mix = toy.two_gaussians()
    with pytest.raises(ValueError, match=r"xt must have shape \(N, 2\)"):
        oracles.mixture_posterior_mean(mix, torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \[0, 1\]"):
        oracles.mixture_posterior_mean(mix, torch.zeros(4, 2), 1.5)


def test_denoising_weight_is_half_the_snr_drop():
    """eq-denoising-snr: c_0² / (2σ̃²) = ½ (SNR(t−1) − SNR(t)), symbolically and numerically."""
    d = diffusion_posterior.denoising_weight_derivation()
    assert sp.simplify(d["weight"] - d["weight_expected"]) == 0
    c0, _, var = posterior.posterior_coefs(0.3, 0.4)
    assert (c0**2 / (2 * var)).item() == pytest.approx(0.5 * (0.4 / 0.6 - 0.3 / 0.7), rel=1e-12)
