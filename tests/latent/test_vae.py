"""VAE: ELBO terms against independent calculations, and a trained model against the best
independent-pixel model."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffusion_lessons import gaussians as dist
from diffusion_lessons.data import datasets
from diffusion_lessons.latent import estimators, vae
from diffusion_lessons.training.fit import fit


def _digits(split: str) -> torch.Tensor:
    """The 8×8 digits of ``split``, flattened: ``(N, 64)`` on 17 levels in [−1, 1]."""
    return datasets.load_images("digits", split).flatten(1)


def test_factorized_baseline_matches_numpy_counts():
    train, test = _digits("train"), _digits("test")
    lt = np.rint((train.numpy() + 1) * 8).astype(int)
    lx = np.rint((test.numpy() + 1) * 8).astype(int)
    expected = np.zeros(len(lx))
    for i in range(train.shape[1]):
        p = (np.bincount(lt[:, i], minlength=17) + 1.0) / (len(lt) + 17)
        expected += np.log(p[lx[:, i]])
    got = vae.factorized_categorical_log_prob(train, test, 17)
    assert np.allclose(got.numpy(), expected, atol=1e-9)


def test_elbo_terms_kl_is_closed_form_and_sums_per_dimension():
    """eq-elbo-recon-kl: the KL term against a Monte Carlo estimate of E_q[log q − log p]."""
    torch.manual_seed(0)
    model = vae.VAE(64, latent_dim=3, hidden=16)
    x = _digits("test")[:4]
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
    x = _digits("test")[:3]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        lw = vae.vae_log_weights(model, x, 4000, gen)
        elbos = torch.stack([vae.elbo_terms(model, x, gen)["elbo"] for _ in range(4000)])
    se = (lw.var(0) / 4000 + elbos.var(0) / 4000).sqrt()
    assert ((lw.mean(0) - elbos.mean(0)).abs() < 5 * se).all()
    assert (estimators.iwae_bound(lw) > elbos.mean(0)).all()


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
    spec = datasets.DATASETS["digits"]
    train, test = _digits("train"), _digits("test")
    torch.manual_seed(0)
    model = vae.VAE(spec.dim, latent_dim=8, hidden=64, bins=spec.bins)
    fit(model, vae.vae_loss, train, steps=600, lr=3e-3, seed=0, device="cpu", progress=False)
    ev = estimators.evaluate(
        model, test, elbo_terms=vae.elbo_terms, log_weights=vae.vae_log_weights, num_samples=20
    )
    baseline = vae.factorized_categorical_log_prob(train, test, spec.bins).mean()
    assert ev["elbo"].mean() > baseline + 5.0
    assert ev["iwae"].mean() > ev["elbo"].mean()
    bpd = dist.bits_per_dim(-ev["elbo"].mean(), spec.dim)
    assert 0 < bpd < math.log2(17)


def test_full_scale_path_runs_at_tiny_size(data_root):
    """Chapter 1's GPU sizes (MNIST, latent 32) train and evaluate, here on 64 images, 3 steps."""
    spec = datasets.DATASETS["mnist"]
    train = datasets.load_images("mnist", "train", root=data_root, limit=64).flatten(1)
    test = datasets.load_images("mnist", "test", root=data_root, limit=8).flatten(1)
    assert train.shape == (64, 784) and train.min() >= -1 and train.max() <= 1
    model = vae.VAE(spec.dim, 32, 32, spec.bins)
    h = fit(model, vae.vae_loss, train, steps=3, batch_size=16, device="cpu", progress=False)
    ev = estimators.evaluate(
        model, test, elbo_terms=vae.elbo_terms, log_weights=vae.vae_log_weights, num_samples=2
    )
    assert len(h.losses) == 3 and torch.isfinite(ev["iwae"]).all()
    assert model.sample(2).shape == (2, 784)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="latent_dim"):
        vae.VAE(64, latent_dim=0)
