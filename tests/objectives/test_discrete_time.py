"""Terms of the discrete-time diffusion ELBO and the training losses, against independent calculations."""

import math

import pytest
import torch
from scipy.stats import norm

from diffusion_lessons.data import oracles, toy
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, betas_linear
from diffusion_lessons.objectives import discrete_time
from diffusion_lessons.process import posterior

AB = alpha_bar_from_betas(betas_linear(100, 1e-3, 0.2))  # T = 100, ᾱ_0 = 1


def grid_model(fn, alpha_bar):
    """A model(x_t, t) whose output is fn(x_t, ᾱ_t), with ᾱ_t read from the grid at i = tT."""
    T = len(alpha_bar) - 1

    def model(xt, t):
        i = torch.round(t * T).long()
        out = torch.empty_like(xt)
        for step in i.unique().tolist():
            rows = i == step
            out[rows] = fn(xt[rows], alpha_bar[step].item()).to(xt)
        return out

    return model


def test_kl_equals_snr_weighted_mse():
    """eq-denoising-snr: KL of the two Gaussians = ½ (SNR(t−1) − SNR(t)) ‖x̂_0 − x_0‖²."""
    g = torch.Generator().manual_seed(0)
    x0, x0_hat, xt = (torch.randn(50, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (2, 10, 60, 100):
        kl = discrete_time.denoising_kl(x0, x0_hat, xt, AB[t], AB[t - 1])
        mse = discrete_time.snr_weighted_mse(x0, x0_hat, AB[t], AB[t - 1])
        assert torch.allclose(kl, mse, rtol=1e-9, atol=1e-12)


def test_prior_kl_matches_torch_distributions():
    """The prior term of eq-diffusion-elbo against torch.distributions.kl_divergence."""
    x0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ab = 0.05
    q = torch.distributions.Normal(math.sqrt(ab) * x0, math.sqrt(1 - ab))
    p = torch.distributions.Normal(torch.zeros_like(x0), torch.ones_like(x0))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(discrete_time.prior_kl(x0, ab), expected, atol=1e-12)


@pytest.mark.parametrize("bins", [17, 256])
def test_discretized_reconstruction_bits_per_dim_analytic(bins):
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
    nats = discrete_time.reconstruction_nll(x0, mean, math.log(scale), bins=bins)
    bpd = nats.item() / (5 * math.log(2))
    assert bpd == pytest.approx(expected_bits / 5, rel=1e-9)


def test_continuous_reconstruction_is_gaussian_nll():
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean = x0 * 0.9
    expected = -torch.distributions.Normal(mean, 0.1).log_prob(x0).sum(1)
    assert torch.allclose(
        discrete_time.reconstruction_nll(x0, mean, math.log(0.1)), expected, atol=1e-12
    )


def test_nelbo_of_exact_denoiser_bounds_the_true_nll():
    """eq-diffusion-elbo: with the exact E[x_0|x_t], −ELBO ≥ −log p(x_0) (on average), and is close."""
    mix = toy.two_gaussians()
    model = grid_model(lambda xt, ab: oracles.mixture_posterior_mean(mix, xt, ab), AB)
    x0 = mix.sample(4000, generator=torch.Generator().manual_seed(3))
    terms = discrete_time.nelbo_terms(
        model, x0, AB, parameterization="x0", generator=torch.Generator().manual_seed(4)
    )
    assert torch.allclose(
        terms["total"], terms["prior"] + terms["reconstruction"] + terms["diffusion"]
    )
    gap = terms["total"] - (-mix.log_prob(x0))
    se = gap.std().item() / math.sqrt(len(gap))
    assert gap.mean().item() > -4 * se
    # the gap is real (p_θ uses the variance of q(x_{t-1}|x_t,x_0), narrower than the true reverse
    # step), but it is a few nats, not the tens a wrong term would add
    assert gap.mean().item() < 5.0


def test_elbo_loss_is_unbiased_for_the_nelbo():
    """elbo_loss (one random step) averages to nelbo_terms' total (all steps)."""
    mix = toy.two_gaussians()

    def model(xt, t):  # any fixed denoiser will do: x̂_0 = a time-dependent shrinkage of x_t
        return xt * (1 - t)[:, None]

    x0 = mix.sample(200, generator=torch.Generator().manual_seed(5))
    exact = discrete_time.nelbo_terms(
        model, x0, AB, parameterization="x0", generator=torch.Generator().manual_seed(6)
    )
    g = torch.Generator().manual_seed(7)
    draws = torch.stack([discrete_time.elbo_loss(model, x0, g, alpha_bar=AB) for _ in range(1000)])
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact["total"].mean().item()) < 5 * se + 0.05


def test_bad_input():
    x0 = torch.zeros(3, 2)
    model = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match=r"unknown parameterization 'v'"):
        discrete_time.elbo_loss(model, x0, None, alpha_bar=AB, parameterization="v")
    with pytest.raises(ValueError, match=r"i must lie in 1..100"):
        discrete_time.predict_x0(model, x0, torch.tensor([0, 1, 2]), AB, parameterization="x0")
    with pytest.raises(ValueError, match="x0 has shape"):
        discrete_time.snr_weighted_mse(x0, torch.zeros(3, 3), 0.5, 0.6)
    with pytest.raises(ValueError, match="alpha_bar must decrease strictly"):
        discrete_time.nelbo_terms(model, x0, torch.tensor([1.0, 0.5, 0.7]), parameterization="x0")
    with pytest.raises(ValueError, match="bins must be None"):
        discrete_time.reconstruction_nll(x0, x0, 0.0, bins=1)


