"""The forward SDEs and the reverse-time samplers, against closed forms (chapter 8).

Oracles: chapter 3's q(x_t | x_0) (eq-forward-marginal), the closed-form β(t) of the linear-β
schedule and σ(t) of the geometric VE, the moment ODEs of the SDEs integrated by RK4, the exact
score of Gaussian data, the exact moments of the Euler–Maruyama chain on Gaussian data (a linear
recursion), and DDPM's posterior step written out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lessons.montecarlo import mean_se
from diffusion_lessons.noise.schedules import get_schedule
from diffusion_lessons.process.forward import q_marginal_mean_std
from diffusion_lessons.sampling import sde

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULES = ["linear_beta", "cosine", "linear_log_snr"]
SIGMA_MIN, SIGMA_MAX = 0.01, 50.0


def ve_geometric() -> sde.VESDE:
    """Song et al.'s VE: λ falls linearly from −2 log σ_min to −2 log σ_max."""
    schedule = get_schedule(
        "linear_log_snr",
        log_snr_max=-2 * math.log(SIGMA_MIN),
        log_snr_min=-2 * math.log(SIGMA_MAX),
    )
    return sde.VESDE(schedule)


def gaussian_denoiser(mu: float, tau: float):
    """E[x_0 | x_t] for x_0 ~ N(μ, τ² I) in the VP variable (eq-tweedie, Gaussian conditioning)."""

    def denoiser(xt, log_snr):
        ab = torch.sigmoid(log_snr.double())[:, None]
        return mu + ab.sqrt() * tau**2 * (xt - ab.sqrt() * mu) / (ab * tau**2 + 1 - ab)

    return denoiser


