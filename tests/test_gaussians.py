"""Gaussian densities and KLs against torch.distributions, Monte Carlo and direct sums."""

import functools
import math

import pytest
import torch
from torch.distributions import Normal

from diffusion_lessons import gaussians as dist


def test_gaussian_log_prob_matches_torch_distributions():
    x, m, lv = torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    expected = Normal(m, (0.5 * lv).exp()).log_prob(x).sum((1, 2))
    assert torch.allclose(dist.gaussian_log_prob(x, m, lv), expected, atol=1e-5)


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mq, lvq, mp, lvp = (torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.5 for _ in range(4))
    n = 400_000
    z = mq + (0.5 * lvq).exp() * torch.randn(n, 2, 3, generator=g, dtype=torch.float64)
    log_ratio = Normal(mq, (0.5 * lvq).exp()).log_prob(z) - Normal(mp, (0.5 * lvp).exp()).log_prob(
        z
    )
    mc = log_ratio.sum(-1)  # (n, 2)
    exact = dist.kl_diag_gaussians(mq, lvq, mp, lvp)
    se = mc.std(0) / math.sqrt(n)
    assert (torch.abs(mc.mean(0) - exact) < 5 * se).all()


def test_kl_standard_normal_is_the_special_case():
    m, lv = torch.randn(4, 6), torch.randn(4, 6)
    assert torch.allclose(
        dist.kl_standard_normal(m, lv),
        dist.kl_diag_gaussians(m, lv, torch.zeros(()), torch.zeros(())),
        atol=1e-5,
    )
    assert torch.allclose(
        dist.kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2)
    )


def test_discretized_gaussian_sums_to_one_over_all_pixel_values():
    values = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1  # every 8-bit value in [−1, 1]
    for mean, log_scale in [(0.0, math.log(0.1)), (0.9, math.log(0.02)), (-1.2, math.log(0.5))]:
        lp = dist.discretized_gaussian_log_prob(
            values[:, None],
            torch.full((256, 1), mean, dtype=torch.float64),
            torch.full((256, 1), log_scale, dtype=torch.float64),
        )
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_gaussian_matches_cdf_differences():
    """An interior bin's probability is Φ((x + h − μ)/σ) − Φ((x − h − μ)/σ), computed with scipy."""
    from scipy.stats import norm

    x = torch.tensor([[10 * 2 / 255 - 1]], dtype=torch.float64)
    mean, sigma = -0.9, 0.05
    h = 1 / 255
    expected = math.log(
        norm.cdf((x.item() + h - mean) / sigma) - norm.cdf((x.item() - h - mean) / sigma)
    )
    got = dist.discretized_gaussian_log_prob(
        x, torch.full_like(x, mean), torch.full_like(x, math.log(sigma))
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)


# Pixel values (both edge bins, their neighbours, the middle), decoder scales from far narrower
# than a bin (1e-4 and 1e-3 against a half-width of 1/255 = 3.9e-3) to far wider, and means from
# deep in the lower tail to deep in the upper tail, including the bin edges themselves.
TAIL_X = [-1.0, -1 + 2 / 255, -0.2 + 1 / 255, 1 / 255, 1 - 2 / 255, 1.0]
TAIL_SIGMA = [1e-4, 1e-3, 0.02, 0.3, 5.0]
TAIL_OFFSET = [-1.7, -0.3, -0.011, -1 / 255, -0.001, 0.0, 0.002, 1 / 255, 0.011, 0.3, 1.7]


@functools.cache
def _tail_cases():
    """x, mean, σ: (N,) float64 for every combination; ref: (N, 3) mpmath's log P, d/dμ, d/dlog σ."""
    rows = [(x, x + off, sig) for x in TAIL_X for sig in TAIL_SIGMA for off in TAIL_OFFSET]
    ref = torch.tensor([_mp_log_prob_and_grads(*row) for row in rows], dtype=torch.float64)
    x, mean, sigma = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows, strict=True))
    return x, mean, sigma, ref


def _mp_log_prob_and_grads(x, mean, sigma, bins=256):
    """log P and its derivatives in μ and log σ with mpmath at 50 digits (an independent reference).

    P = Φ(b) − Φ(a) with a = (x − h − μ)/σ, b = (x + h − μ)/σ, a = −∞ / b = +∞ in the edge bins;
    upper-tail bins use Φ(b) − Φ(a) = Φ(−a) − Φ(−b) so that nothing cancels even at 50 digits.
    dP/dμ = (φ(a) − φ(b))/σ and dP/dlog σ = a φ(a) − b φ(b)."""
    import mpmath

    with mpmath.workdps(50):
        h = mpmath.mpf(1) / (bins - 1)
        x, mean, sigma = mpmath.mpf(x), mpmath.mpf(mean), mpmath.mpf(sigma)
        a = -mpmath.inf if x < -1 + h else (x - h - mean) / sigma
        b = mpmath.inf if x > 1 - h else (x + h - mean) / sigma
        if a > 0:
            prob = mpmath.ncdf(-a) - mpmath.ncdf(-b)
        else:
            prob = mpmath.ncdf(b) - mpmath.ncdf(a)
        pdf = lambda u: mpmath.npdf(u) if mpmath.isfinite(u) else mpmath.mpf(0)
        u_pdf = lambda u: u * mpmath.npdf(u) if mpmath.isfinite(u) else mpmath.mpf(0)
        d_mean = (pdf(a) - pdf(b)) / sigma / prob
        d_log_scale = (u_pdf(a) - u_pdf(b)) / prob
        return float(mpmath.log(prob)), float(d_mean), float(d_log_scale)


