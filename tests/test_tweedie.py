"""Tweedie's formula (labels eq-tweedie, eq-eps-score) against independent posterior means."""

import math

import numpy as np
import pytest
import torch

from diffusion_lessons import data, posterior, tweedie


def full_cov_mixture():
    means = torch.tensor([[-1.5, 0.5], [1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    covs = torch.tensor(
        [[[0.3, 0.1], [0.1, 0.2]], [[0.05, 0.0], [0.0, 0.4]], [[0.2, -0.15], [-0.15, 0.3]]],
        dtype=torch.float64,
    )
    return data.GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), means, covs)


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


@pytest.mark.parametrize("make", [data.eight_gaussians, full_cov_mixture, data.two_gaussians])
@pytest.mark.parametrize("a", [0.999, 0.9, 0.5, 0.1, 0.01])
def test_tweedie_from_exact_score_is_the_exact_posterior_mean(make, a):
    """eq-tweedie with the exact score of q(x_t) equals the posterior mean to rounding."""
    mix = make()
    gen = torch.Generator().manual_seed(0)
    xt = mix.noised(a).sample(500, generator=gen)
    est = tweedie.tweedie_posterior_mean(xt, mix.noised(a).score(xt), a)
    np.testing.assert_allclose(est.numpy(), posterior_mean_numpy(mix, xt, a), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        est.numpy(), posterior.mixture_posterior_mean(mix, xt, a).numpy(), rtol=1e-9, atol=1e-9
    )


def test_tweedie_for_a_single_gaussian_is_linear_shrinkage():
    """x_0 ∼ N(μ, s² I): E[x_0 | x_t] = μ + √ᾱ s² (x_t − √ᾱ μ)/(ᾱ s² + σ²)."""
    mu, s2, a = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.7, 0.3
    mix = data.isotropic_mixture([1.0], mu[None], math.sqrt(s2))
    xt = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = mu + math.sqrt(a) * s2 * (xt - math.sqrt(a) * mu) / (a * s2 + 1 - a)
    got = tweedie.tweedie_posterior_mean(xt, mix.noised(a).score(xt), a)
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("a", [0.8, 0.3])
def test_importance_sampling_route_agrees(a):
    """Self-normalized importance sampling from 200 000 prior draws, within its ESS-based error."""
    mix = full_cov_mixture()
    gen = torch.Generator().manual_seed(2)
    x0 = mix.sample(200_000, generator=gen)
    xt = mix.noised(a).sample(20, generator=gen)
    est, ess = tweedie.posterior_mean_importance_sampling(x0, xt, a)
    exact = tweedie.tweedie_posterior_mean(xt, mix.noised(a).score(xt), a)
    post_sd = mix.covariance().diagonal().max().sqrt()  # an upper bound on the posterior sd
    assert (ess > 100).all()
    assert ((est - exact).abs() < 5 * post_sd / ess.sqrt()[:, None]).all()


def test_expected_noise_is_minus_sigma_times_score():
    """eq-eps-score: E[ε | x_t], estimated by importance sampling of (x_t − √ᾱ x_0)/σ, = −σ ∇log q."""
    mix, a = data.eight_gaussians(), 0.6
    gen = torch.Generator().manual_seed(3)
    x0 = mix.sample(200_000, generator=gen)
    xt = mix.noised(a).sample(20, generator=gen)
    sq = torch.cdist(xt, math.sqrt(a) * x0) ** 2
    w = torch.softmax(-sq / (2 * (1 - a)), dim=1)
    eps_mc = (xt - math.sqrt(a) * (w @ x0)) / math.sqrt(1 - a)
    ess = 1 / (w**2).sum(1)
    exact = tweedie.tweedie_noise_mean(mix.noised(a).score(xt), a)
    sd = math.sqrt(a / (1 - a)) * mix.covariance().diagonal().max().sqrt()
    assert ((eps_mc - exact).abs() < 5 * sd / ess.sqrt()[:, None]).all()


def test_error_per_noise_level():
    """The exact estimator has zero error; a constant offset c has error c√D; MMSE is positive."""
    mix = data.eight_gaussians()
    exact = lambda xt, a: posterior.mixture_posterior_mean(mix, xt, a)
    sample = lambda n, g: mix.sample(n, generator=g)
    rows = tweedie.error_per_noise_level(exact, exact, sample, [0.9, 0.2], n=256)
    assert all(r["rmse"] == 0 and r["mmse_root"] > 0 for r in rows)
    shifted = lambda xt, a: exact(xt, a) + 0.1
    rows = tweedie.error_per_noise_level(shifted, exact, sample, [0.5], n=256)
    assert rows[0]["rmse"] == pytest.approx(0.1 * math.sqrt(2))


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

    d = tweedie.tweedie_derivations()
    sym = d["symbols"]
    for key in ("gaussian", "two_points"):
        lhs, rhs = d[key]
        assert sp.simplify(lhs - rhs) == 0
        point = {sym["xt"]: 0.3, sym["mu"]: 1.0, sym["m1"]: -1.0, sym["m2"]: 2.0}
        point |= {sym["alpha_bar"]: 0.4, sym["s"]: 0.7, sym["w"]: 0.25}
        assert float(lhs.subs(point)) == pytest.approx(float(rhs.subs(point)), rel=1e-12)
