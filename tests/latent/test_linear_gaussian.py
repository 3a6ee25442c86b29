"""The ELBO on the linear-Gaussian model, against scipy, brute-force integration and Monte Carlo."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from diffusion_lessons import gaussians
from diffusion_lessons.latent import estimators, linear_gaussian


def _model(d=3, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(5, d, generator=g, dtype=torch.float64) * 2
    return x, W, b, 0.7


def _some_q(x, k, seed=1):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(x.shape[0], k, generator=g, dtype=torch.float64)
    A = torch.randn(k, k, generator=g, dtype=torch.float64)
    return mean, A @ A.T * 0.3 + 0.2 * torch.eye(k, dtype=torch.float64)


def test_log_evidence_matches_scipy():
    """eq-lg-evidence: p(x) = N(b, W Wᵀ + s² I)."""
    x, W, b, s = _model()
    model = linear_gaussian.LinearGaussian(W, b, s)
    cov = (W @ W.T).numpy() + s**2 * np.eye(3)
    expected = multivariate_normal(b.numpy(), cov).logpdf(x.numpy())
    got = linear_gaussian.linear_gaussian_log_evidence(model, x)
    assert np.allclose(got.numpy(), expected, atol=1e-10)


def test_posterior_matches_brute_force_grid():
    """eq-lg-posterior: normalise p(z) p(x | z) on a 2-D grid and compare moments."""
    x, W, b, s = _model()
    model = linear_gaussian.LinearGaussian(W, b, s)
    mean, cov = linear_gaussian.linear_gaussian_posterior(model, x)
    g = torch.linspace(-6, 6, 401, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    for i in range(2):
        log_joint = torch.tensor(multivariate_normal(np.zeros(2), np.eye(2)).logpdf(zz.numpy()))
        resid = x[i] - zz @ W.T - b
        log_joint = log_joint - (resid**2).sum(-1) / (2 * s**2)
        w = torch.softmax(log_joint, 0)
        m = (w[:, None] * zz).sum(0)
        c = (w[:, None, None] * (zz - m)[:, :, None] * (zz - m)[:, None, :]).sum(0)
        assert torch.allclose(m, mean[i], atol=1e-6)
        assert torch.allclose(c, cov, atol=1e-6)


def test_elbo_identity_log_evidence_equals_elbo_plus_kl():
    """eq-elbo-gap: log p(x) = ELBO(q) + KL(q ‖ p(z | x)) for any q; the gap vanishes at the posterior."""
    x, W, b, s = _model()
    model = linear_gaussian.LinearGaussian(W, b, s)
    mq, cq = _some_q(x, 2)
    log_px = linear_gaussian.linear_gaussian_log_evidence(model, x)
    post_mean, post_cov = linear_gaussian.linear_gaussian_posterior(model, x)
    bound = linear_gaussian.linear_gaussian_elbo(model, x, mq, cq)
    gap = gaussians.kl_gaussians_full(mq, cq, post_mean, post_cov)
    assert (gap > 0.01).all()
    assert torch.allclose(bound + gap, log_px, atol=1e-10)
    at_post = linear_gaussian.linear_gaussian_elbo(model, x, post_mean, post_cov)
    assert torch.allclose(at_post, log_px, atol=1e-10)


def test_closed_form_elbo_matches_monte_carlo():
    """eq-elbo-recon-kl against the sample mean of log p(x, z) − log q(z | x) (eq-elbo-jensen)."""
    x, W, b, s = _model()
    model = linear_gaussian.LinearGaussian(W, b, s)
    mq, cq = _some_q(x, 2)
    n = 200_000
    lw = linear_gaussian.linear_gaussian_log_weights(
        model, x, mq, cq, n, generator=torch.Generator().manual_seed(4)
    )
    se = lw.std(0) / math.sqrt(n)
    exact = linear_gaussian.linear_gaussian_elbo(model, x, mq, cq)
    assert ((lw.mean(0) - exact).abs() < 5 * se).all()


def test_iwae_sandwich_and_monotone_in_k():
    """eq-iwae: ELBO ≤ E[IWAE_K] ≤ log p(x), increasing in K (averaged over repeats)."""
    x, W, b, s = _model()
    model = linear_gaussian.LinearGaussian(W, b, s)
    mq, cq = _some_q(x, 2)
    log_px = linear_gaussian.linear_gaussian_log_evidence(model, x)
    exact_elbo = linear_gaussian.linear_gaussian_elbo(model, x, mq, cq)
    g = torch.Generator().manual_seed(5)
    reps = 2000
    means, ses = [], []
    for K in (1, 5, 50):
        lw = linear_gaussian.linear_gaussian_log_weights(model, x, mq, cq, K * reps, generator=g)
        vals = estimators.iwae_bound(lw.reshape(K, reps, -1).reshape(K, -1)).reshape(reps, -1)
        means.append(vals.mean(0))
        ses.append(vals.std(0) / math.sqrt(reps))
    assert ((means[0] - exact_elbo).abs() < 5 * ses[0]).all()  # K = 1 is the ELBO
    for a, b_, sa, sb in zip(means, means[1:], ses, ses[1:], strict=False):
        assert (b_ > a - 3 * (sa + sb)).all()
        assert b_.mean() > a.mean()
    assert (means[-1] < log_px + 5 * ses[-1]).all()
    assert (log_px - means[-1]).mean() < (log_px - exact_elbo).mean() / 5


def test_evaluate_at_the_exact_posterior_gives_the_log_evidence():
    """estimators.evaluate with q = p(z | x): every log-weight is log p(x) (eq-elbo-gap with zero
    gap), so its ELBO and IWAE equal the closed-form evidence whatever the draws and batches."""
    x, W, b, s = _model()
    model = linear_gaussian.LinearGaussian(W, b, s)
    log_px = linear_gaussian.linear_gaussian_log_evidence(model, x)

    def elbo_terms(model, xb, generator):
        q = linear_gaussian.linear_gaussian_posterior(model, xb)
        return {"elbo": linear_gaussian.linear_gaussian_elbo(model, xb, *q)}

    def log_weights(model, xb, num_samples, generator):
        q = linear_gaussian.linear_gaussian_posterior(model, xb)
        return linear_gaussian.linear_gaussian_log_weights(
            model, xb, *q, num_samples, generator=generator
        )

    ev = estimators.evaluate(
        model, x, elbo_terms=elbo_terms, log_weights=log_weights, num_samples=7, batch_size=2
    )
    assert ev["elbo"].shape == ev["iwae"].shape == (5,)
    torch.testing.assert_close(ev["elbo"], log_px, rtol=0, atol=1e-10)
    torch.testing.assert_close(ev["iwae"], log_px, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="num_samples"):
        estimators.evaluate(model, x, elbo_terms=elbo_terms, log_weights=log_weights, num_samples=0)


def test_iwae_rejects_bad_shape():
    with pytest.raises(ValueError, match="log_weights"):
        estimators.iwae_bound(torch.zeros(3))


def test_bad_model_arguments_raise():
    x, W, b, s = _model()
    with pytest.raises(ValueError, match="s "):
        linear_gaussian.LinearGaussian(W, b, 0.0)
    with pytest.raises(ValueError, match="b must"):
        linear_gaussian.LinearGaussian(W, b[:2], s)
    with pytest.raises(ValueError, match="W must"):
        linear_gaussian.LinearGaussian(W[0], b, s)
    model = linear_gaussian.LinearGaussian(W, b, s)
    with pytest.raises(ValueError, match="x must"):
        linear_gaussian.linear_gaussian_log_evidence(model, x[:, :2])
    with pytest.raises(ValueError, match="x must"):
        linear_gaussian.linear_gaussian_posterior(model, x[:, :2])
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.s = 1.0  # a model is fixed once checked


def _f(z):
    return torch.cos(z).sum(-1) + 0.5 * (z**2).sum(-1)


def _exact_grad(mean, std):
    # E cos(z) = cos(μ) e^{−σ²/2}, E z² = μ² + σ²
    return -torch.sin(mean) * math.exp(-(std**2) / 2) + mean


@pytest.mark.parametrize("name", ["reinforce", "reparam"])
def test_gradient_estimators_are_unbiased(name):
    """eq-reinforce and eq-reparam: the sample mean is within MC error of the exact gradient."""
    mean = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    std = 0.8
    fn = (
        estimators.reinforce_gradient_samples
        if name == "reinforce"
        else estimators.reparam_gradient_samples
    )
    n = 200_000
    samples = fn(_f, mean, std, n, generator=torch.Generator().manual_seed(6))
    se = samples.std(0) / math.sqrt(n)
    assert ((samples.mean(0) - _exact_grad(mean, std)).abs() < 5 * se).all()


def test_reparam_has_lower_variance_here():
    mean = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    v_sf = estimators.reinforce_gradient_samples(_f, mean, 0.8, 20_000, generator=g).var(0)
    v_rp = estimators.reparam_gradient_samples(_f, mean, 0.8, 20_000, generator=g).var(0)
    assert (v_rp < v_sf / 3).all()


def test_reinforce_has_lower_variance_for_a_fast_oscillating_f():
    """Reparameterization is not always better: for f(z) = Σ cos(ω z_i) with ω = 5 the
    reparameterized per-sample variance is ω² Var sin(ω z) per coordinate (closed form, checked
    here), and the score-function estimator's is several times smaller."""
    mean = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    std, omega, n = 0.8, 5.0, 100_000
    g = torch.Generator().manual_seed(8)

    def f(z):
        return torch.cos(omega * z).sum(-1)

    v_rp = estimators.reparam_gradient_samples(f, mean, std, n, generator=g).var(0)
    v_sf = estimators.reinforce_gradient_samples(f, mean, std, n, generator=g).var(0)
    # E sin²(ωz) = (1 − cos(2ωμ) e^{−2ω²σ²}) / 2 and E sin(ωz) = sin(ωμ) e^{−ω²σ²/2}
    exact = omega**2 * (
        (1 - torch.cos(2 * omega * mean) * math.exp(-2 * (omega * std) ** 2)) / 2
        - torch.sin(omega * mean) ** 2 * math.exp(-((omega * std) ** 2))
    )
    # a sample variance of n draws has relative standard error below √(2/n) ≈ 0.45 % here
    torch.testing.assert_close(v_rp, exact, rtol=0.03, atol=0)
    assert v_rp.sum() > 2 * v_sf.sum()