def test_discretized_gaussian_is_exact_deep_in_both_tails_and_for_narrow_decoders():
    """Every (x, μ, σ) of the grid against mpmath, to 1e-12 relative (old code: the density ×
    width fallback below P = 1e-12 was off by up to 1e5 nats here, Φ = ½(1 + erf) by 1e-4 above)."""
    x, mean, sigma, ref = _tail_cases()
    got = dist.discretized_gaussian_log_prob(x[:, None], mean[:, None], sigma.log()[:, None])
    ref = ref[:, 0]
    assert ref.min() < -1e7 and ref.max() > -1e-12, "the grid reaches both extremes"
    err = (got - ref).abs() / ref.abs().clamp_min(1.0)
    assert err.max() < 1e-12, (err.max().item(), int(err.argmax()))


def test_discretized_gaussian_gradients_are_finite_and_exact():
    """d log P / dμ and d log P / d log σ by autograd against mpmath, over the same grid."""
    x, mean, sigma, ref = _tail_cases()
    mean = mean.clone().requires_grad_(True)
    log_scale = sigma.log().requires_grad_(True)
    lp = dist.discretized_gaussian_log_prob(x[:, None], mean[:, None], log_scale[:, None])
    g_mean, g_scale = torch.autograd.grad(lp.sum(), (mean, log_scale))
    assert torch.isfinite(g_mean).all() and torch.isfinite(g_scale).all()
    # deep in a tail torch's d log Φ(u)/du = exp(−u²/2 − log Φ(u))/√(2π) takes a difference of two
    # numbers near u²/2 = 1.4e8 (u = 1.7e4 here), whose float64 ulp is 3e-8: so rtol 1e-7
    torch.testing.assert_close(g_mean, ref[:, 1], rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(g_scale, ref[:, 2], rtol=1e-7, atol=1e-10)


def test_discretized_gaussian_in_float32_follows_float64():
    """Float32 inputs give the float64 answer up to float32 rounding of a = (x − h − μ)/σ:
    |Δ log P| ≲ a² · 2^-23 + a few float32 ulps of log Φ, so 1e-4 + 1e-5 |log P| suffices
    (the old fallback was off by 10% of log P in float32)."""
    x, mean, sigma, _ = _tail_cases()
    args = (x[:, None].float(), mean[:, None].float(), sigma.log()[:, None].float())
    got = dist.discretized_gaussian_log_prob(*args)
    ref = dist.discretized_gaussian_log_prob(*(a.double() for a in args))
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)


def test_discretized_gaussian_matches_scipy_logs_of_the_edge_bins():
    """The edge bins are log Φ(b) and log(1 − Φ(a)) = log Φ(−a), here from scipy.stats.norm."""
    from scipy.stats import norm

    h = 1 / 255
    x = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    for mean, sigma in [(0.0, 0.1), (-1.0, 1e-3), (0.9, 0.01)]:
        got = dist.discretized_gaussian_log_prob(
            x[:, :1],
            torch.full((1, 1), mean, dtype=torch.float64),
            torch.full((1, 1), math.log(sigma), dtype=torch.float64),
        )
        assert got.item() == pytest.approx(norm.logcdf((-1 + h - mean) / sigma), rel=1e-12)
        got = dist.discretized_gaussian_log_prob(
            x[:, 1:],
            torch.full((1, 1), mean, dtype=torch.float64),
            torch.full((1, 1), math.log(sigma), dtype=torch.float64),
        )
        assert got.item() == pytest.approx(norm.logsf((1 - h - mean) / sigma), rel=1e-12)


def test_bits_per_dim():
    assert dist.bits_per_dim(784 * math.log(2), 784).item() == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(ValueError, match=r"x has shape \(2, 3\) but mean has shape \(2, 4\)"):
        dist.gaussian_log_prob(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x must be scaled to \[-1, 1\]"):
        dist.discretized_gaussian_log_prob(
            torch.full((1, 2), 3.0), torch.zeros(1, 2), torch.zeros(1, 2)
        )


def _spd(k, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, k, k, generator=g, dtype=torch.float64)
    return a @ a.transpose(1, 2) + 0.5 * torch.eye(k, dtype=torch.float64)


def test_full_covariance_log_prob_and_kl_match_torch_distributions():
    """eq-kl-gaussians, and the full-covariance density, against torch.distributions."""
    from torch.distributions import MultivariateNormal, kl_divergence

    g = torch.Generator().manual_seed(0)
    mq, mp, x = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    cq, cp = _spd(3, 1), _spd(3, 2)
    expected = kl_divergence(MultivariateNormal(mq, cq), MultivariateNormal(mp, cp))
    assert torch.allclose(dist.kl_gaussians_full(mq, cq, mp, cp), expected, atol=1e-10)
    assert torch.allclose(
        dist.mvn_log_prob(x, mq, cq), MultivariateNormal(mq, cq).log_prob(x), atol=1e-10
    )
