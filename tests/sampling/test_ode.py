"""The probability-flow ODE, DDIM, the fixed-step and adaptive solvers, and the ODE likelihood
(chapter 8), against exact answers.

Oracles: the chain rule (the velocity in the variables y = x/√ᾱ, s = e^{−λ/2} is ε̂, with λ′ by
finite differences); DDIM's Euler step in (y, s) written by hand; the exact flow map of Gaussian
data (the ODE keeps each coordinate's standardized value (x − √ᾱ μ)/√(ᾱ τ² + σ²)); the exact
log-density of a noised 2-D Gaussian mixture (data.toy); the trace of a known Jacobian.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lessons import divergence
from diffusion_lessons.data.toy import GaussianMixture
from diffusion_lessons.denoisers.denoiser import eps_from
from diffusion_lessons.montecarlo import mean_se
from diffusion_lessons.noise.schedules import get_schedule
from diffusion_lessons.sampling import ode, sde

pytestmark = pytest.mark.usefixtures("one_thread")

VP = sde.VPSDE(get_schedule("linear_beta"))
MU, TAU = 0.6, 0.4


def gaussian_denoiser(mu, tau):
    """E[x_0 | x_t] for x_0 ~ N(μ, τ² I) (eq-tweedie on a Gaussian)."""

    def denoiser(xt, log_snr):
        ab = torch.sigmoid(log_snr.double()).reshape((-1,) + (1,) * (xt.ndim - 1))
        return mu + ab.sqrt() * tau**2 * (xt - ab.sqrt() * mu) / (ab * tau**2 + 1 - ab)

    return denoiser


def gaussian_flow_map(x, t_from, t_to, mu=MU, tau=TAU):
    """The exact probability-flow map of N(μ, τ²) data from t_from to t_to."""
    m_a, s_a = VP.marginal(t_from)
    m_b, s_b = VP.marginal(t_to)
    z = (x - m_a * mu) / torch.sqrt(m_a**2 * tau**2 + s_a**2)
    return m_b * mu + torch.sqrt(m_b**2 * tau**2 + s_b**2) * z


def smooth_denoiser(xt, log_snr):
    """Some smooth denoiser: the identities below hold for any one."""
    return torch.tanh(xt) * torch.sigmoid(log_snr)[:, None] + 0.2 * xt.roll(1, dims=1)


def mixture():
    covs = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]])
    return GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.5, 0.5], [1.0, -0.5]]), covs)


def mixture_denoiser(mix):
    """(x_t + σ² ∇ log q_t(x_t))/√ᾱ with the noised mixture's exact score (eq-tweedie)."""

    def denoiser(xt, log_snr):
        assert (log_snr == log_snr[0]).all()
        ab = torch.sigmoid(log_snr[0].double()).item()
        return (xt + (1 - ab) * mix.noised(ab).score(xt)) / math.sqrt(ab)

    return denoiser


# ---------------------------------------------------------------------------------------------
# The velocity and DDIM


@pytest.mark.parametrize("name", ["linear_beta", "cosine"])
def test_velocity_in_ddim_variables_is_eps_hat(name):
    """dy/ds = (dy/dt)/(ds/dt) = ε̂(x, λ) for y = x/√ᾱ, s = e^{−λ/2} (Song, Meng & Ermon 2021,
    eq. 14), with dλ/dt by central differences (h = 1e-5, error ~1e-9); tolerance 1e-6."""
    schedule = get_schedule(name)
    vp = sde.VPSDE(schedule)
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in [0.2, 0.5, 0.8]:
        h = 1e-5
        lam = schedule.log_snr(torch.tensor(t, dtype=torch.float64))
        before, after = (torch.tensor(u, dtype=torch.float64) for u in (t - h, t + h))
        dlam = (schedule.log_snr(after) - schedule.log_snr(before)) / (2 * h)
        a, sig2 = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam)
        v = ode.probability_flow_velocity(vp, smooth_denoiser, x, t)
        dy_dt = v / a - x * (0.5 * sig2 * dlam) / a  # d√ᾱ/dt = ½ √ᾱ σ² λ′
        ds_dt = -0.5 * dlam * torch.exp(-lam / 2)
        eps_hat = eps_from(smooth_denoiser, x, lam.expand(8))
        torch.testing.assert_close(dy_dt / ds_dt, eps_hat, rtol=1e-6, atol=1e-6)


def test_ddim_is_the_euler_step_in_y_and_s():
    """y′ = y + (s′ − s) ε̂ with y = x/√ᾱ, s = σ/√ᾱ, done by hand, equals one DDIM step (η = 0);
    float64 rounding only (tolerance 1e-12)."""
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for lam, lam_next in [(-3.0, -1.0), (0.5, 4.0), (2.0, 2.1)]:
        ladder = torch.tensor([lam, lam_next], dtype=torch.float64)
        a, a_next = (torch.sigmoid(ladder).sqrt()).tolist()
        s, s_next = torch.exp(-ladder / 2).tolist()
        y = x / a
        eps_hat = eps_from(smooth_denoiser, x, torch.full((16,), lam, dtype=torch.float64))
        y_next = y + (s_next - s) * eps_hat
        torch.testing.assert_close(
            ode.ddim(smooth_denoiser, x, ladder), a_next * y_next, rtol=1e-12, atol=1e-12
        )


