"""The forward process against closed forms and Monte Carlo (labels eq-forward-step, eq-forward-marginal)."""

import math

import pytest
import torch

from diffusion_lessons.noise import schedules
from diffusion_lessons.process import forward


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
    # bitwise on purpose: the same function with the same seed on the same machine
    assert torch.equal(a, b)


X64 = torch.tensor([[1.5, -0.5, 0.25, 2.0], [0.3, -1.7, 0.0, 0.9]], dtype=torch.float64)


@pytest.mark.parametrize(
    "beta",
    [0.1, torch.tensor(0.1, dtype=torch.float64), torch.tensor([0.1, 0.37], dtype=torch.float64)],
)
def test_float64_data_gets_float64_step_coefficients(beta):
    """√(1 − β) and √β of a Python float or float64 β are taken in double precision for float64 data.

    The reference is math.sqrt; the old code rounded a Python float β to float32 (0.1 → 0.100000001)
    and was off by ~2e-9, far above the 1e-15 allowed here (a few float64 roundings)."""
    mean, std = forward.q_step_mean_std(X64, beta)
    assert mean.dtype == std.dtype == torch.float64
    per_row = torch.as_tensor(beta, dtype=torch.float64).expand(2).tolist()
    for k, b in enumerate(per_row):
        expected = torch.tensor(
            [math.sqrt(1 - b) * v for v in X64[k].tolist()], dtype=torch.float64
        )
        torch.testing.assert_close(mean[k], expected, rtol=0, atol=1e-15)
        assert abs(std.expand(2, 1)[k].item() - math.sqrt(b)) < 1e-16


@pytest.mark.parametrize("alpha_bar", [0.3, torch.tensor(0.3, dtype=torch.float64)])
def test_float64_data_gets_float64_marginal_coefficients(alpha_bar):
    """q_marginal_mean_std and q_sample with ᾱ = 0.3 on float64 data against math.sqrt (old: ~2e-8)."""
    mean, std = forward.q_marginal_mean_std(X64, alpha_bar)
    torch.testing.assert_close(mean, math.sqrt(0.3) * X64, rtol=0, atol=1e-15)
    assert abs(std.item() - math.sqrt(0.7)) < 1e-16
    eps = torch.randn(X64.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xt, _ = forward.q_sample(X64, alpha_bar, eps=eps)
    torch.testing.assert_close(xt, math.sqrt(0.3) * X64 + math.sqrt(0.7) * eps, rtol=0, atol=1e-15)


def test_float32_coefficient_on_float64_data_is_taken_exactly():
    """A float32 ᾱ is a number like any other: its root is taken in float64 for float64 data."""
    ab32 = torch.tensor(0.3, dtype=torch.float32)
    _, std = forward.q_marginal_mean_std(X64, ab32)
    assert abs(std.item() - math.sqrt(1 - ab32.item())) < 1e-16


def test_float32_data_keeps_float32_and_the_same_values_up_to_rounding():
    """For float32 data the result stays float32, within two float32 roundings of the float64 one."""
    x32 = X64.float()
    for coef in (0.1, torch.tensor([0.1, 0.37]), torch.tensor([0.1, 0.37], dtype=torch.float64)):
        mean, std = forward.q_step_mean_std(x32, coef)
        ref_mean, ref_std = forward.q_step_mean_std(x32.double(), coef)
        assert mean.dtype == std.dtype == torch.float32
        # each float32 result is the float64 one rounded at most twice: 2 × 2^-24 relative
        torch.testing.assert_close(mean.double(), ref_mean, rtol=2**-23, atol=0)
        torch.testing.assert_close(std.double(), ref_std, rtol=2**-23, atol=0)


def test_chain_on_float64_data_matches_a_hand_written_float64_chain():
    """run_forward_chain with float64 betas and data against x ← √(1−β) x + √β ε in math.sqrt.

    Same generator, so the same ε; the old code (betas.tolist() through float32) differed by 1.6e-8.
    The two are written differently, so they agree up to rounding: 1e-13 covers 30 steps of
    float64 rounding on numbers of size < 10."""
    betas = torch.linspace(0.01, 0.2, 30, dtype=torch.float64)
    out = forward.run_forward_chain(X64, betas, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    y = X64.clone()
    for b in betas.tolist():
        y = math.sqrt(1 - b) * y + math.sqrt(b) * torch.randn(y.shape, generator=g, dtype=y.dtype)
    torch.testing.assert_close(out, y, rtol=0, atol=1e-13)


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
    with pytest.raises(ValueError, match=r"betas must lie in the open interval \(0, 1\)"):
        forward.run_forward_chain(x0, torch.tensor([0.2, 1.0]))


def test_chain_accepts_non_monotone_betas():
    """Only 0 < β_t < 1 is required; a decreasing schedule is unusual but valid."""
    x0 = torch.zeros(3, 2)
    out = forward.run_forward_chain(x0, torch.tensor([0.2, 0.1]), generator=torch.Generator())
    assert out.shape == x0.shape
