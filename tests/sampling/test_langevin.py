"""Langevin and annealed Langevin dynamics, against exact answers (chapter 8).

Oracles: on a Gaussian target the Langevin chain is linear, x ← A x + (α/2) P μ + √α z with
P = Σ⁻¹ and A = I − (α/2) P, so its mean and covariance after n steps have a closed form
(a matrix recursion written here, independently of the library); the exact score of a
two-component mixture (data.toy) gives annealed Langevin its denoiser through Tweedie's formula.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lessons.data.toy import two_gaussians
from diffusion_lessons.montecarlo import mean_se
from diffusion_lessons.sampling import langevin

pytestmark = pytest.mark.usefixtures("one_thread")

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([[1.0, 0.5], [0.5, 0.8]], dtype=torch.float64)


PRECISION = torch.linalg.inv(SIGMA)


def gaussian_score(x):
    """∇ log N(x; μ, Σ) = −Σ⁻¹ (x − μ) (Σ⁻¹ symmetric)."""
    return -(x - MU) @ PRECISION


def exact_chain_moments(m0, c0, alpha, n):
    """Mean and covariance of n Langevin steps from N(m0, c0) towards N(μ, Σ)."""
    a = torch.eye(2, dtype=torch.float64) - 0.5 * alpha * torch.linalg.inv(SIGMA)
    m, c = m0.clone(), c0.clone()
    for _ in range(n):
        m = MU + a @ (m - MU)
        c = a @ c @ a.T + alpha * torch.eye(2, dtype=torch.float64)
    return m, c


def test_langevin_reproduces_a_gaussian_mean_and_covariance():
    """n = 20,000 chains, 600 steps of α = 0.02 from N((3, −2), ¼ I): the sample mean and each
    covariance entry lie within 4.5 standard errors of the chain's exact moments (standard errors
    of the means of x_i and of (x_i − m_i)(x_j − m_j)); and within 4.5 standard errors plus the
    chain's exact O(α) bias of the target's own μ and Σ."""
    gen = torch.Generator().manual_seed(0)
    n, alpha, steps = 20_000, 0.02, 600
    m0, c0 = torch.tensor([3.0, -2.0], dtype=torch.float64), 0.25 * torch.eye(2).double()
    x0 = m0 + 0.5 * torch.randn(n, 2, dtype=torch.float64, generator=gen)
    x = langevin.langevin(gaussian_score, x0, step_size=alpha, n_steps=steps, generator=gen)
    m, c = exact_chain_moments(m0, c0, alpha, steps)
    for i in range(2):
        est = mean_se(x[:, i])
        assert est.within(m[i].item()), (i, est, m[i])
        assert abs(est.mean - MU[i].item()) <= 4.5 * est.se + abs(m[i] - MU[i]).item()
        for j in range(2):
            cov = mean_se((x[:, i] - m[i]) * (x[:, j] - m[j]))
            assert cov.within(c[i, j].item()), (i, j, cov, c[i, j])
            bias = abs(c[i, j] - SIGMA[i, j]).item()
            assert abs(cov.mean - SIGMA[i, j].item()) <= 4.5 * cov.se + bias
    assert (c - SIGMA).abs().max() < 0.02  # the bias is O(α): small, but there


def test_callback_sees_every_step():
    seen = []
    x = torch.zeros(4, 2, dtype=torch.float64)
    langevin.langevin(
        gaussian_score, x, step_size=0.1, n_steps=5, callback=lambda k, x: seen.append(k)
    )
    assert seen == [1, 2, 3, 4, 5]


def mixture_denoiser(mix):
    """E[x_0 | x_t] = (x_t + σ² ∇ log q_t(x_t))/√ᾱ from the noised mixture's exact score
    (eq-tweedie); every row of a batch shares one noise level."""

    def denoiser(xt, log_snr):
        assert (log_snr == log_snr[0]).all()
        ab = torch.sigmoid(log_snr[0].double()).item()
        return (xt + (1 - ab) * mix.noised(ab).score(xt)) / math.sqrt(ab)

    return denoiser


def test_annealed_langevin_gets_the_mode_weights_plain_langevin_does_not():
    """Two Gaussians at x = ±4 (std 0.5) with weights 0.2 and 0.8, chains started uniformly on
    [−8, 8]²: annealed Langevin (10 levels, σ/√ᾱ from 10 to 0.1, 50 steps each, ε = 0.2 σ_L²)
    puts 0.2 of its n = 1000 chains in the left mode within 4.5 standard errors √(w(1 − w)/n)
    (measured 0.210, 0.8 standard errors off); plain Langevin with the same 500 steps of the
    final size keeps the 50/50 split of its start (measured 0.493, 18.5 standard errors off;
    asserted beyond 10)."""
    mix = two_gaussians(distance=8.0, std=0.5, weight=0.2)
    gen = torch.Generator().manual_seed(0)
    n = 1000
    x0 = 16 * torch.rand(n, 2, dtype=torch.float64, generator=gen) - 8
    log_snrs = torch.linspace(-2 * math.log(10.0), -2 * math.log(0.1), 10, dtype=torch.float64)
    eps = 0.2 * torch.sigmoid(-log_snrs[-1]).item()
    x = langevin.annealed_langevin(
        mixture_denoiser(mix), x0, log_snrs, step_size=eps, n_steps_each=50, generator=gen
    )
    assert mean_se((x[:, 0] < 0).double()).within(0.2)
    y = langevin.langevin(mix.score, x0, step_size=eps, n_steps=500, generator=gen)
    assert not mean_se((y[:, 0] < 0).double()).within(0.2, z=10)


def test_annealed_langevin_runs_the_steps_of_algorithm_1():
    """L levels × T steps, each with the score at its own level and α_i = ε σ_i²/σ_L²: checked
    by recording the levels the denoiser is asked for and the steps the callback sees."""
    asked, seen = [], []

    def denoiser(xt, log_snr):
        asked.append(log_snr[0].item())
        return torch.zeros_like(xt)

    ladder = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    x = torch.zeros(3, 2, dtype=torch.float64)
    langevin.annealed_langevin(
        denoiser, x, ladder, step_size=0.1, n_steps_each=2, callback=lambda k, x: seen.append(k)
    )
    assert asked == [-1.0, -1.0, 0.0, 0.0, 2.0, 2.0]
    assert seen == [1, 2, 3, 4, 5, 6]


def test_annealed_step_sizes_follow_sigma_squared():
    """With D ≡ 0 the score is −x/σ²; from x = 0 with z fixed the first step is √α_1 z, so
    α_1 = ε σ_1²/σ_L² is read back from the iterate."""
    ladder = torch.tensor([-1.0, 3.0], dtype=torch.float64)
    x = torch.zeros(200, 1, dtype=torch.float64)
    first = []
    langevin.annealed_langevin(
        lambda xt, lam: torch.zeros_like(xt),
        x,
        ladder,
        step_size=0.01,
        n_steps_each=1,
        generator=torch.Generator().manual_seed(1),
        callback=lambda k, x: first.append(x.clone()) if k == 1 else None,
    )
    z = torch.randn(200, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    alpha_1 = 0.01 * (1 / (1 + math.exp(-1.0))) / (1 / (1 + math.exp(3.0)))  # ε σ_1²/σ_L²
    torch.testing.assert_close(first[0], math.sqrt(alpha_1) * z, rtol=1e-12, atol=0)


def test_bad_input_names_the_argument():
    x = torch.zeros(3, 2, dtype=torch.float64)
    d = lambda xt, lam: xt  # noqa: E731
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="step_size must be"):
            langevin.langevin(gaussian_score, x, step_size=bad, n_steps=3)
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        langevin.langevin(gaussian_score, x, step_size=0.1, n_steps=0)
    with pytest.raises(ValueError, match="n_steps_each must be an integer >= 1"):
        langevin.annealed_langevin(d, x, torch.tensor([0.0, 1.0]), step_size=0.1, n_steps_each=0)
    for ladder in ([1.0, 0.0], [0.0, 0.0], [[0.0, 1.0]], []):
        with pytest.raises(ValueError, match="log_snrs must"):
            langevin.annealed_langevin(d, x, torch.tensor(ladder), step_size=0.1, n_steps_each=1)
    with pytest.raises(ValueError, match="denoiser returned shape"):
        langevin.annealed_langevin(
            lambda xt, lam: xt[:, :1], x, torch.tensor([0.0]), step_size=0.1, n_steps_each=1
        )
    with pytest.raises(ValueError, match="score returned shape"):
        langevin.langevin(lambda z: z.sum(1), x, step_size=0.1, n_steps=1)
