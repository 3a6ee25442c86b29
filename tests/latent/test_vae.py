"""VAE and hierarchical VAE: ELBO terms against independent calculations, and a trained model
against the best independent-pixel model."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffusion_lessons import gaussians as dist
from diffusion_lessons.latent import vae
from diffusion_lessons.latent.estimators import iwae_bound
from diffusion_lessons.noise import schedules
from diffusion_lessons.objectives import nelbo
from diffusion_lessons.training.fit import fit


def _digits():
    return vae.load_image_data("digits")


def test_factorized_baseline_matches_numpy_counts():
    d = _digits()
    lt = np.rint((d.train.numpy() + 1) * 8).astype(int)
    lx = np.rint((d.test.numpy() + 1) * 8).astype(int)
    expected = np.zeros(len(lx))
    for i in range(d.dim):
        p = (np.bincount(lt[:, i], minlength=17) + 1.0) / (len(lt) + 17)
        expected += np.log(p[lx[:, i]])
    got = vae.factorized_categorical_log_prob(d.train, d.test, 17)
    assert np.allclose(got.numpy(), expected, atol=1e-9)


def test_elbo_terms_kl_is_closed_form_and_sums_per_dimension():
    """eq-elbo-recon-kl: the KL term against a Monte Carlo estimate of E_q[log q − log p]."""
    torch.manual_seed(0)
    model = vae.VAE(64, latent_dim=3, hidden=16)
    x = _digits().test[:4]
    terms = vae.elbo_terms(model, x, torch.Generator().manual_seed(0))
    mean, log_var = terms["mean"].detach(), terms["log_var"].detach()
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    z = q.sample((100_000,))
    ratio = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1)
    se = ratio.std(0) / math.sqrt(z.shape[0])
    assert ((ratio.mean(0) - terms["kl"].detach()).abs() < 5 * se + 1e-5).all()
    per_dim = vae.kl_per_dimension(mean, log_var)
    assert per_dim.shape == (4, 3)
    assert torch.allclose(per_dim.sum(1), terms["kl"].detach(), atol=1e-5)
    assert torch.allclose(terms["elbo"], terms["reconstruction"] - terms["kl"])


def test_log_weights_average_to_the_elbo_and_iwae_is_above():
    """eq-iwae: E[log w] = ELBO (analytic KL), and IWAE_K ≥ ELBO."""
    torch.manual_seed(1)
    model = vae.VAE(64, latent_dim=4, hidden=32)
    x = _digits().test[:3]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        lw = vae.vae_log_weights(model, x, 4000, gen)
        elbos = torch.stack([vae.elbo_terms(model, x, gen)["elbo"] for _ in range(4000)])
    se = (lw.var(0) / 4000 + elbos.var(0) / 4000).sqrt()
    assert ((lw.mean(0) - elbos.mean(0)).abs() < 5 * se).all()
    assert (iwae_bound(lw) > elbos.mean(0)).all()


def test_one_level_hvae_is_the_vae():
    """eq-hvae-elbo with T = 1 reduces to eq-elbo-recon-kl."""
    torch.manual_seed(2)
    v = vae.VAE(64, latent_dim=5, hidden=16)
    h = vae.HierarchicalVAE(64, latent_dims=(5,), hidden=16)
    h.encoders[0].load_state_dict(v.encoder.state_dict())
    h.decoder.load_state_dict(v.decoder.state_dict())
    x = _digits().test[:6]
    a = vae.elbo_terms(v, x, torch.Generator().manual_seed(3))
    b = vae.hvae_elbo_terms(h, x, torch.Generator().manual_seed(3))
    assert torch.allclose(a["elbo"], b["elbo"], atol=1e-5)
    assert torch.allclose(a["kl"], b["level_terms"][0], atol=1e-5)


def test_hvae_terms_match_its_log_weights():
    """eq-hvae-elbo: the sampled log p(x, z)/q(z | x) averages to the split ELBO."""
    torch.manual_seed(4)
    model = vae.HierarchicalVAE(64, latent_dims=(4, 3, 2), hidden=16)
    x = _digits().test[:3]
    gen = torch.Generator().manual_seed(4)
    n = 3000
    with torch.no_grad():
        lw = vae.hvae_log_weights(model, x, n, gen)
        terms = [vae.hvae_elbo_terms(model, x, gen) for _ in range(n)]
    elbos = torch.stack([t["elbo"] for t in terms])
    assert len(terms[0]["level_terms"]) == 3
    assert [p.shape[1] for p in terms[0]["level_terms_per_dim"]] == [4, 3, 2]
    se = (lw.var(0) / n + elbos.var(0) / n).sqrt()
    assert ((lw.mean(0) - elbos.mean(0)).abs() < 5 * se).all()


def _toy_hierarchy():
    """Chapter 2's counterexample: q(z_1 | x) = N(0, 1), q(z_2 | z_1) = N(z_1, 0.01),
    p(z_2) = N(0, 1), p(z_1 | z_2) = N(z_2, 0.01). Nothing depends on x."""
    model = vae.HierarchicalVAE(1, latent_dims=(1, 1), hidden=4)
    log_v = math.log(0.01)
    model.encoders = torch.nn.ModuleList(
        [vae.LinearGaussian(0.0, 0.0), vae.LinearGaussian(1.0, log_v)]
    )
    model.priors = torch.nn.ModuleList([vae.LinearGaussian(1.0, log_v)])
    return model


def test_lower_level_term_is_not_a_kl_and_can_be_negative():
    """eq-hvae-elbo: for t < T the level term is not a KL. Closed forms for the toy hierarchy:
    level 1 = ½ log 0.01 < 0, level 2 = ½ (0.01 − log 0.01), and their sum is the joint KL."""
    model = _toy_hierarchy()
    n = 200_000
    with torch.no_grad():
        terms = vae.hvae_elbo_terms(model, torch.zeros(n, 1), torch.Generator().manual_seed(0))
    level1, level2 = terms["level_terms"]
    exact1, exact2 = 0.5 * math.log(0.01), 0.5 * (0.01 - math.log(0.01))
    for got, exact in ((level1, exact1), (level2, exact2)):
        assert abs(got.mean().item() - exact) < 5 * got.std().item() / math.sqrt(n)
    assert exact1 < -2.3
    # the sum is KL(q(z_1, z_2) ‖ p(z_1, z_2)) between two 2-D Gaussians (numpy, independently)
    cov_q = np.array([[1.0, 1.0], [1.0, 1.01]])
    cov_p = np.array([[1.01, 1.0], [1.0, 1.0]])
    joint_kl = 0.5 * (
        np.trace(np.linalg.solve(cov_p, cov_q))
        - 2
        + np.log(np.linalg.det(cov_p) / np.linalg.det(cov_q))
    )
    assert math.isclose(exact1 + exact2, joint_kl, abs_tol=1e-12)
    total = level1 + level2
    assert abs(total.mean().item() - joint_kl) < 5 * total.std().item() / math.sqrt(n)


def test_diffusion_top_term_against_monte_carlo_and_the_prior_term():
    """The top term of eq-hvae-elbo with the forward process as encoder: closed form against a
    Monte Carlo average of log q(x_T | x_{T−1}) − log N(x_T; 0, I); for T = 1 it is the prior
    KL(q(x_1 | x_0) ‖ N(0, I)) (nelbo.prior_kl); on DDPM's schedule it is ≈ −½ log β_T per dim."""
    x0 = _digits().test[:3].double()
    betas = schedules.betas_linear(1000)
    abar = schedules.alpha_bar_from_betas(betas)
    got = vae.diffusion_top_term(x0, betas)
    g = torch.Generator().manual_seed(0)
    n, beta_t = 20_000, betas[-1].item()
    eps1 = torch.randn(n, *x0.shape, generator=g, dtype=torch.float64)
    eps2 = torch.randn(n, *x0.shape, generator=g, dtype=torch.float64)
    x_prev = abar[-2].sqrt() * x0 + (1 - abar[-2]).sqrt() * eps1
    x_t = math.sqrt(1 - beta_t) * x_prev + math.sqrt(beta_t) * eps2
    step = torch.distributions.Normal(math.sqrt(1 - beta_t) * x_prev, math.sqrt(beta_t))
    ratio = (step.log_prob(x_t) - torch.distributions.Normal(0.0, 1.0).log_prob(x_t)).sum(-1)
    se = ratio.std(0) / math.sqrt(n)
    assert ((ratio.mean(0) - got).abs() < 5 * se).all()
    per_dim = got / x0.shape[1]
    torch.testing.assert_close(
        per_dim, torch.full_like(per_dim, -0.5 * math.log(0.02)), atol=2e-3, rtol=0
    )
    one = torch.tensor([0.3], dtype=torch.float64)
    prior = nelbo.prior_kl(x0, torch.log((1 - one) / one))
    torch.testing.assert_close(vae.diffusion_top_term(x0, one), prior, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="betas"):
        vae.diffusion_top_term(x0, torch.tensor([0.5, 1.5]))


