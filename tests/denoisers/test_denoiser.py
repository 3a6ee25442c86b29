"""The denoiser interface D(x_t, log_snr) → x̂_0: wrappers, readers, and the noise-input maps."""

import math

import pytest
import torch

from diffusion_lessons.denoisers import denoiser as dn
from diffusion_lessons.denoisers.parameterizations import convert
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, betas_linear, get_schedule


def _batch(n=64, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xt = torch.randn(n, d, generator=g, dtype=torch.float64)
    lam = torch.empty(n, dtype=torch.float64).uniform_(-8, 8, generator=g)
    return xt, lam, g


def test_wrappers_agree_with_the_conversions_in_alpha_bar():
    """eq-eps-to-x0 and eq-tweedie: each wrapper's x̂_0 is parameterizations.convert of its output."""
    xt, lam, g = _batch()
    out = torch.randn(xt.shape, generator=g, dtype=torch.float64)
    ab = torch.sigmoid(lam)  # the same noise level written as ᾱ
    net = lambda x, c: out  # noqa: E731 - a fixed "network output"
    for wrapper, source in ((dn.FromEps, "eps"), (dn.FromScore, "score"), (dn.FromX0, "x0")):
        expected = convert(out, source=source, target="x0", xt=xt, alpha_bar=ab)
        torch.testing.assert_close(wrapper(net)(xt, lam), expected, rtol=1e-12, atol=1e-12)


def test_readers_invert_the_wrappers():
    """eps_from(FromEps(net)) is the network's ε̂; score_from(FromScore(net)) its score."""
    xt, lam, g = _batch(seed=1)
    out = torch.randn(xt.shape, generator=g, dtype=torch.float64)
    net = lambda x, c: out  # noqa: E731
    # read through x̂_0 (a plain function, so the readers use their formulas), ...
    as_function = lambda wrapper: lambda x, lam_: wrapper(net)(x, lam_)  # noqa: E731
    torch.testing.assert_close(
        dn.eps_from(as_function(dn.FromEps), xt, lam), out, rtol=1e-9, atol=1e-9
    )
    score = dn.score_from(as_function(dn.FromScore), xt, lam)
    torch.testing.assert_close(score, out, rtol=1e-9, atol=1e-9)
    # ... and directly: a wrapper in its own units gives back the network's output itself
    assert dn.eps_from(dn.FromEps(net), xt, lam) is out
    assert dn.score_from(dn.FromScore(net), xt, lam) is out
    # ε = −σ · score (eq-eps-score), for any denoiser
    d = dn.FromX0(net)
    sigma = torch.sigmoid(-lam).sqrt()[:, None]
    torch.testing.assert_close(
        dn.eps_from(d, xt, lam), -sigma * dn.score_from(d, xt, lam), rtol=1e-9, atol=1e-9
    )


def test_score_of_standard_normal_data_gives_the_optimal_denoiser():
    """Data N(0, I): x_t ~ N(0, I) too, score −x_t, and E[x_0 | x_t] = √ᾱ x_t (exact)."""
    xt, lam, _ = _batch(seed=2)
    d = dn.FromScore(lambda x, c: -x)
    torch.testing.assert_close(d(xt, lam), torch.sigmoid(lam).sqrt()[:, None] * xt)
    # SkipX0 with F = 0 is the same optimal denoiser
    skip = dn.SkipX0(lambda x, c: torch.zeros_like(x))
    torch.testing.assert_close(skip(xt, lam), d(xt, lam))


def test_alpha_sigma_keeps_both_ends_accurate():
    """ᾱ + σ² = 1 and σ² ≈ e^{−λ} at large λ (no cancellation in 1 − ᾱ)."""
    x = torch.zeros(3, 1, dtype=torch.float64)
    lam = torch.tensor([-40.0, 0.0, 40.0], dtype=torch.float64)
    a, s = dn.alpha_sigma(lam, x)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), rtol=1e-15, atol=0)
    assert math.isclose(s[2].item() ** 2, math.exp(-40.0), rel_tol=1e-12)
    assert math.isclose(a[0].item() ** 2, math.exp(-40.0), rel_tol=1e-12)


def test_the_network_sees_cond_of_log_snr_in_the_data_dtype():
    seen = {}

    def net(x, c):
        seen["c"] = c
        return x

    xt = torch.zeros(2, 2)
    dn.FromX0(net, cond=lambda lam: 2 * lam)(xt, torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert seen["c"].dtype == torch.float32
    assert seen["c"].tolist() == [2.0, 6.0]


def test_grid_time_is_exact_on_the_grid_and_linear_in_between():
    ab = alpha_bar_from_betas(betas_linear(50))
    lam = torch.log(ab[1:]) - torch.log1p(-ab[1:])  # λ_1..λ_T
    cond = dn.grid_time(ab)
    steps = torch.arange(1, 51, dtype=torch.float64)
    assert torch.equal(cond(lam), steps / 50)
    mid = (lam[9] + lam[10]) / 2  # halfway between steps 10 and 11
    assert math.isclose(cond(mid[None]).item() * 50, 10.5, rel_tol=1e-12)
    with pytest.raises(ValueError, match="log_snr must lie in"):
        cond(lam[:1] + 1.0)  # less noisy than step 1
    with pytest.raises(ValueError, match="alpha_bar must be a grid"):
        dn.grid_time(ab.flip(0))


@pytest.mark.parametrize("name", ["linear_log_snr", "cosine", "linear_beta"])
def test_schedule_time_inverts_the_schedule(name):
    schedule = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 25, dtype=torch.float64)
    back = dn.schedule_time(schedule)(schedule.log_snr(t))
    torch.testing.assert_close(back, t, rtol=0, atol=1e-12)
    if name == "linear_log_snr":  # the closed form t = (λ_max − λ) / (λ_max − λ_min)
        lam = torch.tensor([0.0], dtype=torch.float64)
        expected = (13.3 - 0.0) / (13.3 + 5.0)
        assert math.isclose(dn.schedule_time(schedule)(lam).item(), expected, rel_tol=1e-12)
    with pytest.raises(ValueError, match="log_snr must lie in"):
        dn.schedule_time(schedule)(schedule.log_snr(torch.tensor([1.0])).double() - 1.0)
