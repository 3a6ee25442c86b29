"""Conversions between x_0, ε and score: round trips and the exact score of a Gaussian."""

import itertools
import math

import pytest
import torch

from diffusion_lessons.denoisers import parameterizations as P


@pytest.mark.parametrize("source,target", list(itertools.permutations(P.PARAMETERIZATIONS, 2)))
def test_round_trips(source, target):
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ab = torch.rand(5, generator=g, dtype=torch.float64) * 0.98 + 0.01
    pred = torch.randn(5, 3, generator=g, dtype=torch.float64)
    there = P.convert(pred, source=source, target=target, xt=xt, alpha_bar=ab)
    back = P.convert(there, source=target, target=source, xt=xt, alpha_bar=ab)
    assert torch.allclose(back, pred, atol=1e-10)


def test_true_noise_gives_true_x0_and_the_gaussian_score():
    """For x_0 ~ δ(x0), q(x_t | x_0) = N(√ᾱ x0, σ²I) has score −(x_t − √ᾱ x0)/σ² = −ε/σ."""
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    eps = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    ab = 0.36
    xt = 0.6 * x0 + 0.8 * eps
    assert torch.allclose(P.eps_to_x0(xt, eps, ab), x0)
    assert torch.allclose(P.x0_to_eps(xt, x0, ab), eps)
    assert torch.allclose(P.eps_to_score(xt, eps, ab), -(xt - 0.6 * x0) / 0.64)


def test_bad_input():
    xt = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"unknown source parameterization 'v'"):
        P.convert(xt, source="v", target="eps", xt=xt, alpha_bar=0.5)
    with pytest.raises(ValueError, match=r"pred has shape \(2, 4\) but xt has shape \(2, 3\)"):
        P.convert(torch.zeros(2, 4), source="x0", target="eps", xt=xt, alpha_bar=0.5)
    with pytest.raises(ValueError, match=r"alpha_bar has shape \(3,\) but xt has shape \(2, 3\)"):
        P.eps_to_x0(xt, xt, torch.full((3,), 0.5))


@pytest.mark.parametrize("param", P.PARAMETERIZATIONS)
def test_implied_weight_rescales_squared_errors(param):
    """eq-implied-weights: ‖pred − target‖² in each parameterization = w(ᾱ) ‖x̂_0 − x_0‖², via convert."""
    g = torch.Generator().manual_seed(1)
    x0, x0_hat, eps = (torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(3))
    ab = torch.rand(8, generator=g, dtype=torch.float64) * 0.98 + 0.01
    xt = ab.sqrt()[:, None] * x0 + (1 - ab).sqrt()[:, None] * eps
    pred = P.convert(x0_hat, source="x0", target=param, xt=xt, alpha_bar=ab)
    target = P.convert(x0, source="x0", target=param, xt=xt, alpha_bar=ab)
    ratio = ((pred - target) ** 2).sum(1) / ((x0_hat - x0) ** 2).sum(1)
    assert torch.allclose(ratio, P.implied_x0_weight(param, ab), rtol=1e-9)


def test_implied_weight_bad_input():
    with pytest.raises(ValueError, match="unknown parameterization 'v'"):
        P.implied_x0_weight("v", 0.5)
    with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\)"):
        P.implied_x0_weight("eps", 1.0)


@pytest.mark.parametrize("T,lmax,lmin", [(100, 6.0, -7.0), (37, 13.3, -5.0)])
def test_l_simple_is_exactly_proportional_to_the_elbo_on_a_linear_log_snr_grid(T, lmax, lmin):
    """On a linear log-SNR grid, ½(SNR(t−1) − SNR(t)) = ½(e^{(λ_max−λ_min)/T} − 1) SNR(t) for t ≥ 2.

    So the ELBO term (nelbo.denoising_kl) of an ε-prediction is that constant times L_simple's
    ‖ε̂ − ε‖² (the ε weight of implied_x0_weight is SNR). Tolerance: 1 − ᾱ_t near ᾱ_t = 1 keeps
    about 11 digits for λ up to 13.3, so rtol 1e-8 is rounding, not a different formula (13/(2T) is
    off by 7 % for T = 100).
    """
    from diffusion_lessons.noise import schedules
    from diffusion_lessons.objectives import nelbo

    sched = schedules.get_schedule("linear_log_snr", log_snr_max=lmax, log_snr_min=lmin)
    ab = sched.discrete_alpha_bar(T)
    ab_t, ab_prev = ab[2:], ab[1:-1]
    constant = 0.5 * math.expm1((lmax - lmin) / T)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(T - 1, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(T - 1, 2, generator=g, dtype=torch.float64)
    eps_hat = eps + 0.1 * torch.randn(T - 1, 2, generator=g, dtype=torch.float64)
    xt = ab_t.sqrt()[:, None] * x0 + (1 - ab_t).sqrt()[:, None] * eps
    x0_hat = P.convert(eps_hat, source="eps", target="x0", xt=xt, alpha_bar=ab_t)
    elbo = nelbo.denoising_kl(
        x0,
        x0_hat,
        schedules.log_snr_from_alpha_bar(ab_prev),
        schedules.log_snr_from_alpha_bar(ab_t),
    )
    simple = ((eps_hat - eps) ** 2).sum(1)
    expected = torch.full_like(simple, constant)
    torch.testing.assert_close(elbo / simple, expected, rtol=1e-8, atol=0)
    # the same through the weights: ELBO weight / ε weight (= SNR(t)) is the constant
    weight = 0.5 * (ab_prev / (1 - ab_prev) - ab_t / (1 - ab_t))
    torch.testing.assert_close(
        weight / P.implied_x0_weight("eps", ab_t), expected, rtol=1e-8, atol=0
    )
    assert abs(constant - (lmax - lmin) / (2 * T)) > 1e-3 * constant  # first order is not exact


def test_float64_data_gets_float64_coefficients():
    """Issue 9: float64 data must not see ᾱ rounded through float32 (reference: math, 1e-15)."""
    import math

    from diffusion_lessons.denoisers.parameterizations import eps_to_x0

    xt = torch.tensor([[0.7, -1.3]], dtype=torch.float64)
    eps = torch.tensor([[0.2, 0.5]], dtype=torch.float64)
    ab = 0.3
    ref = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    torch.testing.assert_close(eps_to_x0(xt, eps, ab), ref, rtol=1e-15, atol=0)
