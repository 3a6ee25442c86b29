"""The ancestral sampler, driven by exact denoisers of a Gaussian mixture."""

import math

import pytest
import torch

from diffusion_lessons.data import oracles, toy
from diffusion_lessons.denoisers.denoiser import FromScore
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, betas_linear
from diffusion_lessons.sampling import ancestral

T = 200
AB = alpha_bar_from_betas(betas_linear(T, 5e-4, 0.1))  # DDPM's schedule with 5x fewer, larger steps
MIX = toy.two_gaussians()


def exact_model(param):
    """The exact denoiser D(x_t, λ) = E[x_0 | x_t], directly ("x0") or through the exact score
    and Tweedie's formula (FromScore, "score"), at the level λ the sampler passes."""

    def ab_of(lam):
        assert lam.dtype == torch.float64 and (lam == lam[0]).all()
        return torch.sigmoid(lam[0]).item()

    if param == "x0":
        return lambda xt, lam: oracles.mixture_posterior_mean(MIX, xt, ab_of(lam))

    class Score(torch.nn.Module):
        def forward(self, xt, lam):
            return MIX.noised(ab_of(lam)).score(xt)

    return FromScore(Score())


@pytest.mark.parametrize("param,n", [("x0", 4000), ("score", 2000)])
def test_exact_denoiser_reproduces_the_mixture_moments(param, n):
    """Ancestral sampling with the exact E[x_0|x_t] (or exact score) returns the data's mean and covariance."""
    xs = ancestral.ancestral_sample(
        exact_model(param),
        (n, 2),
        AB,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    cov = MIX.covariance()
    se_mean = (torch.diagonal(cov) / n).sqrt()
    assert ((xs.mean(0) - MIX.mean()).abs() < 5 * se_mean).all()
    # the variance of a sample variance is about (κ − 1) σ⁴ / n; κ ≤ 3 + 2 for this mixture
    se_var = torch.diagonal(cov) * math.sqrt(4 / n)
    assert ((torch.diagonal(torch.cov(xs.T)) - torch.diagonal(cov)).abs() < 5 * se_var).all()
    # the two modes are both present with their weights (half each)
    frac_right = (xs[:, 0] > 0).double().mean().item()
    assert abs(frac_right - 0.5) < 5 * math.sqrt(0.25 / n)


def test_callback_sees_every_step_and_generator_fixes_the_noise():
    seen = []
    model = exact_model("x0")
    ab = AB[:51]  # T = 50
    a = ancestral.ancestral_sample(
        model,
        (5, 2),
        ab,
        generator=torch.Generator().manual_seed(1),
        callback=lambda i, x, x0: seen.append((i, x.shape, x0.shape)),
        dtype=torch.float64,
    )
    b = ancestral.ancestral_sample(
        model, (5, 2), ab, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    # bitwise on purpose: the same sampler with the same seed on the same machine (the callback
    # only records) must reproduce its own draw exactly
    assert torch.equal(a, b)
    assert [s[0] for s in seen] == list(range(50, 0, -1))
    assert all(s[1] == (5, 2) and s[2] == (5, 2) for s in seen)


def test_denoiser_sees_the_grid_levels():
    """Step i calls the denoiser at λ_i = log(ᾱ_i / (1 − ᾱ_i)) of the grid, from i = T down to 1."""
    levels = []

    def denoiser(xt, lam):
        levels.append(lam[0].item())
        return torch.zeros_like(xt)

    ab = AB[:6]
    ancestral.ancestral_sample(denoiser, (3, 2), ab, generator=torch.Generator().manual_seed(3))
    expected = [math.log(ab[i].item() / (1 - ab[i].item())) for i in range(5, 0, -1)]
    assert levels == pytest.approx(expected, rel=1e-12)


def test_last_step_returns_the_prediction():
    """With ᾱ_0 = 1 the last step adds no noise and returns x̂_0 itself (eq-posterior at t = 1)."""
    record = {}
    out = ancestral.ancestral_sample(
        exact_model("x0"),
        (4, 2),
        AB[:11],
        generator=torch.Generator().manual_seed(2),
        callback=lambda i, x, x0: record.update({i: x0}),
        dtype=torch.float64,
    )
    assert torch.allclose(out, record[1], atol=1e-12)


def test_bad_input():
    model = exact_model("x0")
    with pytest.raises(ValueError, match=r"x_T has shape \(3, 2\)"):
        ancestral.ancestral_sample(model, (2, 2), AB, x_T=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="alpha_bar must"):
        ancestral.ancestral_sample(model, (2, 2), torch.tensor([1.0]))