def rk4(f, y, t0, t1, n):
    """Classical RK4 for dy/dt = f(t, y) with n steps (an independent integrator)."""
    h = (t1 - t0) / n
    t = t0
    for _ in range(n):
        k1 = f(t, y)
        k2 = f(t + h / 2, y + h / 2 * k1)
        k3 = f(t + h / 2, y + h / 2 * k2)
        k4 = f(t + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t += h
    return y


@pytest.mark.parametrize("name", SCHEDULES)
def test_vp_marginal_is_the_forward_marginal_of_chapter_3(name):
    """eq-forward-marginal: the VP SDE's (m, s) at t are q(x_t | x_0)'s (√ᾱ_t x_0, √(1 − ᾱ_t))."""
    vp = sde.VPSDE(get_schedule(name))
    x0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in [0.05, 0.3, 0.7, 0.99]:
        ab = get_schedule(name).alpha_bar(torch.tensor(t, dtype=torch.float64))
        mean, std = q_marginal_mean_std(x0, ab)
        m, s = vp.marginal(t)
        torch.testing.assert_close(m * x0, mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(s, std, rtol=1e-12, atol=1e-14)


def test_vp_beta_is_the_linear_beta_of_ddpm():
    """β(t) = −d log ᾱ/dt by autograd equals β_min + (β_max − β_min) t of the linear-β schedule."""
    vp = sde.VPSDE(get_schedule("linear_beta"))
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    torch.testing.assert_close(vp.beta(t), 0.1 + 19.9 * t, rtol=1e-10, atol=0)


def test_ve_diffusion_is_the_geometric_sigma_of_song_et_al():
    """s(t) = σ_min (σ_max/σ_min)^t and g(t) = s(t) √(2 log(σ_max/σ_min)) (Song et al. 2021)."""
    ve = ve_geometric()
    t = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)
    s = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
    m, s_ve = ve.marginal(t)
    torch.testing.assert_close(m, torch.ones_like(t), rtol=0, atol=0)
    torch.testing.assert_close(s_ve, s, rtol=1e-12, atol=0)
    g = s * math.sqrt(2 * math.log(SIGMA_MAX / SIGMA_MIN))
    torch.testing.assert_close(ve.diffusion(t), g, rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", ["linear_beta", "cosine"])
def test_vp_drift_and_diffusion_integrate_to_the_marginal(name):
    """For a linear drift f(x, t) = k(t) x the moments of dx = f dt + g dw solve m′ = k m and
    v′ = 2 k v + g²; RK4 on the SDE's own drift and diffusion, from the exact moments at t = 0.01
    to t = 0.95, lands on (√ᾱ, 1 − ᾱ) of eq-forward-marginal (the cosine β(t) diverges at t = 1).
    RK4 with 200 steps is accurate to ~1e-9 here; tolerance 1e-7."""
    vp = sde.VPSDE(get_schedule(name))
    m0, s0 = vp.marginal(0.01)
    one = torch.ones(1, dtype=torch.float64)

    def moments(t, y):
        k = vp.drift(one, t)[0]
        return torch.stack([k * y[0], 2 * k * y[1] + vp.diffusion(t) ** 2])

    y = rk4(moments, torch.stack([m0, s0**2]), 0.01, 0.95, 200)
    m1, s1 = vp.marginal(0.95)
    torch.testing.assert_close(y, torch.stack([m1, s1**2]), rtol=1e-7, atol=1e-9)


def test_ve_diffusion_integrates_to_the_marginal():
    """The drift is 0 and v′ = g² integrates from s(0)² to s(1)² (RK4 in 200 steps; tolerance
    1e-7 relative)."""
    ve = ve_geometric()
    assert ve.drift(torch.ones(3, 2), 0.5).abs().max() == 0
    v = rk4(lambda t, y: ve.diffusion(min(t, 1.0)) ** 2, ve.marginal(0.0)[1] ** 2, 0.0, 1.0, 200)
    torch.testing.assert_close(v, ve.marginal(1.0)[1] ** 2, rtol=1e-7, atol=0)


@pytest.mark.parametrize("which", ["vp", "ve"])
def test_marginal_score_is_the_exact_score_of_gaussian_data(which):
    """x_0 ~ N(μ, τ² I): p_t = N(m μ, (m² τ² + s²) I), score −(x − m μ)/(m² τ² + s²) (eq-tweedie)."""
    mu, tau = 0.7, 0.4
    process = sde.VPSDE(get_schedule("cosine")) if which == "vp" else ve_geometric()
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in [0.05, 0.5, 0.95]:
        m, s = process.marginal(t)
        x_t = 3 * s * x  # points on the scale of p_t
        exact = -(x_t - m * mu) / (m**2 * tau**2 + s**2)
        got = sde.marginal_score(process, gaussian_denoiser(mu, tau), x_t, t)
        torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-12)


def _ddpm_step_and_em_step(h, x, z, denoiser):
    """One DDPM ancestral step t → t − h (posterior q(x_{t−h} | x_t, x̂_0), written by hand) and
    one Euler–Maruyama step of the reverse VP SDE, with the same noise z."""
    schedule = get_schedule("linear_beta")
    vp = sde.VPSDE(schedule)
    t = 0.5
    ab, ab_prev = (schedule.alpha_bar(torch.tensor(u, dtype=torch.float64)) for u in (t, t - h))
    beta_d = 1 - ab / ab_prev
    lam = torch.full((x.shape[0],), schedule.log_snr(torch.tensor(t, dtype=torch.float64)).item())
    x0_hat = denoiser(x, lam.double())
    mean = (ab_prev.sqrt() * beta_d * x0_hat + (1 - beta_d).sqrt() * (1 - ab_prev) * x) / (1 - ab)
    std = (beta_d * (1 - ab_prev) / (1 - ab)).sqrt()
    ddpm = mean + std * z
    times = torch.tensor([t, t - h], dtype=torch.float64)
    em_mean = sde.euler_maruyama(vp, denoiser, x, times)  # one step: the last adds no noise
    em = em_mean + vp.diffusion(t) * math.sqrt(h) * z
    return ddpm, em, mean, em_mean


def test_ddpm_step_agrees_with_euler_maruyama_to_first_order():
    """Both steps are x + O(h) and agree to first order: halving h (0.02 → 0.0025, at t = 0.5 of
    linear-β) divides the gap in the means by 4 (O(h²)) and the gap in the noise terms by 2^{3/2}
    (O(h^{3/2})). Measured ratios 3.90, 3.95, 3.97 and 2.76, 2.80, 2.81; asserted within
    [3.6, 4.4] and [2.6, 3.1]."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 2, dtype=torch.float64, generator=gen)
    z = torch.randn(64, 2, dtype=torch.float64, generator=gen)

    def denoiser(xt, log_snr):  # any smooth denoiser: the agreement is about the steps
        return torch.tanh(xt) + 0.1 * torch.sigmoid(log_snr)[:, None]

    steps = [0.02, 0.01, 0.005, 0.0025]
    mean_gap, noise_gap = [], []
    for h in steps:
        ddpm, em, mean, em_mean = _ddpm_step_and_em_step(h, x, z, denoiser)
        mean_gap.append((mean - em_mean).abs().max().item())
        noise_gap.append(((ddpm - mean) - (em - em_mean)).abs().max().item())
    for a, b in zip(mean_gap, mean_gap[1:], strict=False):
        assert 3.6 < a / b < 4.4, mean_gap
    for a, b in zip(noise_gap, noise_gap[1:], strict=False):
        assert 2.6 < a / b < 3.1, noise_gap


def _em_moments_on_gaussian_data(times, mu, tau):
    """Exact mean and variance of the Euler–Maruyama chain on N(μ, τ²) data under linear-β, from
    x_1 ~ N(m_1 μ, v_1): each step x ← A x + b + c z is linear, so the moments recur."""
    schedule = get_schedule("linear_beta")
    mean, var = None, None
    for k in range(len(times) - 1):
        t, h = times[k].item(), (times[k] - times[k + 1]).item()
        beta = 0.1 + 19.9 * t
        ab = schedule.alpha_bar(torch.tensor(t, dtype=torch.float64)).item()
        v_t = ab * tau**2 + 1 - ab
        if mean is None:
            mean, var = math.sqrt(ab) * mu, v_t
        # reverse drift f − g² s = −½ β x + β (x − √ᾱ μ)/v_t
        a_k = 1 - h * (-0.5 * beta + beta / v_t)
        b_k = -h * (-beta * math.sqrt(ab) * mu / v_t)
        noise = beta * h if k < len(times) - 2 else 0.0
        mean, var = a_k * mean + b_k, a_k**2 * var + noise
    return mean, var


def test_euler_maruyama_matches_its_exact_moments_on_gaussian_data():
    """On Gaussian data the EM chain's law is Gaussian with moments from a linear recursion; the
    sampled mean and variance (n = 50,000 per coordinate × 2) match them within 4.5 standard errors
    (the variance's standard error from the draws of (x − mean)²)."""
    mu, tau = 0.5, 0.3
    vp = sde.VPSDE(get_schedule("linear_beta"))
    times = sde.time_grid(40)
    gen = torch.Generator().manual_seed(3)
    ab1 = vp.marginal(1.0)[0].item() ** 2
    x1 = math.sqrt(ab1) * mu + math.sqrt(ab1 * tau**2 + 1 - ab1) * torch.randn(
        50_000, 2, dtype=torch.float64, generator=gen
    )
    x = sde.euler_maruyama(vp, gaussian_denoiser(mu, tau), x1, times, generator=gen)
    mean, var = _em_moments_on_gaussian_data(times, mu, tau)
    assert mean_se(x).within(mean), (mean_se(x), mean)
    assert mean_se((x - mean) ** 2).within(var), (mean_se((x - mean) ** 2), var)
    # the recursion itself targets p_{t_min}: the gap in the mean is O(h), halving with the step
    # (measured 1.98, 1.99), the gap in the variance shrinks faster (measured 4.5, 5.4)
    ab = vp.marginal(1e-3)[0].item() ** 2
    for n in (80, 160):
        (m_a, v_a), (m_b, v_b) = (
            _em_moments_on_gaussian_data(sde.time_grid(k), mu, tau) for k in (n, 2 * n)
        )
        gap_m, gap_v = (m_a - math.sqrt(ab) * mu, v_a - (ab * tau**2 + 1 - ab))
        gap_m2, gap_v2 = (m_b - math.sqrt(ab) * mu, v_b - (ab * tau**2 + 1 - ab))
        assert 1.8 < gap_m / gap_m2 < 2.2 and abs(gap_v / gap_v2) > 1.8


def test_langevin_corrector_keeps_the_marginal():
    """One corrector step of size α = 2ε on exact draws of p_t = N(0, v I) (the score exact) gives
    mean 0 and variance v + α²/(4v) exactly (one ULA step from the target); n = 8000 × 2."""
    vp = sde.VPSDE(get_schedule("linear_beta"))
    mu, tau, t = 0.0, 1.5, 0.3
    m, s = vp.marginal(t)
    v = (m**2 * tau**2 + s**2).item()
    gen = torch.Generator().manual_seed(4)
    x = math.sqrt(v) * torch.randn(8000, 2, dtype=torch.float64, generator=gen)
    state = gen.get_state()
    y = sde.langevin_corrector(
        vp, gaussian_denoiser(mu, tau), x, t, snr=0.16, alpha=1.0, generator=gen
    )
    gen.set_state(state)
    z = torch.randn(8000, 2, dtype=torch.float64, generator=gen)
    score = -x / v
    ratio = 0.16 * z.norm(dim=1).mean() / score.norm(dim=1).mean()
    alpha = 2 * (2 * ratio**2).item()  # Song et al.: ε = 2 α (r ‖z‖/‖s‖)², a step of size 2ε
    assert mean_se(y).within(0.0)
    assert mean_se(y**2).within(v + alpha**2 / (4 * v))


def test_predictor_corrector_counts_its_denoiser_calls():
    """N steps with M corrector steps each cost N + (N − 1) M denoiser calls."""
    calls = []
    base = gaussian_denoiser(0.0, 1.0)

    def denoiser(xt, lam):
        calls.append(1)
        return base(xt, lam)

    vp = sde.VPSDE(get_schedule("linear_beta"))
    x = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    seen = []
    sde.predictor_corrector(
        vp, denoiser, x, sde.time_grid(5), n_corrector=2, callback=lambda k, t, x: seen.append(k)
    )
    assert len(calls) == 5 + 4 * 2
    assert seen == [1, 2, 3, 4, 5]


def test_bad_input_names_the_argument():
    vp = sde.VPSDE(get_schedule("linear_beta"))
    d = gaussian_denoiser(0.0, 1.0)
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="times must .* decrease strictly"):
        sde.euler_maruyama(vp, d, x, torch.tensor([0.1, 0.5]))
    with pytest.raises(ValueError, match="times must lie in"):
        sde.euler_maruyama(vp, d, x, torch.tensor([1.5, 0.5]))
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        sde.time_grid(0)
    with pytest.raises(ValueError, match="t_min"):
        sde.time_grid(10, t_min=1.0)
    with pytest.raises(ValueError, match="snr must be a finite number > 0"):
        sde.predictor_corrector(vp, d, x, sde.time_grid(3), snr=0.0)
    with pytest.raises(ValueError, match="n_corrector must be an integer >= 1"):
        sde.predictor_corrector(vp, d, x, sde.time_grid(3), n_corrector=0)
    with pytest.raises(ValueError, match="t must lie in"):
        vp.marginal(1.2)
    with pytest.raises(ValueError, match="denoiser returned shape"):
        sde.euler_maruyama(vp, lambda xt, lam: xt[:, :1], x, sde.time_grid(2))