def _chain_law(alpha_bar, x0, reverse):
    """Mean and covariance of x_{0:T} under q(· | x_0) and under p_θ, each built as a linear map of
    independent standard normals (x = b + L e), independently of the closed forms in the library."""
    T = len(alpha_bar) - 1
    alpha = alpha_bar[1:] / alpha_bar[:-1]
    Lq = torch.zeros(T + 1, T, dtype=torch.float64)  # x_t = √α_t x_{t-1} + √(1 − α_t) e_t
    bq = torch.zeros(T + 1, dtype=torch.float64)
    bq[0] = x0
    for t in range(1, T + 1):
        Lq[t] = alpha[t - 1].sqrt() * Lq[t - 1]
        Lq[t, t - 1] += (1 - alpha[t - 1]).sqrt()
        bq[t] = alpha[t - 1].sqrt() * bq[t - 1]
    Lp = torch.zeros(T + 1, T + 1, dtype=torch.float64)  # x_T = e_T, x_{t-1} = k x_t + m + s e
    bp = torch.zeros(T + 1, dtype=torch.float64)
    Lp[T, T] = 1.0
    for t in range(T, 0, -1):
        k, m, s2 = reverse[t - 1]
        Lp[t - 1] = k * Lp[t]
        Lp[t - 1, t - 1] += math.sqrt(s2)
        bp[t - 1] = k * bp[t] + m
    return bq, Lq @ Lq.T, bp, Lp @ Lp.T


CHAINS = [
    (torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64), 1.0, [[1.2, 0.0, 0.3], [0.8, 0.1, 0.4]]),
    (
        torch.tensor([1.0, 0.9, 0.6, 0.3, 0.05], dtype=torch.float64),
        -0.7,
        [[1.0, 0.05, 0.1], [0.9, -0.2, 0.5], [1.3, 0.0, 0.2], [0.4, 0.3, 0.9]],
    ),
]


@pytest.mark.parametrize("alpha_bar,x0,reverse", CHAINS)
def test_gaussian_chain_elbo_is_the_elbo_of_the_joint_gaussians(alpha_bar, x0, reverse):
    """eq-diffusion-elbo-raw: E_q[log p_θ(x_{0:T})] + H(q(x_{1:T} | x_0)) from the two joint laws,
    against the regrouped three-variable terms of eq-elbo-consistency."""
    bq, cq, bp, cp = _chain_law(alpha_bar, x0, reverse)
    d = bq - bp
    prec = torch.linalg.inv(cp)
    log_p = -0.5 * (
        len(bq) * math.log(2 * math.pi) + torch.logdet(cp) + torch.trace(prec @ cq) + d @ prec @ d
    )
    entropy = 0.5 * torch.logdet(2 * math.pi * math.e * cq[1:, 1:])
    terms = discrete_time.gaussian_chain_elbo_terms(x0, alpha_bar, reverse)
    torch.testing.assert_close(terms["elbo"], log_p + entropy, rtol=0, atol=1e-10)


