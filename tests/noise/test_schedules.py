"""Schedules against independent calculations (labels eq-snr, eq-alpha-from-log-snr)."""

import math

import numpy as np
import pytest
import torch

from diffusion_lessons.noise import schedules


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_alpha_bar_sigma_snr_are_consistent(name):
    """eq-snr and eq-alpha-from-log-snr: ᾱ + σ² = 1 and SNR = ᾱ / σ², away from the endpoints."""
    s = schedules.get_schedule(name)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    ab, sig, snr = s.alpha_bar(t), s.sigma(t), s.snr(t)
    assert torch.allclose(ab + sig**2, torch.ones_like(t), atol=1e-12)
    assert torch.allclose(snr, ab / sig**2, rtol=1e-9)
    assert torch.allclose(s.log_snr(t), torch.log(ab) - torch.log1p(-ab), rtol=1e-9, atol=1e-9)
    assert (s.log_snr(t)[1:] < s.log_snr(t)[:-1]).all(), "log-SNR must decrease in t"


def test_linear_beta_matches_numerical_integral_of_beta():
    """log ᾱ(t) = −∫_0^t β(s) ds with β(s) = 0.1 + 19.9 s, integrated by the trapezoid rule."""
    s = schedules.get_schedule("linear_beta")
    for t in (0.05, 0.3, 0.7, 1.0):
        grid = np.linspace(0, t, 20001)
        integral = np.trapezoid(0.1 + 19.9 * grid, grid)
        assert s.alpha_bar(torch.tensor(t, dtype=torch.float64)).item() == pytest.approx(
            math.exp(-integral), rel=1e-7
        )


def test_linear_beta_is_the_limit_of_ddpm_discrete_schedule():
    """ᾱ_i = ∏(1 − β_s) from DDPM's 1000 betas agrees with the continuous schedule at t = i/T."""
    betas = schedules.betas_linear(1000)
    discrete = np.cumprod(1 - betas.numpy())  # an independent product in numpy
    continuous = schedules.get_schedule("linear_beta").discrete_alpha_bar(1000)[1:].numpy()
    assert np.max(np.abs(discrete - continuous)) < 1e-3


