"""The simple losses (each parameterization's own squared error), against exact answers."""

import math

import pytest
import torch

from diffusion_lessons.data import oracles, toy
from diffusion_lessons.denoisers import denoiser as dn
from diffusion_lessons.montecarlo import mean_se
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, betas_linear, get_schedule
from diffusion_lessons.objectives import simple

AB = alpha_bar_from_betas(betas_linear(100, 1e-3, 0.2))  # T = 100, ᾱ_0 = 1
LOSSES = {"x0": simple.x0_loss, "eps": simple.eps_loss, "score": simple.score_loss}
WRAPPERS = {"x0": dn.FromX0, "eps": dn.FromEps, "score": dn.FromScore}


@pytest.mark.parametrize("param", ["x0", "eps", "score"])
def test_each_loss_is_zero_for_the_exact_answer_on_a_point_mass(param):
    """For data = one point x*, the optimal x_0, ε and score are known exactly; each loss is 0."""
    point = torch.tensor([0.7, -1.1], dtype=torch.float64)

    def exact(xt, lam):  # the network's output in its own units, at λ (cond is the identity)
        ab, var = torch.sigmoid(lam)[:, None], torch.sigmoid(-lam)[:, None]
        return {
            "x0": lambda: point.expand_as(xt),
            "eps": lambda: (xt - ab.sqrt() * point) / var.sqrt(),
            "score": lambda: -(xt - ab.sqrt() * point) / var,
        }[param]()

    x0 = point.expand(64, 2).clone()
    loss = LOSSES[param](WRAPPERS[param](exact), x0, torch.Generator().manual_seed(8), alpha_bar=AB)
    assert loss.item() < 1e-18


@pytest.mark.parametrize("param", ["x0", "eps", "score"])
def test_each_loss_is_the_mean_squared_error_of_its_own_units(param):
    """A network that outputs a constant c: the loss is E‖c − target‖² on the same draws."""
    x0 = toy.two_gaussians().sample(512, generator=torch.Generator().manual_seed(3))
    c = torch.tensor([0.2, -0.4], dtype=torch.float64)
    net = lambda x, t: c.expand_as(x)  # noqa: E731
    loss = LOSSES[param](
        WRAPPERS[param](net, cond=dn.grid_time(AB)),
        x0,
        torch.Generator().manual_seed(4),
        alpha_bar=AB,
    )
    # the same draws by hand: i, then ε (the order of the library's draws)
    g = torch.Generator().manual_seed(4)
    i = torch.randint(1, 101, (512,), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ab = AB[i][:, None]
    target = {"x0": x0, "eps": eps, "score": -eps / (1 - ab).sqrt()}[param]
    torch.testing.assert_close(loss, ((c - target) ** 2).mean(), rtol=1e-12, atol=0)


def test_bad_input():
    x0 = torch.zeros(3, 2)
    with pytest.raises(
        ValueError, match=r"the denoiser returned shape \(3, 1\), expected \(3, 2\)"
    ):
        simple.x0_loss(lambda x, lam: x[:, :1], x0, None, alpha_bar=AB)
    with pytest.raises(ValueError, match=r"alpha_bar must decrease strictly"):
        simple.eps_loss(dn.FromEps(lambda x, c: x), x0, None, alpha_bar=AB.flip(0))
    sched = get_schedule("linear_log_snr")
    with pytest.raises(ValueError, match=r"eps has shape \(3, 1\) but x0 has shape \(3, 2\)"):
        simple.eps_loss_continuous(x0, dn.FromEps(lambda x, c: x), sched, torch.rand(3), x0[:, :1])
    with pytest.raises(ValueError, match=r"t must have shape \(B,\) = \(3,\)"):
        simple.eps_loss_continuous(x0, dn.FromEps(lambda x, c: x), sched, torch.rand(2), x0)


def test_eps_loss_continuous_by_hand_and_at_its_closed_form():
    """L_simple at t ∈ [0, 1]: by hand on the same draws, and its mean for Gaussian data under
    the optimal denoiser against oracles.gaussian_eps_loss_exact (Monte Carlo, z = 4.5)."""
    v, d, lmax, lmin = 0.5, 4, 8.0, -5.0
    sched = get_schedule("linear_log_snr", log_snr_max=lmax, log_snr_min=lmin)
    g = torch.Generator().manual_seed(5)
    n = 40_000
    x0 = math.sqrt(v) * torch.randn(n, d, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    best = oracles.gaussian_optimal_x0(v)
    per_example = simple.eps_loss_continuous(x0, best, sched, t, eps)
    lam = sched.log_snr(t)
    ab = torch.sigmoid(lam)[:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    eps_hat = (xt - ab.sqrt() * best(xt, lam)) / (1 - ab).sqrt()
    torch.testing.assert_close(per_example, ((eps - eps_hat) ** 2).sum(1), rtol=1e-9, atol=1e-12)
    assert mean_se(per_example).within(oracles.gaussian_eps_loss_exact(v, d, lmax, lmin))


@pytest.mark.slow  # trains three networks (5 s); make test runs it after the book
def test_three_parameterizations_learn_the_exact_posterior_mean():
    """eq-score-eps / eq-eps-to-x0: x_0-, ε- and score-models, trained alike and read as
    denoisers, approach the exact E[x_0 | x_t] of a Gaussian mixture (and hence each other)."""
    from diffusion_lessons.nets import mlp
    from diffusion_lessons.training.fit import fit

    mix = toy.two_gaussians()
    x = mix.sample(8000, generator=torch.Generator().manual_seed(10)).float()
    preds = {}
    i = int((AB < 0.5).nonzero()[0])  # the step where SNR first drops below 1
    ab = AB[i].item()
    xt = mix.noised(ab).sample(2000, generator=torch.Generator().manual_seed(11))
    lam = torch.full((len(xt),), math.log(ab / (1 - ab)), dtype=torch.float64)
    exact = oracles.mixture_denoiser(mix)(xt, lam)
    spread = ((exact - exact.mean(0)) ** 2).sum(1).mean().sqrt().item()
    for p in ("x0", "eps", "score"):
        model = WRAPPERS[p](mlp.MLPDenoiser(dim=2, hidden=64, depth=2), cond=dn.grid_time(AB))
        fit(
            model,
            lambda m, b, g, p=p: LOSSES[p](m, b[0], g, alpha_bar=AB),
            x,
            steps=600,
            batch_size=256,
            lr=3e-3,
            progress=False,
            device="cpu",
        )
        with torch.no_grad():
            preds[p] = model(xt.float(), lam).double()
        rms = ((preds[p] - exact) ** 2).sum(1).mean().sqrt().item()
        assert rms < 0.25 * spread, (p, rms, spread)
    for a, b in (("x0", "eps"), ("x0", "score"), ("eps", "score")):
        assert ((preds[a] - preds[b]) ** 2).sum(1).mean().sqrt().item() < 0.4 * spread