@pytest.mark.parametrize("alpha_bar,x0,reverse", CHAINS)
def test_gaussian_chain_terms_by_monte_carlo(alpha_bar, x0, reverse):
    """eq-elbo-consistency against sampled chains: the three-variable consistency terms, Luo's
    KL form (x_t redrawn from q(x_t | x_{t-1}), independent of x_{t+1}), and the denoising form
    eq-diffusion-elbo, which must average to the same ELBO."""
    n = 400_000
    g = torch.Generator().manual_seed(12)
    T = len(alpha_bar) - 1
    alpha = alpha_bar[1:] / alpha_bar[:-1]
    N = torch.distributions.Normal
    x = [torch.full((n,), x0, dtype=torch.float64)]
    for t in range(1, T + 1):
        noise = torch.randn(n, generator=g, dtype=torch.float64)
        x.append(alpha[t - 1].sqrt() * x[t - 1] + (1 - alpha[t - 1]).sqrt() * noise)

    def log_p(t, value):  # log p_θ(x_{t-1} = value | x_t)
        k, m, s2 = reverse[t - 1]
        return N(k * x[t] + m, math.sqrt(s2)).log_prob(value)

    def log_q(t, value, prev):  # log q(x_t = value | x_{t-1} = prev)
        return N(alpha[t - 1].sqrt() * prev, (1 - alpha[t - 1]).sqrt()).log_prob(value)

    terms = discrete_time.gaussian_chain_elbo_terms(x0, alpha_bar, reverse)

    def close(samples, exact):
        se = samples.std().item() / math.sqrt(n)
        assert abs(samples.mean().item() - exact) < 5 * se, (samples.mean().item(), exact, se)

    for t in range(1, T):
        close(log_q(t, x[t], x[t - 1]) - log_p(t + 1, x[t]), terms["consistency"][t - 1].item())
        fresh = alpha[t - 1].sqrt() * x[t - 1]
        fresh = fresh + (1 - alpha[t - 1]).sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
        close(
            log_q(t, fresh, x[t - 1]) - log_p(t + 1, fresh), terms["consistency_kl"][t - 1].item()
        )
    close(log_p(1, x[0]), terms["reconstruction"].item())
    close(log_q(T, x[T], x[T - 1]) - N(0.0, 1.0).log_prob(x[T]), terms["prior"].item())
    raw = N(0.0, 1.0).log_prob(x[T]) + sum(
        log_p(t, x[t - 1]) - log_q(t, x[t], x[t - 1]) for t in range(1, T + 1)
    )
    close(raw, terms["elbo"].item())
    # the denoising form: prior KL(q(x_T | x_0) ‖ N(0, 1)) and KL(q(x_{t-1} | x_t, x_0) ‖ p_θ) at x_t
    q_T = N(alpha_bar[T].sqrt() * x0, (1 - alpha_bar[T]).sqrt())
    denoising = log_p(1, x[0]) - torch.distributions.kl_divergence(q_T, N(0.0, 1.0))
    for t in range(2, T + 1):
        c0, ct, var = posterior.posterior_coefs(alpha_bar[t], alpha_bar[t - 1])
        k, m, s2 = reverse[t - 1]
        q_post = N(c0 * x0 + ct * x[t], var.sqrt())
        denoising = denoising - torch.distributions.kl_divergence(
            q_post, N(k * x[t] + m, math.sqrt(s2))
        )
    close(denoising, terms["elbo"].item())


@pytest.mark.parametrize("alpha_bar,x0,reverse", CHAINS)
def test_luo_kl_form_drops_a_covariance(alpha_bar, x0, reverse):
    """consistency_kl − consistency = k_{t+1} √α_{t+1} (1 − α_t) / s_{t+1}² (Cov(x_t, x_{t+1} | x_{t-1}))."""
    terms = discrete_time.gaussian_chain_elbo_terms(x0, alpha_bar, reverse)
    alpha = alpha_bar[1:] / alpha_bar[:-1]
    T = len(alpha_bar) - 1
    expected = torch.stack(
        [reverse[t][0] * alpha[t].sqrt() * (1 - alpha[t - 1]) / reverse[t][2] for t in range(1, T)]
    )
    torch.testing.assert_close(
        terms["consistency_kl"] - terms["consistency"], expected, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        terms["elbo"] - terms["elbo_kl_form"], expected.sum(), rtol=0, atol=1e-12
    )


