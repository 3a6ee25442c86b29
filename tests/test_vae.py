"""VAE and hierarchical VAE: ELBO terms against independent calculations, and a trained model
against the best independent-pixel model."""

import math

import numpy as np
import pytest
import torch

from diffusion_lessons import distributions as dist
from diffusion_lessons import train, vae
from diffusion_lessons.elbo import iwae_bound


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
    assert torch.allclose(a["kl"], b["level_kl"][0], atol=1e-5)


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
    assert len(terms[0]["level_kl"]) == 3
    assert [p.shape[1] for p in terms[0]["level_kl_per_dim"]] == [4, 3, 2]
    se = (lw.var(0) / n + elbos.var(0) / n).sqrt()
    assert ((lw.mean(0) - elbos.mean(0)).abs() < 5 * se).all()


def test_trained_vae_beats_independent_pixels_on_held_out_data():
    d = _digits()
    torch.manual_seed(0)
    model = vae.VAE(d.dim, latent_dim=8, hidden=64, bins=d.bins)
    train.fit(
        model, vae.vae_loss, d.train, steps=600, lr=3e-3, seed=0, device="cpu", progress=False
    )
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
        h = train.fit(model, loss, d.train, steps=3, batch_size=16, device="cpu", progress=False)
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
