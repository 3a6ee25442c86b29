"""The discrete-time diffusion ELBO on a grid of log-SNR levels, against independent calculations."""

import functools
import math

import pytest
import torch

from diffusion_lessons.data import oracles, toy
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, betas_linear
from diffusion_lessons.objectives import discrete_time, nelbo
from diffusion_lessons.process import posterior

AB = alpha_bar_from_betas(betas_linear(100, 1e-3, 0.2))  # T = 100, ᾱ_0 = 1
LAM = discrete_time.log_snr_grid(AB)


def mixture_denoiser(mix):
    """The exact E[x_0 | x_t] of a Gaussian mixture, as a denoiser D(x_t, λ) (one level per call)."""

    def denoiser(xt, lam):
        assert (lam == lam[0]).all()
        return oracles.mixture_posterior_mean(mix, xt, torch.sigmoid(lam[0]).item()).to(xt)

    return denoiser


def test_log_snr_grid_inverts_the_sigmoid():
    """λ_i = log(ᾱ_i / (1 − ᾱ_i)), so sigmoid(λ_i) = ᾱ_i (eq-forward-marginal), and λ_0 = +∞."""
    assert LAM[0].item() == math.inf
    torch.testing.assert_close(torch.sigmoid(LAM[1:]), AB[1:], rtol=1e-14, atol=0)


def test_nelbo_of_exact_denoiser_bounds_the_true_nll():
    """eq-diffusion-elbo: with the exact E[x_0|x_t], −ELBO ≥ −log p(x_0) (on average), and is close."""
    mix = toy.two_gaussians()
    x0 = mix.sample(4000, generator=torch.Generator().manual_seed(3))
    terms = discrete_time.nelbo_terms_exact_sum(
        mixture_denoiser(mix), x0, LAM, generator=torch.Generator().manual_seed(4)
    )
    torch.testing.assert_close(
        terms["total"], terms["prior"] + terms["reconstruction"] + terms["diffusion"]
    )
    gap = terms["total"] - (-mix.log_prob(x0))
    se = gap.std().item() / math.sqrt(len(gap))
    assert gap.mean().item() > -4 * se
    # the gap is real (p_θ uses the variance of q(x_{t-1}|x_t,x_0), narrower than the true reverse
    # step), but it is a few nats, not the tens a wrong term would add
    assert gap.mean().item() < 5.0


def shrinking_denoiser(xt, lam):
    """Any fixed denoiser will do: x̂_0 = a noise-dependent shrinkage of x_t."""
    return xt * torch.sigmoid(lam)[:, None].to(xt)


def test_elbo_loss_and_one_step_terms_are_unbiased_for_the_exact_sum():
    """elbo_loss (one random step of 1..T) and nelbo_terms_one_step (one of 2..T) average to
    nelbo_terms_exact_sum's total (all steps): Monte Carlo within 5 standard errors."""
    mix = toy.two_gaussians()
    x0 = mix.sample(200, generator=torch.Generator().manual_seed(5))
    # the exact sum is itself a one-x_t-per-step estimate: compare its mean over 50 repeats
    exact = torch.stack(
        [
            discrete_time.nelbo_terms_exact_sum(
                shrinking_denoiser, x0, LAM, generator=torch.Generator().manual_seed(100 + k)
            )["total"].mean()
            for k in range(50)
        ]
    )
    g = torch.Generator().manual_seed(7)
    draws = torch.stack(
        [discrete_time.elbo_loss(shrinking_denoiser, x0, g, log_snr=LAM) for _ in range(1000)]
    )
    one_step = torch.stack(
        [
            discrete_time.nelbo_terms_one_step(shrinking_denoiser, x0, LAM, generator=g)[
                "total"
            ].mean()
            for _ in range(1000)
        ]
    )
    for est in (draws, one_step):
        se = math.hypot(est.std().item() / math.sqrt(len(est)), exact.std().item() / math.sqrt(50))
        assert abs(est.mean().item() - exact.mean().item()) < 5 * se


def test_terms_on_a_two_step_grid_by_hand():
    """T = 2, one example: prior, reconstruction and the one denoising term, each written out
    from eq-diffusion-elbo with the same noise draws (the exact sum draws x_1, then x_2)."""
    ab = torch.tensor([1.0, 0.8, 0.3], dtype=torch.float64)
    x0 = torch.tensor([[0.4, -1.1]], dtype=torch.float64)
    terms = discrete_time.nelbo_terms_exact_sum(
        shrinking_denoiser,
        x0,
        discrete_time.log_snr_grid(ab),
        generator=torch.Generator().manual_seed(8),
    )
    g = torch.Generator().manual_seed(8)
    e1, e2 = (torch.randn(1, 2, generator=g, dtype=torch.float64) for _ in range(2))
    x1 = math.sqrt(0.8) * x0 + math.sqrt(0.2) * e1
    x2 = math.sqrt(0.3) * x0 + math.sqrt(0.7) * e2
    recon = -torch.distributions.Normal(0.8 * x1, math.sqrt(0.2)).log_prob(x0).sum()
    snr1, snr2 = 0.8 / 0.2, 0.3 / 0.7
    denoise = 0.5 * (snr1 - snr2) * ((0.3 * x2 - x0) ** 2).sum()
    q = torch.distributions.Normal(math.sqrt(0.3) * x0, math.sqrt(0.7))
    prior = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
    for name, value in (("reconstruction", recon), ("diffusion", denoise), ("prior", prior)):
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-12), name


def test_ddpm_terms_use_the_discretized_decoder():
    """ddpm_terms = nelbo_terms_one_step with discretized_reconstruction_nll: same draws, same terms."""
    k = torch.randint(0, 17, (5, 3), generator=torch.Generator().manual_seed(9))
    x0 = (2 * k / 16 - 1).double()
    got = discrete_time.ddpm_terms(
        shrinking_denoiser, x0, AB, bins=17, generator=torch.Generator().manual_seed(10)
    )
    decoder = functools.partial(nelbo.discretized_reconstruction_nll, bins=17)
    ref = discrete_time.nelbo_terms_one_step(
        shrinking_denoiser,
        x0,
        LAM,
        decoder_nll=decoder,
        generator=torch.Generator().manual_seed(10),
    )
    for name in ("prior", "reconstruction", "diffusion", "total"):
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=0)
    # a discrete decoder gives probabilities: every reconstruction term is a positive −log P
    assert (got["reconstruction"] > 0).all()


def test_bad_input():
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="log_snr must decrease strictly"):
        discrete_time.nelbo_terms_exact_sum(
            shrinking_denoiser, x0, torch.tensor([math.inf, 0.5, 0.7])
        )
    with pytest.raises(ValueError, match="log_snr must decrease strictly"):
        discrete_time.elbo_loss(shrinking_denoiser, x0, None, log_snr=torch.tensor([3.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="T >= 2"):
        discrete_time.nelbo_terms_one_step(shrinking_denoiser, x0, torch.tensor([math.inf, 0.5]))
    with pytest.raises(ValueError, match="alpha_bar\\[0\\] must be 1"):
        discrete_time.log_snr_grid(torch.tensor([0.9, 0.5, 0.2]))
    with pytest.raises(ValueError, match="the denoiser returned"):
        discrete_time.elbo_loss(lambda x, lam: x[:, :1], x0, None, log_snr=LAM)


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