def test_rate_decomposition_against_exact_cases():
    """rate = I_q(x; z) + KL(q(z) ‖ N(0, I)) (Hoffman & Johnson 2016), against three exact cases."""
    g = torch.Generator().manual_seed(0)
    # identical encodings carry no information: I = 0 exactly, the mismatch is the whole rate
    mean, log_var = (
        torch.full((5, 2), 0.7, dtype=torch.float64),
        torch.full((5, 2), -1.0, dtype=torch.float64),
    )
    r = vae.rate_decomposition(mean, log_var, num_samples=4000, generator=g)
    assert abs(r["mutual_information"].item()) < 1e-12
    assert abs(r["marginal_kl"] - r["rate"]) < 5 * r["marginal_kl_se"]
    # far-apart encodings identify the data point: I = log M
    # (M = 3000 also makes the aggregate posterior be computed in several blocks of rows)
    mean = torch.arange(3000, dtype=torch.float64)[:, None] * 100.0
    r = vae.rate_decomposition(
        mean, torch.zeros(3000, 1, dtype=torch.float64), num_samples=2, generator=g
    )
    assert abs(r["mutual_information"].item() - math.log(3000)) < 1e-9
    # two overlapping encodings in 1-D: both parts by numerical quadrature (scipy)
    a, s = 0.6, 0.8
    # (200 copies of each point: the same aggregate posterior and information, fewer loops)
    mean = torch.tensor([[a], [-a]], dtype=torch.float64).repeat(200, 1)
    log_var = torch.full((400, 1), 2 * math.log(s), dtype=torch.float64)
    r = vae.rate_decomposition(mean, log_var, num_samples=250, generator=g)
    comp = [stats.norm(a, s), stats.norm(-a, s)]

    def agg(z):
        return 0.5 * (comp[0].pdf(z) + comp[1].pdf(z))

    info = sum(
        0.5 * integrate.quad(lambda z, c=c: c.pdf(z) * (c.logpdf(z) - np.log(agg(z))), -12, 12)[0]
        for c in comp
    )
    mismatch = integrate.quad(lambda z: agg(z) * (np.log(agg(z)) - stats.norm.logpdf(z)), -12, 12)[
        0
    ]
    assert abs(r["mutual_information"].item() - info) < 5 * r["mutual_information_se"].item()
    assert abs(r["marginal_kl"].item() - mismatch) < 5 * r["marginal_kl_se"].item()
    assert math.isclose(info + mismatch, r["rate"].item(), rel_tol=1e-7)
    with pytest.raises(ValueError, match="mean and log_var"):
        vae.rate_decomposition(mean[:, 0], log_var[:, 0])


