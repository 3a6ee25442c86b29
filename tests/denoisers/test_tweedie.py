"""Tweedie's formula (labels eq-tweedie, eq-eps-score) against independent posterior means."""

import math

import numpy as np
import pytest
import torch

from diffusion_lessons.data import oracles, toy
from diffusion_lessons.denoisers import tweedie
from diffusion_lessons.symbolic import tweedie_identities


def full_cov_mixture():
    means = torch.tensor([[-1.5, 0.5], [1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    covs = torch.tensor(
        [[[0.3, 0.1], [0.1, 0.2]], [[0.05, 0.0], [0.0, 0.4]], [[0.2, -0.15], [-0.15, 0.3]]],
        dtype=torch.float64,
    )
    return toy.GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), means, covs)


def posterior_mean_numpy(mix, xt, a):
    """Σ_k p(k | x_t) E[x_0 | x_t, k], written in numpy from the Gaussian conditioning formula."""
    xt = xt.numpy()
    out, logw = [], []
    for w, mu, cov in zip(mix.weights.numpy(), mix.means.numpy(), mix.covs.numpy(), strict=True):
        cov_t = a * cov + (1 - a) * np.eye(len(mu))
        diff = xt - math.sqrt(a) * mu
        sol = np.linalg.solve(cov_t, diff.T).T
        logw.append(
            math.log(w)
            - 0.5 * np.sum(diff * sol, 1)
            - 0.5 * np.linalg.slogdet(2 * np.pi * cov_t)[1]
        )
        out.append(mu + math.sqrt(a) * sol @ cov.T)
    logw = np.stack(logw, 1)
    r = np.exp(logw - logw.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return np.einsum("nk,knd->nd", r, np.stack(out))


@pytest.mark.parametrize("make", [toy.eight_gaussians, full_cov_mixture, toy.two_gaussians])
@pytest.mark.parametrize("a", [0.999, 0.9, 0.5, 0.1, 0.01])
def test_tweedie_from_exact_score_is_the_exact_posterior_mean(make, a):
    """eq-tweedie with the exact score of q(x_t) equals the posterior mean to rounding."""
    mix = make()
    gen = torch.Generator().manual_seed(0)
    xt = mix.noised(a).sample(500, generator=gen)
    est = tweedie.tweedie_posterior_mean(xt, mix.noised(a).score(xt), a)
    np.testing.assert_allclose(est.numpy(), posterior_mean_numpy(mix, xt, a), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        est.numpy(), oracles.mixture_posterior_mean(mix, xt, a).numpy(), rtol=1e-9, atol=1e-9
    )


def test_tweedie_for_a_single_gaussian_is_linear_shrinkage():
    """x_0 ∼ N(μ, s² I): E[x_0 | x_t] = μ + √ᾱ s² (x_t − √ᾱ μ)/(ᾱ s² + σ²)."""
    mu, s2, a = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.7, 0.3
    mix = toy.isotropic_mixture([1.0], mu[None], math.sqrt(s2))
    xt = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = mu + math.sqrt(a) * s2 * (xt - math.sqrt(a) * mu) / (a * s2 + 1 - a)
    got = tweedie.tweedie_posterior_mean(xt, mix.noised(a).score(xt), a)
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("a", [0.8, 0.3])
def test_importance_sampling_route_agrees(a):
    """Self-normalized importance sampling from 200 000 prior draws, within 5 of its own errors.

    The error unit is the posterior sd from the same weights over √ESS (and, stricter, the
    delta-method error), not the data's sd, which is ~10× larger at high ᾱ.
    """
    mix = full_cov_mixture()
    gen = torch.Generator().manual_seed(2)
    x0 = mix.sample(200_000, generator=gen)
    xt = mix.noised(a).sample(20, generator=gen)
    est = tweedie.posterior_mean_importance_sampling(x0, xt, a)
    exact = tweedie.tweedie_posterior_mean(xt, mix.noised(a).score(xt), a)
    assert (est.ess > 100).all()
    assert ((est.mean - exact).abs() < 5 * est.se).all()
    assert ((est.mean - exact).abs() < 5 * est.se_delta).all()


def test_importance_sampling_fields_against_numpy():
    """mean, ESS, sd, sd/√ESS and the delta-method error, each from its definition in numpy."""
    mix, a = toy.eight_gaussians(), 0.7
    gen = torch.Generator().manual_seed(5)
    x0 = mix.sample(300, generator=gen)
    xt = mix.noised(a).sample(4, generator=gen)
    est = tweedie.posterior_mean_importance_sampling(x0, xt, a)
    X, Z = x0.numpy(), xt.numpy()
    for n in range(len(Z)):
        logw = -((Z[n] - math.sqrt(a) * X) ** 2).sum(1) / (2 * (1 - a))
        w = np.exp(logw - logw.max())
        w /= w.sum()
        mean = w @ X
        ess = 1 / (w**2).sum()
        sd = np.sqrt(w @ (X - mean) ** 2)
        np.testing.assert_allclose(est.mean[n].numpy(), mean, rtol=1e-10)
        np.testing.assert_allclose(est.ess[n].item(), ess, rtol=1e-10)
        np.testing.assert_allclose(est.sd[n].numpy(), sd, rtol=1e-8)
        np.testing.assert_allclose(est.se[n].numpy(), sd / math.sqrt(ess), rtol=1e-8)
        np.testing.assert_allclose(
            est.se_delta[n].numpy(), np.sqrt(w**2 @ (X - mean) ** 2), rtol=1e-8
        )


def test_importance_sampling_error_is_the_spread_over_repetitions():
    """Repeat the estimate with 200 independent prior samples of size 1000: the spread of the
    estimates matches the delta-method error (the unit the z-tests use) within 25 %, and sd/√ESS
    is not smaller than the spread by more than that either (it errs on the safe side)."""
    mix, a = toy.eight_gaussians(), 0.9
    gen = torch.Generator().manual_seed(6)
    xt = mix.noised(a).sample(3, generator=gen)
    draws = mix.sample(200 * 1000, generator=gen).reshape(200, 1000, 2)
    runs = [tweedie.posterior_mean_importance_sampling(x0, xt, a) for x0 in draws]
    spread = torch.stack([r.mean for r in runs]).std(0)
    se_delta = torch.stack([r.se_delta for r in runs]).mean(0)
    se = torch.stack([r.se for r in runs]).mean(0)
    ratio = se_delta / spread
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio
    assert (se / spread > 0.8).all(), se / spread


def test_expected_noise_is_minus_sigma_times_score():
    """eq-eps-score: E[ε | x_t], estimated by importance sampling of (x_t − √ᾱ x_0)/σ, = −σ ∇log q.

    The error of the estimate of E[ε | x_t] is √ᾱ/σ times that of E[x_0 | x_t], from the weights.
    """
    mix, a = toy.eight_gaussians(), 0.6
    gen = torch.Generator().manual_seed(3)
    x0 = mix.sample(200_000, generator=gen)
    xt = mix.noised(a).sample(20, generator=gen)
    sq = torch.cdist(xt, math.sqrt(a) * x0) ** 2
    w = torch.softmax(-sq / (2 * (1 - a)), dim=1)
    eps_mc = (xt - math.sqrt(a) * (w @ x0)) / math.sqrt(1 - a)
    ess = 1 / (w**2).sum(1)
    post_sd = (w @ x0**2 - (w @ x0) ** 2).sqrt()
    exact = tweedie.tweedie_noise_mean(mix.noised(a).score(xt), a)
    se = math.sqrt(a / (1 - a)) * post_sd / ess.sqrt()[:, None]
    assert ((eps_mc - exact).abs() < 5 * se).all()


def test_rms_error_per_noise_level():
    """Chapter 7's table, one noise level at a time: the exact denoiser has zero error, a constant
    offset c has error c√D, the MMSE is positive; the standard error matches the spread of repeats."""
    from diffusion_lessons.process.forward import q_sample

    mix = toy.eight_gaussians()
    exact = oracles.mixture_denoiser(mix)
    for k, a in enumerate((0.9, 0.2, 0.5)):
        gen = torch.Generator().manual_seed(k)
        x0 = mix.sample(256, generator=gen)
        xt, _ = q_sample(x0, a, generator=gen)
        lam = torch.full((256,), math.log(a / (1 - a)), dtype=torch.float64)
        best = exact(xt, lam)
        assert tweedie.rms_error(best, best) == (0.0, 0.0, 256)
        assert tweedie.rms_error(x0, best).rmse > 0
        shifted = tweedie.rms_error(best + 0.1, best)
        assert shifted.rmse == pytest.approx(0.1 * math.sqrt(2))
    # the delta-method error against 400 repeats of a noisy estimate (its sd has ~3.5% error)
    g = torch.Generator().manual_seed(5)
    ref = torch.zeros(200, 2, dtype=torch.float64)
    draws = [
        tweedie.rms_error(torch.randn(200, 2, generator=g, dtype=torch.float64), ref)
        for _ in range(400)
    ]
    spread = np.std([d.rmse for d in draws], ddof=1)
    assert np.mean([d.se for d in draws]) == pytest.approx(spread, rel=0.15)


def test_bad_input_raises():
    xt = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="alpha_bar must lie in"):
        tweedie.tweedie_posterior_mean(xt, xt, 0.0)
    with pytest.raises(ValueError, match="alpha_bar must lie in"):
        tweedie.tweedie_noise_mean(xt, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        tweedie.tweedie_posterior_mean(xt, torch.zeros(3, 3), 0.5)


def test_symbolic_tweedie():
    """eq-tweedie in sympy for a Gaussian prior and a two-point prior, plus a numeric spot check."""
    import sympy as sp

    d = tweedie_identities.tweedie_derivations()
    sym = d["symbols"]
    for key in ("gaussian", "two_points"):
        lhs, rhs = d[key]
        assert sp.simplify(lhs - rhs) == 0
        point = {sym["xt"]: 0.3, sym["mu"]: 1.0, sym["m1"]: -1.0, sym["m2"]: 2.0}
        point |= {sym["alpha_bar"]: 0.4, sym["s"]: 0.7, sym["w"]: 0.25}
        assert float(lhs.subs(point)) == pytest.approx(float(rhs.subs(point)), rel=1e-12)


THREE_POINTS = (torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([0.495, 0.01, 0.495]))


def test_discrete_prior_error_against_monte_carlo():
    """f_k(u) = E_ε (m_k − E[x_0 | z_u])²: quadrature against Monte Carlo over ε, written in numpy
    with z_u = √ᾱ m_k + σ ε itself (not the rescaled y) and Bayes' rule in that variable."""
    values, probs = THREE_POINTS
    snr = torch.tensor([0.5, 2.0, 16.0], dtype=torch.float64)
    f = tweedie.discrete_prior_denoising_error(values, probs, snr)
    rng = np.random.default_rng(0)
    m, p = values.numpy().astype(np.float64), probs.numpy().astype(np.float64)
    for j, u in enumerate(snr.tolist()):
        a = u / (1 + u)
        for k in range(3):
            z = math.sqrt(a) * m[k] + math.sqrt(1 - a) * rng.standard_normal(400_000)
            logw = np.log(p) - (z[:, None] - math.sqrt(a) * m) ** 2 / (2 * (1 - a))
            w = np.exp(logw - logw.max(1, keepdims=True))
            sq = (m[k] - (w @ m) / w.sum(1)) ** 2
            se = sq.std() / math.sqrt(len(sq))
            assert abs(f[k, j].item() - sq.mean()) < 4.5 * se + 1e-12, (k, u, f[k, j], sq.mean())


def test_discrete_prior_error_limits_and_a_gaussian_lattice():
    """u = 0: the posterior mean is the prior mean. A lattice prior with Gaussian weights: the MMSE
    is v/(1 + v u) while the posterior is much wider than the lattice spacing."""
    values, probs = THREE_POINTS
    f0 = tweedie.discrete_prior_denoising_error(values, probs, torch.tensor([0.0]))[:, 0]
    mean = (probs.double() * values.double()).sum()
    torch.testing.assert_close(f0, (values.double() - mean) ** 2, rtol=0, atol=1e-12)

    h, v = 0.3, 1.0
    grid = h * torch.arange(-20, 21, dtype=torch.float64)
    w = torch.exp(-(grid**2) / (2 * v))
    u = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    mmse = (w / w.sum()) @ tweedie.discrete_prior_denoising_error(grid, w / w.sum(), u, n_grid=2001)
    torch.testing.assert_close(mmse, v / (1 + v * u), rtol=1e-6, atol=0)


def test_averaged_error_never_rises_but_one_point_can():
    """The MMSE is non-increasing in u for random priors; for the three-point prior and x = 0 the
    error rises from ≈ 0 to above 0.6 and falls again (the counterexample of chapter 6)."""
    u = torch.logspace(-4, 2, 40, dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        values = 3 * torch.randn(4, generator=gen, dtype=torch.float64)
        probs = torch.softmax(torch.randn(4, generator=gen, dtype=torch.float64), 0)
        mmse = probs @ tweedie.discrete_prior_denoising_error(values, probs, u, n_grid=2001)
        assert (mmse[1:] <= mmse[:-1] + 1e-12).all()
    values, probs = THREE_POINTS
    f = tweedie.discrete_prior_denoising_error(values, probs, u)[1]
    assert f[0] < 1e-3 and f.max() > 0.6 and f[-1] < 1e-3
    assert (f[1:] > f[:-1] + 1e-6).any() and (f[1:] < f[:-1] - 1e-6).any()


def test_discrete_prior_error_bad_input():
    values, probs = THREE_POINTS
    with pytest.raises(ValueError, match="probs must be positive and sum to 1"):
        tweedie.discrete_prior_denoising_error(values, torch.tensor([0.5, 0.5, 0.5]), torch.ones(1))
    with pytest.raises(ValueError, match="same length"):
        tweedie.discrete_prior_denoising_error(values, probs[:2], torch.ones(1))
    with pytest.raises(ValueError, match="snr must be"):
        tweedie.discrete_prior_denoising_error(values, probs, torch.tensor([-1.0]))