def test_ddim_lands_on_a_point_mass_in_one_step():
    """Data at one point μ: x̂_0 = μ is exact, and one DDIM step to λ = +∞ returns μ."""
    mu = torch.tensor([0.3, -1.2], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = ode.ddim(lambda xt, lam: mu.expand_as(xt), x, torch.tensor([-2.0, math.inf]))
    torch.testing.assert_close(out, mu.expand_as(x), rtol=0, atol=1e-15)


def test_ddim_converges_to_the_exact_flow_of_gaussian_data():
    """With the exact denoiser of N(μ, τ²) data, N DDIM steps (uniform in t over linear-β, t = 1 →
    1e-3) approach the exact flow map at first order: the error halves when N doubles (measured
    ratios 1.95, 1.97, 1.99 for N = 32 … 256; asserted within [1.7, 2.3]); at N = 256 it is
    0.0117 (asserted < 0.02)."""
    x1 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = gaussian_flow_map(x1, 1.0, 1e-3)
    errors = []
    for n in [32, 64, 128, 256]:
        out = ode.ddim(gaussian_denoiser(MU, TAU), x1, VP.log_snr(sde.time_grid(n)))
        errors.append((out - exact).abs().max().item())
    for a, b in zip(errors, errors[1:], strict=False):
        assert 1.7 < a / b < 2.3, errors
    assert errors[-1] < 0.02, errors


# ---------------------------------------------------------------------------------------------
# Euler, Heun and the adaptive solver on Gaussian data


def test_euler_is_first_order_and_heun_second_order():
    """On Gaussian data the errors against the exact flow map shrink by 2 (Euler) and by 4 (Heun)
    when the number of steps doubles (t = 1 → 0.05 on linear-β, N = 32 … 256). Measured ratios:
    Euler 2.20, 2.10, 2.05, Heun 3.95, 3.98, 3.99; asserted within [1.8, 2.4] and [3.6, 4.4]."""
    x1 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    exact = gaussian_flow_map(x1, 1.0, 0.05)
    d = gaussian_denoiser(MU, TAU)
    euler_err, heun_err = [], []
    for n in [32, 64, 128, 256]:
        ts = sde.time_grid(n, t_min=0.05)
        euler_err.append((ode.euler(VP, d, x1, ts) - exact).abs().max().item())
        heun_err.append((ode.heun(VP, d, x1, ts) - exact).abs().max().item())
    for a, b in zip(euler_err, euler_err[1:], strict=False):
        assert 1.8 < a / b < 2.4, euler_err
    for a, b in zip(heun_err, heun_err[1:], strict=False):
        assert 3.6 < a / b < 4.4, heun_err


def test_adaptive_solver_reaches_the_exact_flow_within_its_tolerance():
    """dopri5 at rtol = atol = 1e-6 lands within 1e-5 of the exact flow map and reports its
    number of evaluations (a multiple of dopri5's six stages plus the start, > 0)."""
    x1 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sol = ode.solve_adaptive(VP, gaussian_denoiser(MU, TAU), x1, rtol=1e-6, atol=1e-6)
    exact = gaussian_flow_map(x1, 1.0, 1e-3)
    assert (sol.x - exact).abs().max() < 1e-5
    assert sol.nfe > 6


def test_probability_flow_keeps_the_mixture_marginals():
    """Exact draws of the noised 2-D mixture at t = 1 carried by dopri5 (rtol = atol = 1e-5) to
    t = 1e-3 have the exact mean and covariance of the mixture noised to ᾱ(1e-3) within 4.5
    standard errors (n = 10,000; moments of (x − exact mean) products)."""
    mix = mixture()
    ab_1, ab_min = (VP.marginal(t)[0].item() ** 2 for t in (1.0, 1e-3))
    x1 = mix.noised(ab_1).sample(10_000, generator=torch.Generator().manual_seed(11))
    x = ode.solve_adaptive(VP, mixture_denoiser(mix), x1, rtol=1e-5, atol=1e-5).x
    target = mix.noised(ab_min)
    mean, cov = target.mean(), target.covariance()
    for i in range(2):
        assert mean_se(x[:, i]).within(mean[i].item())
        for j in range(2):
            products = (x[:, i] - mean[i]) * (x[:, j] - mean[j])
            assert mean_se(products).within(cov[i, j].item()), (i, j, mean_se(products))


# ---------------------------------------------------------------------------------------------
# Divergences and the likelihood


def test_exact_divergence_is_the_trace_of_a_known_jacobian():
    """f(x) = A x + sin(x) elementwise has ∇·f = tr A + Σ cos(x_i)."""
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    x = torch.randn(10, 3, dtype=torch.float64, generator=gen)
    div = divergence.exact_divergence(lambda z: z @ a.T + torch.sin(z), x)
    torch.testing.assert_close(div, torch.trace(a) + torch.cos(x).sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("probe", [divergence.rademacher_probe, divergence.gaussian_probe])
def test_hutchinson_is_unbiased(probe):
    """The mean of vᵀ J v over n = 4000 probes equals the exact trace of the velocity's Jacobian
    (a nonlinear field: the mixture's probability-flow velocity at t = 0.3) within 4.5 standard
    errors, at each of 3 points."""
    mix = mixture()
    d = mixture_denoiser(mix)

    def f(z):
        return ode.probability_flow_velocity(VP, d, z, 0.3)

    points = torch.tensor([[0.0, 0.0], [-1.0, 0.7], [1.2, -1.0]], dtype=torch.float64)
    exact = divergence.exact_divergence(f, points)
    n = 4000
    x = points.repeat_interleave(n, dim=0)
    v = probe(x, generator=torch.Generator().manual_seed(7))
    est = divergence.hutchinson_divergence(f, x, v).reshape(3, n)
    for k in range(3):
        stats = mean_se(est[k])
        assert stats.within(exact[k].item()), (k, stats, exact[k])
        assert stats.se > 0  # the estimator is random: a zero spread would hide a bug


def test_ode_log_likelihood_equals_the_exact_mixture_log_density():
    """log p_{t_min}(x) by the instantaneous change of variables, with the exact score of a 2-D
    mixture and its exact noised law at t = 1 as the prior, equals the exact log-density of the
    mixture noised to ᾱ(t_min): measured error 2.7e-6 at rtol = atol = 1e-6 (80 evaluations;
    2.6e-5 at 1e-5, 2.0e-7 at 1e-7); asserted < 1e-5."""
    mix = mixture()
    x = mix.sample(4, generator=torch.Generator().manual_seed(8))
    ab_1 = VP.marginal(1.0)[0].item() ** 2
    ab_min = VP.marginal(1e-3)[0].item() ** 2
    res = ode.log_likelihood_exact(
        VP, mixture_denoiser(mix), x, mix.noised(ab_1).log_prob, rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(res.log_prob, mix.noised(ab_min).log_prob(x), rtol=0, atol=1e-5)
    assert res.nfe > 6 and res.x_end.shape == x.shape


def test_hutchinson_log_likelihood_is_unbiased():
    """With 64 Rademacher probes per point (one fixed probe per solve, the rows solved together),
    the mean of the estimates is within 4.5 standard errors (plus 1e-4 for the solver) of the
    exact-divergence log-likelihood, for each of 2 points."""
    mix = mixture()
    d = mixture_denoiser(mix)
    prior = mix.noised(VP.marginal(1.0)[0].item() ** 2).log_prob
    points = mix.sample(2, generator=torch.Generator().manual_seed(9))
    exact = ode.log_likelihood_exact(VP, d, points, prior, rtol=1e-5, atol=1e-5).log_prob
    x = points.repeat_interleave(64, dim=0)
    v = divergence.rademacher_probe(x, generator=torch.Generator().manual_seed(10))
    est = ode.log_likelihood_hutchinson(VP, d, x, prior, v, rtol=1e-5, atol=1e-5).log_prob
    for k in range(2):
        stats = mean_se(est[64 * k : 64 * (k + 1)])
        assert abs(stats.mean - exact[k].item()) <= 4.5 * stats.se + 1e-4, (k, stats, exact[k])


def test_bad_input_names_the_argument():
    x = torch.zeros(3, 2, dtype=torch.float64)
    d = gaussian_denoiser(MU, TAU)
    with pytest.raises(ValueError, match="log_snrs must increase strictly"):
        ode.ddim(d, x, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="infinite only at its last entry"):
        ode.ddim(d, x, torch.tensor([-math.inf, 0.0]))
    with pytest.raises(ValueError, match="times must"):
        ode.heun(VP, d, x, torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match=r"\(t_start, t_end\) must"):
        ode.solve_adaptive(VP, d, x, t_start=0.1, t_end=0.5)
    with pytest.raises(ValueError, match="probe has shape"):
        ode.log_likelihood_hutchinson(VP, d, x, lambda z: z.sum(1), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="t_min must lie in"):
        ode.log_likelihood_exact(VP, d, x, lambda z: z.sum(1), t_min=-0.1)
    with pytest.raises(ValueError, match="denoiser returned shape"):
        ode.ddim(lambda xt, lam: xt.sum(1), x, torch.tensor([0.0, 1.0]))