def test_trained_vae_beats_independent_pixels_on_held_out_data():
    d = _digits()
    torch.manual_seed(0)
    model = vae.VAE(d.dim, latent_dim=8, hidden=64, bins=d.bins)
    fit(model, vae.vae_loss, d.train, steps=600, lr=3e-3, seed=0, device="cpu", progress=False)
    ev = vae.evaluate(model, d.test, num_samples=20)
    baseline = vae.factorized_categorical_log_prob(d.train, d.test, d.bins).mean()
    assert ev["elbo"].mean() > baseline + 5.0
    assert ev["iwae"].mean() > ev["elbo"].mean()
    bpd = dist.bits_per_dim(-ev["elbo"].mean(), d.dim)
    assert 0 < bpd < math.log2(17)


def test_full_scale_path_runs_at_tiny_size(data_root, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LESSONS_DATA", str(data_root))
    s = vae.SETTINGS["full"]
    d = vae.load_image_data(s["dataset"], limit=64)
    assert (d.bins, d.dim, d.shape) == (256, 784, (28, 28))
    assert d.train.min() >= -1 and d.train.max() <= 1
    for model, loss in (
        (vae.VAE(d.dim, s["latent_dim"], 32, d.bins), vae.vae_loss),
        (vae.HierarchicalVAE(d.dim, s["latent_dims"], 32, d.bins), vae.hvae_loss),
    ):
        h = fit(model, loss, d.train, steps=3, batch_size=16, device="cpu", progress=False)
        ev = vae.evaluate(model, d.test[:8], num_samples=2)
        assert len(h.losses) == 3 and torch.isfinite(ev["iwae"]).all()
        assert model.sample(2).shape == (2, 784)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="dataset"):
        vae.load_image_data("cifar")
    with pytest.raises(ValueError, match="latent_dims"):
        vae.HierarchicalVAE(64, latent_dims=())
    with pytest.raises(ValueError, match="latent_dim"):
        vae.VAE(64, latent_dim=0)
