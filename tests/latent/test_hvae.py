"""Hierarchical VAE: ELBO terms against the one-level VAE, its own log-weights, closed forms of a
toy hierarchy, and the diffusion top term against Monte Carlo and the prior term."""

import ast
import inspect
import math

import numpy as np
import pytest
import torch

from diffusion_lessons.data import datasets
from diffusion_lessons.latent import estimators, hvae, vae
from diffusion_lessons.noise import schedules
from diffusion_lessons.objectives import nelbo
from diffusion_lessons.training.fit import fit


def _digits(split: str) -> torch.Tensor:
    """The 8×8 digits of ``split``, flattened: ``(N, 64)`` on 17 levels in [−1, 1]."""
    return datasets.load_images("digits", split).flatten(1)


def test_one_level_hvae_is_the_vae():
    """eq-hvae-elbo with T = 1 reduces to eq-elbo-recon-kl."""
    torch.manual_seed(2)
    v = vae.VAE(64, latent_dim=5, hidden=16)
    h = hvae.HierarchicalVAE(64, latent_dims=(5,), hidden=16)
    h.encoders[0].load_state_dict(v.encoder.state_dict())
    h.decoder.load_state_dict(v.decoder.state_dict())
    x = _digits("test")[:6]
    a = vae.elbo_terms(v, x, torch.Generator().manual_seed(3))
    b = hvae.hvae_elbo_terms(h, x, torch.Generator().manual_seed(3))
    assert torch.allclose(a["elbo"], b["elbo"], atol=1e-5)
    assert torch.allclose(a["kl"], b["level_terms"][0], atol=1e-5)


@pytest.mark.slow  # 4 s of Monte Carlo; make test runs it after the book
def test_hvae_terms_match_its_log_weights():
    """eq-hvae-elbo: the sampled log p(x, z)/q(z | x) averages to the split ELBO."""
    torch.manual_seed(4)
    model = hvae.HierarchicalVAE(64, latent_dims=(4, 3, 2), hidden=16)
    x = _digits("test")[:3]
    gen = torch.Generator().manual_seed(4)
    n = 3000
    with torch.no_grad():
        lw = hvae.hvae_log_weights(model, x, n, gen)
        terms = [hvae.hvae_elbo_terms(model, x, gen) for _ in range(n)]
    elbos = torch.stack([t["elbo"] for t in terms])
    assert len(terms[0]["level_terms"]) == 3
    assert [p.shape[1] for p in terms[0]["level_terms_per_dim"]] == [4, 3, 2]
    se = (lw.var(0) / n + elbos.var(0) / n).sqrt()
    assert ((lw.mean(0) - elbos.mean(0)).abs() < 5 * se).all()


def _toy_hierarchy():
    """Chapter 2's counterexample: q(z_1 | x) = N(0, 1), q(z_2 | z_1) = N(z_1, 0.01),
    p(z_2) = N(0, 1), p(z_1 | z_2) = N(z_2, 0.01). Nothing depends on x."""
    model = hvae.HierarchicalVAE(1, latent_dims=(1, 1), hidden=4)
    log_v = math.log(0.01)
    model.encoders = torch.nn.ModuleList(
        [hvae.FixedLinearGaussian(0.0, 0.0), hvae.FixedLinearGaussian(1.0, log_v)]
    )
    model.priors = torch.nn.ModuleList([hvae.FixedLinearGaussian(1.0, log_v)])
    return model


def test_lower_level_term_is_not_a_kl_and_can_be_negative():
    """eq-hvae-elbo: for t < T the level term is not a KL. Closed forms for the toy hierarchy:
    level 1 = ½ log 0.01 < 0, level 2 = ½ (0.01 − log 0.01), and their sum is the joint KL."""
    model = _toy_hierarchy()
    n = 200_000
    with torch.no_grad():
        terms = hvae.hvae_elbo_terms(model, torch.zeros(n, 1), torch.Generator().manual_seed(0))
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
    x0 = _digits("test")[:3].double()
    betas = schedules.betas_linear(1000)
    abar = schedules.alpha_bar_from_betas(betas)
    got = hvae.diffusion_top_term(x0, betas)
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
    torch.testing.assert_close(hvae.diffusion_top_term(x0, one), prior, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="betas"):
        hvae.diffusion_top_term(x0, torch.tensor([0.5, 1.5]))


def test_full_scale_path_runs_at_tiny_size(data_root):
    """Chapter 2's GPU sizes (MNIST, latents (32, 16)) train and evaluate, on 64 images, 3 steps."""
    spec = datasets.DATASETS["mnist"]
    train = datasets.load_images("mnist", "train", root=data_root, limit=64).flatten(1)
    test = datasets.load_images("mnist", "test", root=data_root, limit=8).flatten(1)
    model = hvae.HierarchicalVAE(spec.dim, (32, 16), 32, spec.bins)
    h = fit(model, hvae.hvae_loss, train, steps=3, batch_size=16, device="cpu", progress=False)
    ev = estimators.evaluate(
        model,
        test,
        elbo_terms=hvae.hvae_elbo_terms,
        log_weights=hvae.hvae_log_weights,
        num_samples=2,
    )
    assert len(h.losses) == 3 and torch.isfinite(ev["iwae"]).all()
    assert model.sample(2).shape == (2, 784)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="latent_dims"):
        hvae.HierarchicalVAE(64, latent_dims=())


def test_the_latent_modules_import_no_circle():
    """hvae builds on vae; vae and estimators name neither hvae nor (estimators) vae."""

    def imported(module):
        names = set()
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        return names

    assert "diffusion_lessons.latent.vae" in {n.rsplit(".", 1)[0] for n in imported(hvae)}
    assert "diffusion_lessons.latent.hvae" not in imported(vae)
    for name in ("diffusion_lessons.latent.hvae", "diffusion_lessons.latent.vae"):
        assert name not in imported(estimators)
