"""Terms of the discrete-time diffusion ELBO and the training losses, against independent calculations."""

import math

import pytest
import torch
from scipy.stats import norm

from diffusion_lessons import data, losses, posterior
from diffusion_lessons.schedules import alpha_bar_from_betas, betas_linear

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
        kl = losses.denoising_kl(x0, x0_hat, xt, AB[t], AB[t - 1])
        mse = losses.snr_weighted_mse(x0, x0_hat, AB[t], AB[t - 1])
        assert torch.allclose(kl, mse, rtol=1e-9, atol=1e-12)


def test_prior_kl_matches_torch_distributions():
    """The prior term of eq-diffusion-elbo against torch.distributions.kl_divergence."""
    x0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ab = 0.05
    q = torch.distributions.Normal(math.sqrt(ab) * x0, math.sqrt(1 - ab))
    p = torch.distributions.Normal(torch.zeros_like(x0), torch.ones_like(x0))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(losses.prior_kl(x0, ab), expected, atol=1e-12)


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
    nats = losses.reconstruction_nll(x0, mean, math.log(scale), bins=bins)
    bpd = nats.item() / (5 * math.log(2))
    assert bpd == pytest.approx(expected_bits / 5, rel=1e-9)


def test_continuous_reconstruction_is_gaussian_nll():
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean = x0 * 0.9
    expected = -torch.distributions.Normal(mean, 0.1).log_prob(x0).sum(1)
    assert torch.allclose(losses.reconstruction_nll(x0, mean, math.log(0.1)), expected, atol=1e-12)


def test_nelbo_of_exact_denoiser_bounds_the_true_nll():
    """eq-diffusion-elbo: with the exact E[x_0|x_t], −ELBO ≥ −log p(x_0) (on average), and is close."""
    mix = data.two_gaussians()
    model = grid_model(lambda xt, ab: posterior.mixture_posterior_mean(mix, xt, ab), AB)
    x0 = mix.sample(4000, generator=torch.Generator().manual_seed(3))
    terms = losses.nelbo_terms(
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
    mix = data.two_gaussians()

    def model(xt, t):  # any fixed denoiser will do: x̂_0 = a time-dependent shrinkage of x_t
        return xt * (1 - t)[:, None]

    x0 = mix.sample(200, generator=torch.Generator().manual_seed(5))
    exact = losses.nelbo_terms(
        model, x0, AB, parameterization="x0", generator=torch.Generator().manual_seed(6)
    )
    g = torch.Generator().manual_seed(7)
    draws = torch.stack([losses.elbo_loss(model, x0, g, alpha_bar=AB) for _ in range(1000)])
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact["total"].mean().item()) < 5 * se + 0.05


@pytest.mark.parametrize("param", ["x0", "eps", "score"])
def test_denoising_loss_is_zero_for_the_exact_answer_on_a_point_mass(param):
    """For data = one point x*, the optimal x_0, ε and score are known exactly; each loss is 0."""
    point = torch.tensor([0.7, -1.1], dtype=torch.float64)
    exact = {
        "x0": lambda xt, ab: point.expand_as(xt),
        "eps": lambda xt, ab: (xt - math.sqrt(ab) * point) / math.sqrt(1 - ab),
        "score": lambda xt, ab: -(xt - math.sqrt(ab) * point) / (1 - ab),
    }[param]
    model = grid_model(exact, AB)
    x0 = point.expand(64, 2).clone()
    loss = losses.denoising_loss(
        model, x0, torch.Generator().manual_seed(8), alpha_bar=AB, parameterization=param
    )
    assert loss.item() < 1e-18


def test_bad_input():
    x0 = torch.zeros(3, 2)
    model = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match=r"unknown parameterization 'v'"):
        losses.denoising_loss(model, x0, None, alpha_bar=AB, parameterization="v")
    with pytest.raises(ValueError, match=r"unknown parameterization 'v'"):
        losses.elbo_loss(model, x0, None, alpha_bar=AB, parameterization="v")
    with pytest.raises(ValueError, match=r"i must lie in 1..100"):
        losses.predict_x0(model, x0, torch.tensor([0, 1, 2]), AB, parameterization="x0")
    with pytest.raises(ValueError, match="x0 has shape"):
        losses.snr_weighted_mse(x0, torch.zeros(3, 3), 0.5, 0.6)
    with pytest.raises(ValueError, match="alpha_bar must decrease strictly"):
        losses.nelbo_terms(model, x0, torch.tensor([1.0, 0.5, 0.7]), parameterization="x0")
    with pytest.raises(ValueError, match="bins must be None"):
        losses.reconstruction_nll(x0, x0, 0.0, bins=1)


def test_three_parameterizations_learn_the_exact_posterior_mean():
    """eq-score-eps / eq-eps-to-x0: x_0-, ε- and score-models, trained alike, converted to x̂_0,
    approach the exact E[x_0 | x_t] of a Gaussian mixture (and hence each other)."""
    from diffusion_lessons import nets, train
    from diffusion_lessons.parameterizations import convert

    mix = data.two_gaussians()
    x = mix.sample(8000, generator=torch.Generator().manual_seed(10)).float()
    preds = {}
    i = int((AB < 0.5).nonzero()[0])  # the step where SNR first drops below 1
    ab = AB[i].item()
    xt = mix.noised(ab).sample(2000, generator=torch.Generator().manual_seed(11))
    exact = posterior.mixture_posterior_mean(mix, xt, ab)
    spread = ((exact - exact.mean(0)) ** 2).sum(1).mean().sqrt().item()
    for p in ("x0", "eps", "score"):
        model = nets.MLPDenoiser(dim=2, hidden=64, depth=2)
        train.fit(
            model,
            lambda m, b, g, p=p: losses.denoising_loss(
                m, b[0], g, alpha_bar=AB, parameterization=p
            ),
            x,
            steps=600,
            batch_size=256,
            lr=3e-3,
            progress=False,
            device="cpu",
        )
        with torch.no_grad():
            out = model(xt.float(), torch.full((len(xt),), i / 100)).double()
        preds[p] = convert(out, source=p, target="x0", xt=xt, alpha_bar=ab)
        rms = ((preds[p] - exact) ** 2).sum(1).mean().sqrt().item()
        assert rms < 0.25 * spread, (p, rms, spread)
    for a, b in (("x0", "eps"), ("x0", "score"), ("eps", "score")):
        assert ((preds[a] - preds[b]) ** 2).sum(1).mean().sqrt().item() < 0.4 * spread