def test_consistency_term_with_the_best_step_is_minus_the_mutual_information():
    """With p_θ(x_1 | x_2) = q(x_1 | x_2, x_0) (T = 2), the consistency term is
    H(x_1 | x_2, x_0) − H(x_1 | x_0) = −I(x_1; x_2 | x_0) < 0: it is not a KL."""
    x0 = 0.4
    alpha_bar = torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64)
    c0, ct, var = posterior.posterior_coefs(alpha_bar[2], alpha_bar[1])
    reverse = [[1.0, 0.0, 0.1], [ct.item(), c0.item() * x0, var.item()]]
    terms = discrete_time.gaussian_chain_elbo_terms(x0, alpha_bar, reverse)
    # correlation of x_1 and x_2 given x_0: Cov² / (Var x_1 Var x_2) = α_2 (1 − ᾱ_1) / (1 − ᾱ_2)
    alpha_2 = alpha_bar[2] / alpha_bar[1]
    rho2 = alpha_2 * (1 - alpha_bar[1]) / (1 - alpha_bar[2])
    mutual_information = -0.5 * torch.log1p(-rho2)
    torch.testing.assert_close(terms["consistency"][0], -mutual_information, rtol=0, atol=1e-12)
    assert terms["consistency"][0] < 0 < terms["consistency_kl"][0]


def test_gaussian_chain_bad_input():
    ab = torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64)
    good = [[1.0, 0.0, 0.1], [1.0, 0.0, 0.1]]
    with pytest.raises(ValueError, match=r"reverse must have shape \(T, 3\) = \(2, 3\)"):
        discrete_time.gaussian_chain_elbo_terms(0.0, ab, good[:1])
    with pytest.raises(ValueError, match="variances"):
        discrete_time.gaussian_chain_elbo_terms(0.0, ab, [[1.0, 0.0, 0.1], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"alpha_bar\[0\] must be 1"):
        discrete_time.gaussian_chain_elbo_terms(0.0, torch.tensor([0.9, 0.5, 0.2]), good)
    with pytest.raises(ValueError, match="T >= 2"):
        discrete_time.gaussian_chain_elbo_terms(0.0, torch.tensor([1.0, 0.5]), good[:1])
    with pytest.raises(ValueError, match="x0 must be a finite number"):
        discrete_time.gaussian_chain_elbo_terms(float("nan"), ab, good)


def test_best_isotropic_reverse_variance():
    """Exercise ex-elbo-exact-gap (Bao et al. 2022): for a reverse step whose mean is off by Δ,
    E KL(N(μ, σ̃² I) ‖ N(μ − Δ, v I)) is smallest at v* = σ̃² + E‖Δ‖²/D, where it equals
    (D/2) log(1 + 2L/D) with L = E‖Δ‖² / (2σ̃²), the term at v = σ̃²."""
    from diffusion_lessons import gaussians

    D, s2 = 3, 0.02
    delta = 0.1 * torch.randn(
        5000, D, generator=torch.Generator().manual_seed(13), dtype=torch.float64
    )
    zeros = torch.zeros_like(delta)

    def expected_kl(v):
        log_s2, log_v = torch.full_like(delta, math.log(s2)), torch.full_like(delta, math.log(v))
        return gaussians.kl_diag_gaussians(zeros, log_s2, delta, log_v).mean().item()

    e2 = (delta**2).sum(1).mean().item()
    L = e2 / (2 * s2)
    v_star = s2 + e2 / D
    assert expected_kl(s2) == pytest.approx(L, rel=1e-12)
    assert expected_kl(v_star) == pytest.approx(D / 2 * math.log1p(2 * L / D), rel=1e-12)
    assert all(expected_kl(v_star * f) > expected_kl(v_star) for f in (0.9, 0.99, 1.01, 1.1))
