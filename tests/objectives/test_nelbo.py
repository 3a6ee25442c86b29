"""The terms of the bound, each against an independent calculation (eq-diffusion-elbo, eq-vlb-total)."""

import math

import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from diffusion_lessons import gaussians
from diffusion_lessons.data import oracles
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, betas_linear
from diffusion_lessons.objectives import nelbo
from diffusion_lessons.process import posterior

AB = alpha_bar_from_betas(betas_linear(100, 1e-3, 0.2))  # T = 100, ᾱ_0 = 1


def lam(ab):
    ab = torch.as_tensor(ab, dtype=torch.float64)
    return torch.log(ab) - torch.log1p(-ab)


def test_prior_kl_matches_torch_distributions():
    """The prior term of eq-diffusion-elbo against torch.distributions.kl_divergence."""
    x0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ab = 0.05
    q = torch.distributions.Normal(math.sqrt(ab) * x0, math.sqrt(1 - ab))
    p = torch.distributions.Normal(torch.zeros_like(x0), torch.ones_like(x0))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(nelbo.prior_kl(x0, lam(ab)), expected, atol=1e-12)


def test_denoising_kl_is_the_kl_of_the_two_gaussian_posteriors():
    """eq-denoising-snr: KL(q(x_{t-1}|x_t, x_0) ‖ q(x_{t-1}|x_t, x̂_0)) by the general Gaussian KL
    (posterior means and variance, gaussians.kl_diag_gaussians) = ½ (SNR_{t−1} − SNR_t) ‖x̂_0 − x_0‖²."""
    g = torch.Generator().manual_seed(0)
    x0, x0_hat, xt = (torch.randn(50, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (2, 10, 60, 100):
        mean_q, var = posterior.posterior_mean_var(x0, xt, AB[t], AB[t - 1])
        mean_p, _ = posterior.posterior_mean_var(x0_hat, xt, AB[t], AB[t - 1])
        log_var = torch.log(var).expand_as(mean_q)
        kl = gaussians.kl_diag_gaussians(mean_q, log_var, mean_p, log_var)
        got = nelbo.denoising_kl(x0, x0_hat, lam(AB[t - 1]), lam(AB[t]))
        torch.testing.assert_close(got, kl, rtol=1e-9, atol=1e-12)


def test_denoising_kl_keeps_its_digits_for_a_tiny_step():
    """The SNR gap e^{λ_t} expm1(λ_s − λ_t) against the same gap in exact rational arithmetic: a
    step of 1e-10 in λ. The ᾱ form SNR_s − SNR_t would cancel to ~1e-6 relative."""
    from fractions import Fraction

    lam_t, step = 2.0, 1e-10
    x0, x0_hat = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    got = nelbo.denoising_kl(x0, x0_hat, lam_t + step, lam_t).item()
    # ½ e^{λ_t}(e^{δ} − 1), with e^δ − 1 = δ + δ²/2 + δ³/6 (the rest is below 1e-40)
    d = Fraction(lam_t + step) - Fraction(lam_t)  # the δ that the two doubles really differ by
    expected = 0.5 * math.exp(lam_t) * float(d + d**2 / 2 + d**3 / 6)
    assert got == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("bins", [17, 256])
def test_discretized_reconstruction_is_the_bin_mass_of_scipy(bins):
    """Reconstruction term of eq-diffusion-elbo: bits/dim of a discretized Gaussian equals −log2 of the bin mass (scipy)."""
    levels = torch.tensor([0, 1, bins // 2, bins - 2, bins - 1], dtype=torch.float64)
    x0 = (2 * levels / (bins - 1) - 1)[None]  # (1, 5)
    mean = x0 + torch.tensor([[0.01, -0.02, 0.03, 0.0, -0.05]], dtype=torch.float64)
    scale = 0.04
    half = 1 / (bins - 1)
    expected_bits = 0.0
    for x, m in zip(x0[0].tolist(), mean[0].tolist(), strict=True):
        hi = 1.0 if x > 1 - half else norm.cdf((x + half - m) / scale)
        lo = 0.0 if x < -1 + half else norm.cdf((x - half - m) / scale)
        expected_bits += -math.log2(hi - lo)
    nats = nelbo.discretized_reconstruction_nll(x0, mean, math.log(scale), bins)
    bpd = nats.item() / (5 * math.log(2))
    assert bpd == pytest.approx(expected_bits / 5, rel=1e-9)


def test_gaussian_reconstruction_is_the_gaussian_nll():
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean = x0 * 0.9
    expected = -torch.distributions.Normal(mean, 0.1).log_prob(x0).sum(1)
    got = nelbo.gaussian_reconstruction_nll(x0, mean, math.log(0.1))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_ddpm_decoder_is_the_discretized_decoder_at_x0_hat():
    """DDPM's L_0 decoder N(μ_θ(x_1, 1), β_1), μ_θ = (x_1 − β_1/√(1 − ᾱ_1) ε̂)/√α_1 (Ho et al.
    eq. 11), written in α_1, β_1 and evaluated with scipy, is discretized_reconstruction_nll at
    x̂_0 = (x_1 − σ_1 ε̂)/√ᾱ_1 with log_scale = log σ_1, because ᾱ_0 = 1."""
    g = torch.Generator().manual_seed(3)
    bins, ab1 = 256, AB[1].item()
    k = torch.randint(0, bins, (2, 6), generator=g)
    x0 = (2 * k / (bins - 1) - 1).double()
    x1 = math.sqrt(ab1) * x0 + math.sqrt(1 - ab1) * torch.randn(
        x0.shape, generator=g, dtype=x0.dtype
    )
    eps_hat = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    alpha1, beta1 = ab1 / 1.0, 1 - ab1 / 1.0  # α_1 = ᾱ_1 / ᾱ_0
    mu = (x1 - beta1 / math.sqrt(1 - ab1) * eps_hat) / math.sqrt(alpha1)
    half, scale = 1 / (bins - 1), math.sqrt(beta1)
    hi = norm.cdf(((x0 + half - mu) / scale).numpy())
    lo = norm.cdf(((x0 - half - mu) / scale).numpy())
    hi[(k == bins - 1).numpy()], lo[(k == 0).numpy()] = 1.0, 0.0
    expected = -torch.log(torch.from_numpy(hi - lo)).sum(1)
    x0_hat = (x1 - math.sqrt(1 - ab1) * eps_hat) / math.sqrt(ab1)
    log_sigma_1 = 0.5 * math.log1p(-ab1)
    got = nelbo.discretized_reconstruction_nll(x0, x0_hat, log_sigma_1, bins)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_l_infinity_integrand_integrates_to_the_closed_form():
    """eq-vlb-continuous: scipy quad over t of diffusion_integrand, with ‖x̂ − x‖² the exact error
    D v/(1 + v SNR) of Gaussian data N(0, v I_D), equals the closed form of data.oracles."""
    v, dim, lmax, lmin = 0.5, 3, 6.0, -4.0

    def integrand(t):
        lam_t = torch.tensor([lmax + (lmin - lmax) * t**2], dtype=torch.float64)  # λ(t), g = t²
        dlam = torch.tensor([2 * (lmin - lmax) * t], dtype=torch.float64)
        err = math.sqrt(v / (1 + v * math.exp(lam_t.item())))  # per dimension
        x0, x0_hat = (
            torch.zeros(1, dim, dtype=torch.float64),
            torch.full((1, dim), err, dtype=torch.float64),
        )
        return nelbo.diffusion_integrand(x0, x0_hat, lam_t, dlam).item()

    value, _ = integrate.quad(integrand, 0, 1, limit=200, epsabs=0.0, epsrel=1e-12)
    exact = oracles.gaussian_continuous_loss_exact(v, dim, lmax, lmin)
    assert value == pytest.approx(exact, rel=1e-10)


def test_bad_input():
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="x0 has shape"):
        nelbo.denoising_kl(x0, torch.zeros(3, 3), 0.5, 0.1)
    with pytest.raises(ValueError, match="need finite log_snr_s > log_snr_t"):
        nelbo.denoising_kl(x0, x0, 0.1, 0.5)
    with pytest.raises(ValueError, match="need finite log_snr_s > log_snr_t"):
        nelbo.denoising_kl(x0, x0, math.inf, 0.5)
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        nelbo.discretized_reconstruction_nll(x0, x0, 0.0, 1)
    with pytest.raises(ValueError, match="x0 has shape"):
        nelbo.gaussian_reconstruction_nll(x0, torch.zeros(2, 2), 0.0)
    with pytest.raises(ValueError, match="x0 has shape"):
        nelbo.diffusion_integrand(x0, torch.zeros(3), torch.zeros(3), torch.zeros(3))