def test_cosine_matches_nichol_dhariwal_formula():
    s = schedules.get_schedule("cosine")
    t = np.linspace(0, 0.95, 20)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    expected = f(t) / f(0)
    got = s.alpha_bar(torch.tensor(t, dtype=torch.float64)).numpy()
    assert np.allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_vdm_linear_log_snr_endpoints_and_linearity():
    s = schedules.get_schedule("linear_log_snr")
    assert s.log_snr(0.0).item() == pytest.approx(13.3)
    assert s.log_snr(1.0).item() == pytest.approx(-5.0)
    assert s.log_snr(0.5).item() == pytest.approx((13.3 - 5.0) / 2)
    custom = schedules.get_schedule("linear_log_snr", log_snr_min=-6.0, log_snr_max=10.0)
    assert custom.log_snr(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([10.0, -6.0])


def test_alpha_bar_from_betas_is_a_cumulative_product():
    betas = torch.tensor([0.1, 0.2, 0.2, 0.5], dtype=torch.float64)
    expected = [1.0, 0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.8, 0.9 * 0.8 * 0.8 * 0.5]
    assert schedules.alpha_bar_from_betas(betas).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_discrete_betas_reproduce_the_schedule(name):
    s = schedules.get_schedule(name)
    T = 50
    ab = s.discrete_alpha_bar(T)
    betas = s.discrete_betas(T, max_beta=0.999999) if name == "cosine" else s.discrete_betas(T)
    rebuilt = schedules.alpha_bar_from_betas(betas) * ab[0]
    n = T - 1 if name == "cosine" else T  # the cosine's last step is capped on purpose
    assert torch.allclose(rebuilt[: n + 1], ab[: n + 1], rtol=1e-9)


def test_snr_helpers_invert_each_other():
    ab = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(schedules.snr_from_alpha_bar(ab), ab / (1 - ab))
    assert torch.allclose(torch.sigmoid(schedules.log_snr_from_alpha_bar(ab)), ab)


def test_bad_input_is_rejected_with_named_arguments():
    with pytest.raises(ValueError, match=r"unknown schedule name 'quadratic'; choose one of"):
        schedules.get_schedule("quadratic")
    s = schedules.get_schedule("cosine")
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        s.alpha_bar(torch.tensor([-0.1, 0.5]))
    with pytest.raises(ValueError, match=r"betas must lie in the open interval \(0, 1\)"):
        schedules.check_betas(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match=r"betas must lie in the open interval \(0, 1\)"):
        schedules.check_betas(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match=r"betas must have shape \(T,\)"):
        schedules.check_betas(torch.ones(2, 2) * 0.1)
    with pytest.raises(ValueError, match=r"max_beta must lie in \(0, 1\]"):
        s.discrete_betas(10, max_beta=1.5)
    with pytest.raises(ValueError, match=r"max_beta must lie in \(0, 1\]"):
        s.ddpm_alpha_bar(10, max_beta=0.0)
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        s.discrete_alpha_bar(0)


def test_check_betas_requires_only_the_open_unit_interval():
    """Monotone β is conventional, not required: a decreasing schedule passes unchanged."""
    betas = torch.tensor([0.1, 0.2, 0.15], dtype=torch.float64)
    assert schedules.check_betas(betas) is betas
    assert schedules.check_betas(torch.tensor([1, 1]) * 0.5).dtype == torch.float32


def _nichol_dhariwal_alphas_cumprod(T, max_beta=0.999):
    """improved-diffusion's betas_for_alpha_bar for the cosine schedule, written out in math."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return np.cumprod(1 - np.array(betas))


def test_ddpm_grid_of_the_cosine_schedule_is_nichol_dhariwals():
    """ᾱ_1..ᾱ_T with β capped at 0.999 against the published recipe; the cap acts at the last step
    only, where it leaves ᾱ_T = 0.001 ᾱ_{T−1} instead of ᾱ(1) = 0 (3.7e-33 after rounding)."""
    s = schedules.get_schedule("cosine")
    T = 1000
    ab = s.ddpm_alpha_bar(T)
    expected = _nichol_dhariwal_alphas_cumprod(T)
    assert ab.dtype == torch.float64 and ab.shape == (T + 1,) and ab[0].item() == 1.0
    np.testing.assert_allclose(ab[1:].numpy(), expected, rtol=1e-11, atol=0)
    assert ab[T].item() == pytest.approx(0.001 * ab[T - 1].item(), rel=1e-12)
    assert 2e-9 < ab[T].item() < 3e-9, "about 2.4e-9 (Nichol & Dhariwal's T = 1000)"
    uncapped = s.ddpm_alpha_bar(T, max_beta=1.0)
    assert uncapped[T].item() < 1e-30, "without the cap ᾱ_T is only rounding"
    torch.testing.assert_close(uncapped[:T], ab[:T], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["linear_beta", "linear_log_snr"])
def test_ddpm_grid_is_the_schedule_where_no_step_is_capped(name):
    """ᾱ_0 = 1 and ᾱ_i = ᾱ(i/T): the cap changes nothing when every β_i < 0.999."""
    s = schedules.get_schedule(name)
    T = 200
    ab = s.ddpm_alpha_bar(T)
    grid = torch.arange(1, T + 1, dtype=torch.float64) / T
    assert ab[0].item() == 1.0
    torch.testing.assert_close(ab[1:], s.alpha_bar(grid), rtol=1e-12, atol=0)


def test_discrete_betas_are_capped_by_default_so_they_are_valid_betas():
    cos = schedules.get_schedule("cosine")
    betas = cos.discrete_betas(1000)
    assert betas.max().item() == 0.999
    schedules.check_betas(betas)  # every β in (0, 1)
    assert cos.discrete_betas(1000, max_beta=1.0)[-1].item() == 1.0, (
        "uncapped: 1 to double precision"
    )


def test_alpha_bar_grid_starts_at_one_and_follows_the_schedule():
    schedule = schedules.get_schedule("linear_log_snr", log_snr_max=6.0, log_snr_min=-7.0)
    grid = schedule.alpha_bar_grid(10)
    assert grid.shape == (11,) and grid[0].item() == 1.0
    t = torch.arange(1, 11, dtype=torch.float64) / 10
    assert torch.allclose(grid[1:], torch.sigmoid(6.0 - 13.0 * t), rtol=1e-14, atol=0)


def test_from_endpoints_has_the_endpoints_and_the_shape():
    s = schedules.from_endpoints(lambda t: t**2, log_snr_max=10.0, log_snr_min=-4.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(s.log_snr(t), torch.tensor([10.0, 10.0 - 14.0 * 0.25, -4.0]).double())
    with pytest.raises(ValueError, match="shape must map 0 to 0 and 1 to 1"):
        schedules.from_endpoints(lambda t: t + 0.1)
    with pytest.raises(ValueError, match="log_snr_max > log_snr_min"):
        schedules.from_endpoints(lambda t: t, log_snr_max=-5.0, log_snr_min=1.0)


def test_log_snr_derivative_by_autograd_matches_finite_differences():
    """λ′(t) by autograd against central differences of the float64 schedule (and −18.3 for VDM's)."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    lam, dlam = schedules.log_snr_and_derivative(schedules.get_schedule("linear_log_snr"), t)
    assert torch.allclose(dlam, torch.full_like(t, -18.3))
    for name in ("cosine", "linear_beta"):
        s = schedules.get_schedule(name)
        h = 1e-6
        fd = (s.log_snr(t + h) - s.log_snr(t - h)) / (2 * h)
        _, dlam = schedules.log_snr_and_derivative(s, t)
        assert torch.allclose(dlam, fd, rtol=1e-6)
