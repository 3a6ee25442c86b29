"""The simple losses (each parameterization's own squared error), against exact answers."""

import math

import pytest
import torch

from diffusion_lessons.data import oracles, toy
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, betas_linear
from diffusion_lessons.objectives import simple

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
    loss = simple.denoising_loss(
        model, x0, torch.Generator().manual_seed(8), alpha_bar=AB, parameterization=param
    )
    assert loss.item() < 1e-18


def test_bad_input():
    x0 = torch.zeros(3, 2)
    model = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match=r"unknown parameterization 'v'"):
        simple.denoising_loss(model, x0, None, alpha_bar=AB, parameterization="v")


def test_three_parameterizations_learn_the_exact_posterior_mean():
    """eq-score-eps / eq-eps-to-x0: x_0-, ε- and score-models, trained alike, converted to x̂_0,
    approach the exact E[x_0 | x_t] of a Gaussian mixture (and hence each other)."""
    from diffusion_lessons.denoisers.parameterizations import convert
    from diffusion_lessons.nets import mlp
    from diffusion_lessons.training.fit import fit

    mix = toy.two_gaussians()
    x = mix.sample(8000, generator=torch.Generator().manual_seed(10)).float()
    preds = {}
    i = int((AB < 0.5).nonzero()[0])  # the step where SNR first drops below 1
    ab = AB[i].item()
    xt = mix.noised(ab).sample(2000, generator=torch.Generator().manual_seed(11))
    exact = oracles.mixture_posterior_mean(mix, xt, ab)
    spread = ((exact - exact.mean(0)) ** 2).sum(1).mean().sqrt().item()
    for p in ("x0", "eps", "score"):
        model = mlp.MLPDenoiser(dim=2, hidden=64, depth=2)
        fit(
            model,
            lambda m, b, g, p=p: simple.denoising_loss(
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
