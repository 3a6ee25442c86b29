"""The forward process against closed forms and Monte Carlo (labels eq-forward-step, eq-forward-marginal)."""

import math

import pytest
import torch

from diffusion_lessons import forward, schedules


def test_step_mean_std_closed_form():
    x = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    beta = torch.tensor([0.19, 0.36])
    mean, std = forward.q_step_mean_std(x, beta)
    assert torch.allclose(mean, torch.tensor([[0.9 * 2.0, -0.9], [0.8 * 0.5, 0.0]]))
    assert torch.allclose(std.flatten(), torch.tensor([math.sqrt(0.19), 0.6]))


def test_marginal_sample_with_given_eps_is_the_reparameterization():
    x0 = torch.randn(5, 3)
    eps = torch.randn(5, 3)
    ab = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    xt, eps_out = forward.q_sample(x0, ab, eps=eps)
    assert eps_out is eps
    for k in range(5):
        expected = math.sqrt(ab[k]) * x0[k] + math.sqrt(1 - ab[k]) * eps[k]
        assert torch.allclose(xt[k], expected)


def test_generator_makes_sampling_reproducible():
    x0 = torch.zeros(4, 2)
    a = forward.q_sample(x0, 0.3, generator=torch.Generator().manual_seed(7))[0]
    b = forward.q_sample(x0, 0.3, generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(a, b)


def test_chain_of_steps_matches_marginal_by_monte_carlo():
    """Running eq-forward-step 30 times gives the moments of eq-forward-marginal."""
    betas = torch.linspace(0.01, 0.2, 30, dtype=torch.float64)
    ab = torch.prod(1 - betas).item()
    n = 200_000
    x0 = torch.tensor([1.0, -2.0], dtype=torch.float64).expand(n, 2)
    xT = forward.run_forward_chain(x0, betas, generator=torch.Generator().manual_seed(0))
    var = 1 - ab
    # 5 standard errors: the sample mean has sd sqrt(var / n), the sample variance var * sqrt(2 / n)
    assert torch.allclose(xT.mean(0), math.sqrt(ab) * x0[0], atol=5 * math.sqrt(var / n))
    assert torch.allclose(
        xT.var(0), torch.full((2,), var, dtype=torch.float64), atol=5 * var * math.sqrt(2 / n)
    )


def test_chain_callback_sees_every_step():
    seen = []
    forward.run_forward_chain(
        torch.zeros(2, 2), torch.full((5,), 0.1), callback=lambda i, x: seen.append(i)
    )
    assert seen == [1, 2, 3, 4, 5]


def test_marginal_sample_moments_by_monte_carlo():
    n = 200_000
    x0 = torch.full((n, 1), 3.0, dtype=torch.float64)
    xt, _ = forward.q_sample(x0, 0.64, generator=torch.Generator().manual_seed(1))
    assert xt.mean().item() == pytest.approx(0.8 * 3.0, abs=5 * 0.6 / math.sqrt(n))
    assert xt.std().item() == pytest.approx(0.6, abs=5 * 0.6 / math.sqrt(2 * n))


def test_marginal_with_schedule_times():
    """q_sample accepts ᾱ computed by a schedule for per-example times t: (B,)."""
    s = schedules.get_schedule("cosine")
    t = torch.tensor([0.1, 0.5, 0.9])
    x0 = torch.ones(3, 1, 4, 4)
    mean, std = forward.q_marginal_mean_std(x0, s.alpha_bar(t))
    assert mean.shape == (3, 1, 4, 4) and std.shape == (3, 1, 1, 1)
    assert torch.allclose(std.flatten(), s.sigma(t))


def test_bad_input():
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"alpha_bar has shape \(3,\) but x0 has shape \(4, 2\)"):
        forward.q_sample(x0, torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \[0, 1\]"):
        forward.q_sample(x0, 1.2)
    with pytest.raises(ValueError, match=r"beta must lie in \(0, 1\]"):
        forward.q_step_sample(x0, 0.0)
    with pytest.raises(ValueError, match=r"eps must have the shape of x0"):
        forward.q_sample(x0, 0.5, eps=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="betas must be non-decreasing"):
        forward.run_forward_chain(x0, torch.tensor([0.2, 0.1]))
