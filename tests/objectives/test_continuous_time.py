"""The diffusion loss in SNR form against closed forms, quadrature and Monte Carlo.

Labels: eq-vlb-kl-snr, eq-vlb-discrete, eq-vlb-continuous, eq-vlb-invariance, eq-vlb-total.
The exactly computable case throughout: data x ∼ N(0, v I_D) with its exact denoiser
E[x | z_t] = √ᾱ v z / (ᾱ v + σ²), written here independently of the library, whose error at SNR u
is D v / (1 + v u).
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from diffusion_lessons.data import oracles
from diffusion_lessons.noise import schedules, time_sampling
from diffusion_lessons.objectives import continuous_time, nelbo
from diffusion_lessons.symbolic import snr_bound

V, D = 0.5, 3
LMAX, LMIN = 6.0, -4.0


def exact_denoiser(z, lam):
    ab = torch.sigmoid(lam)[:, None]
    return ab.sqrt() * V * z / (ab * V + 1 - ab)


def mmse(snr):
    return D * V / (1 + V * snr)


def closed_form_continuous(lmax=LMAX, lmin=LMIN):
    """½ ∫_{SNR_min}^{SNR_max} D v/(1 + v u) du, in closed form."""
    return 0.5 * D * (math.log(1 + V * math.exp(lmax)) - math.log(1 + V * math.exp(lmin)))


# schedules with equal endpoints λ(0) = LMAX, λ(1) = LMIN, as numpy functions for quadrature
SHAPES = {
    "linear": lambda t: t,
    "square": lambda t: t**2,
    "ease_out": lambda t: 1 - (1 - t) ** 2,
    "smoothstep": lambda t: 3 * t**2 - 2 * t**3,
}


def make_schedule(shape, lmax=LMAX, lmin=LMIN):
    g = SHAPES[shape]
    return schedules.Schedule(shape, lambda t: lmax + (lmin - lmax) * g(t))


def gaussian_data(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return math.sqrt(V) * torch.randn(n, D, generator=gen, dtype=torch.float64), gen


def within(estimates, expected, z=4.5):
    se = estimates.std().item() / math.sqrt(estimates.numel())
    return abs(estimates.mean().item() - expected) < z * se, estimates.mean().item(), se


def test_snr_derivative_matches_finite_differences():
    """SNR′(t) = SNR(t) λ′(t) against central differences of the float64 schedule."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    for name in ("cosine", "linear_beta"):
        s = schedules.get_schedule(name)
        snr_prime = continuous_time.snr_derivative(s, t)
        assert torch.allclose(snr_prime, (s.snr(t + h) - s.snr(t - h)) / (2 * h), rtol=1e-5)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_quadrature_of_t_integral_depends_only_on_endpoints(shape):
    """eq-vlb-invariance: −½ ∫_0^1 SNR′(t) mmse(SNR(t)) dt (scipy quad, in t) = closed form in SNR."""
    g = SHAPES[shape]

    def snr(t):
        return math.exp(LMAX + (LMIN - LMAX) * g(t))

    def integrand(t, h=1e-7):
        lo, hi = max(t - h, 0.0), min(t + h, 1.0)
        return -0.5 * (snr(hi) - snr(lo)) / (hi - lo) * mmse(snr(t))

    value, _ = integrate.quad(integrand, 0, 1, limit=200, points=[0.01, 0.1, 0.5])
    assert value == pytest.approx(closed_form_continuous(), rel=1e-4)
    assert oracles.gaussian_continuous_loss_exact(V, D, LMAX, LMIN) == pytest.approx(
        closed_form_continuous(), rel=1e-12
    )


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("sampler", time_sampling.SAMPLERS)
def test_continuous_loss_monte_carlo_matches_closed_form(shape, sampler):
    """eq-vlb-continuous and eq-vlb-invariance: every schedule with equal endpoints, same L_∞."""
    x, gen = gaussian_data(200_000, seed=1)
    est = continuous_time.continuous_loss_estimate(
        x, exact_denoiser, make_schedule(shape), sampler=sampler, generator=gen
    )
    ok, mean, se = within(est, closed_form_continuous())
    assert ok, f"{shape}/{sampler}: {mean} ± {se} vs {closed_form_continuous()}"


def test_changing_an_endpoint_changes_the_loss():
    """The same denoiser under λ_min = 0 instead of −4: a different L_∞, as the closed form says."""
    x, gen = gaussian_data(200_000, seed=2)
    est = continuous_time.continuous_loss_estimate(
        x, exact_denoiser, make_schedule("linear", lmin=0.0), generator=gen
    )
    other = closed_form_continuous(lmin=0.0)
    ok, mean, se = within(est, other)
    assert ok, (mean, se, other)
    assert abs(mean - closed_form_continuous()) > 10 * se


def riemann(T, shape="linear"):
    g = SHAPES[shape]
    grid = np.arange(T + 1) / T
    snr = np.exp(LMAX + (LMIN - LMAX) * g(grid))
    return 0.5 * np.sum((snr[:-1] - snr[1:]) * D * V / (1 + V * snr[1:]))


@pytest.mark.parametrize("T", [1, 2, 10, 1000])
def test_discrete_loss_monte_carlo_matches_riemann_sum(T):
    """eq-vlb-discrete: MC of L_T with the exact denoiser = ½ Σ (SNR_{i−1} − SNR_i) mmse(SNR_i)."""
    x, gen = gaussian_data(200_000, seed=3 + T)
    sched = make_schedule("linear")
    est = continuous_time.discrete_loss_estimate(x, exact_denoiser, sched, T, generator=gen)
    ok, mean, se = within(est, riemann(T))
    assert ok, (T, mean, se, riemann(T))
    grid = torch.arange(T + 1, dtype=torch.float64) / T
    assert oracles.gaussian_discrete_loss_exact(V, D, sched.log_snr(grid)) == pytest.approx(
        riemann(T)
    )


def test_discrete_bound_decreases_to_continuous_from_above():
    """L_T ≥ L_{2T} ≥ … ≥ L_∞ (an upper Riemann sum of a decreasing error), and L_T → L_∞."""
    values = [riemann(T) for T in (1, 2, 4, 8, 100, 1000, 100_000)]
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))
    assert values[-1] >= closed_form_continuous()
    assert values[-1] - closed_form_continuous() < 1e-3
    assert values[0] - closed_form_continuous() > 1.0


def test_minibatch_means_are_unbiased_for_both_samplers():
    """Chapter 6's experiment through the pieces: 1000 minibatches of 128, each with its own times
    (sample_times: one u per minibatch for low discrepancy) and noise, each minibatch's mean of
    continuous_diffusion_loss; on the Gaussian case the mean of the minibatch means is L_∞."""
    x, gen = gaussian_data(128 * 1000, seed=6)
    sched = make_schedule("square")
    for sampler in time_sampling.SAMPLERS:
        t = torch.cat(
            [time_sampling.sample_times(128, sampler=sampler, generator=gen) for _ in range(1000)]
        )
        eps = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        per_example = continuous_time.continuous_diffusion_loss(x, exact_denoiser, sched, t, eps)
        est = per_example.reshape(1000, 128).mean(1)
        ok, mean, se = within(est, closed_form_continuous())
        assert ok, (sampler, mean, se)


def test_prior_and_reconstruction_terms():
    """The two endpoint terms of eq-vlb-total: prior KL against torch.distributions, reconstruction
    against Monte Carlo."""
    x, gen = gaussian_data(8, seed=8)
    lam1 = torch.tensor(-3.0, dtype=torch.float64)
    ab = torch.sigmoid(lam1)
    q = torch.distributions.Normal(ab.sqrt() * x, (1 - ab).sqrt())
    p = torch.distributions.Normal(torch.zeros_like(x), torch.ones_like(x))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(nelbo.prior_kl(x, lam1), expected)
    lam0 = torch.tensor(5.0, dtype=torch.float64)
    ab0 = torch.sigmoid(lam0)
    x1 = x[:1].expand(100_000, D)
    z0 = ab0.sqrt() * x1 + (1 - ab0).sqrt() * torch.randn(
        x1.shape, generator=gen, dtype=torch.float64
    )
    nll = (
        -torch.distributions.Normal(z0 / ab0.sqrt(), math.exp(-lam0.item() / 2)).log_prob(x1).sum(1)
    )
    ok, mean, se = within(nll, continuous_time.gaussian_reconstruction_loss(x[:1], lam0).item())
    assert ok, (mean, se)
    # the same draws through the library's decoder term
    by_term = nelbo.gaussian_reconstruction_nll(x1, z0 / ab0.sqrt(), -lam0.item() / 2)
    torch.testing.assert_close(by_term, nll, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lam1", [-3.3, torch.tensor(-3.3, dtype=torch.float64)])
def test_prior_kl_of_float64_data_is_exact_for_a_python_float(lam1):
    """prior_kl against ½ Σ (ᾱ x² + σ² − 1 − log σ²) in math, to 1e-14 (a few float64 roundings
    of a term near 0.1). The old code rounded λ = −3.3 to float32 first: off by 5e-9."""
    x, _ = gaussian_data(5, seed=3)
    ab = 1 / (1 + math.exp(3.3))
    expected = [
        0.5 * sum(ab * v * v + (1 - ab) - 1 - math.log1p(-ab) for v in row) for row in x.tolist()
    ]
    got = nelbo.prior_kl(x, lam1)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-14)


def test_reconstruction_loss_of_float64_data_is_exact_for_a_python_float():
    """(D/2)(log 2π − λ_0 + 1) with λ_0 = 13.3 in math; the old code was off by 3.8e-7 for D = 4
    (13.3 rounded to float32 is 13.300000190734863)."""
    x = torch.zeros(2, 4, dtype=torch.float64)
    expected = 0.5 * 4 * (math.log(2 * math.pi) - 13.3 + 1.0)
    got = continuous_time.gaussian_reconstruction_loss(x, 13.3)
    assert got.dtype == torch.float64 and got.shape == (2,)
    assert (got - expected).abs().max().item() < 1e-14


def test_endpoint_terms_of_float32_data_follow_the_float64_ones():
    """Float32 data: float32 results within float32 rounding of the float64 computation (the
    per-dimension constant σ² − 1 − log σ² is formed in float64 and no longer cancels)."""
    x, _ = gaussian_data(6, seed=4)
    for lam1 in (-3.3, -5.0, torch.tensor([-3.3] * 6, dtype=torch.float64)):
        got = nelbo.prior_kl(x.float(), lam1)
        ref = nelbo.prior_kl(x.float().double(), lam1)
        assert got.dtype == torch.float32
        # D = 3 squares, their sum, two products, the constant, the final sum: all terms are
        # positive, so at most 8 float32 roundings of 2^-24 each, relative
        torch.testing.assert_close(got.double(), ref, rtol=8 * 2**-24, atol=0)
    # a float32 λ with float32 data stays in float32 (no float64 on the GPU), where the constant
    # −log σ² − ᾱ ≈ 0.0363 − 0.0356 loses 2 digits: a relative error of ~1e-5 of the term
    lam32 = torch.tensor([-3.3] * 6)
    torch.testing.assert_close(
        nelbo.prior_kl(x.float(), lam32).double(),
        nelbo.prior_kl(x, lam32),
        rtol=1e-5,
        atol=0,
    )
    got = continuous_time.gaussian_reconstruction_loss(x.float(), 13.3)
    torch.testing.assert_close(
        got.double(), continuous_time.gaussian_reconstruction_loss(x, 13.3), rtol=2**-24, atol=0
    )


def test_optimal_denoiser_takes_a_float32_log_snr_exactly_for_float64_data():
    """sigmoid(λ) of a float32 λ is formed in float64 when z is float64 (it was formed in float32)."""
    z, _ = gaussian_data(3, seed=5)
    lam = torch.tensor([0.3, -1.7, 2.9], dtype=torch.float32)
    got = oracles.gaussian_optimal_x0(V)(z, lam)
    torch.testing.assert_close(got, exact_denoiser(z, lam.double()), rtol=1e-14, atol=0)


def test_bad_input_raises():
    x, gen = gaussian_data(4)
    s = make_schedule("linear")
    with pytest.raises(ValueError, match="sampler"):
        continuous_time.continuous_loss_estimate(x, exact_denoiser, s, sampler="sobol")
    with pytest.raises(ValueError, match="T must"):
        continuous_time.discrete_loss_estimate(x, exact_denoiser, s, 0)
    with pytest.raises(ValueError, match="i must lie in 1..5"):
        continuous_time.discrete_diffusion_loss(
            x, exact_denoiser, s, 5, torch.tensor([0, 1, 2, 3]), torch.zeros_like(x)
        )
    with pytest.raises(ValueError, match="eps has shape"):
        continuous_time.continuous_diffusion_loss(
            x, exact_denoiser, s, torch.rand(4, dtype=torch.float64), torch.zeros(4, 2)
        )
    with pytest.raises(ValueError, match="λ\\(0\\) = inf"):
        continuous_time.negative_elbo(
            x, exact_denoiser, schedules.get_schedule("linear_beta"), torch.rand(4), x
        )


def test_eps_form_of_the_continuous_loss_is_the_same_number():
    """Chapter 6's identity (ex-ls-eps-form): for x̂ = FromEps(ε̂), −½ λ′ e^λ ‖x − x̂‖² equals
    −½ λ′ ‖ε − ε̂‖², written here by hand in the ε-form (float64, so rounding only)."""
    from diffusion_lessons.denoisers.denoiser import FromEps

    class EpsNet(torch.nn.Module):  # any ε-network: a fixed nonlinear map of (z, λ)
        def forward(self, z, lam):
            return torch.tanh(z + 0.1 * lam[:, None])

    x, gen = gaussian_data(64, seed=9)
    t = torch.rand(64, generator=gen, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    sched = make_schedule("smoothstep")
    got = continuous_time.continuous_diffusion_loss(x, FromEps(EpsNet()), sched, t, eps)
    lam, dlam = schedules.log_snr_and_derivative(sched, t)
    ab = torch.sigmoid(lam)[:, None]
    z = ab.sqrt() * x + (1 - ab).sqrt() * eps
    eps_form = -0.5 * dlam * ((eps - EpsNet()(z, lam)) ** 2).sum(1)
    torch.testing.assert_close(got, eps_form, rtol=1e-9, atol=1e-12)


def test_discrete_step_term_is_T_times_the_denoising_kl():
    """eq-vlb-discrete: each draw of L_T is T · ½ (SNR(s) − SNR(t)) ‖x − x̂‖², written out in SNRs."""
    x, gen = gaussian_data(16, seed=10)
    sched, T = make_schedule("ease_out"), 7
    i = torch.randint(1, T + 1, (16,), generator=gen)
    eps = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    got = continuous_time.discrete_diffusion_loss(x, exact_denoiser, sched, T, i, eps)
    lam_s, lam_t = sched.log_snr((i - 1).double() / T), sched.log_snr(i.double() / T)
    ab = torch.sigmoid(lam_t)[:, None]
    x0_hat = exact_denoiser(ab.sqrt() * x + (1 - ab).sqrt() * eps, lam_t)
    by_hand = T * 0.5 * (lam_s.exp() - lam_t.exp()) * ((x - x0_hat) ** 2).sum(1)
    torch.testing.assert_close(got, by_hand, rtol=1e-10, atol=0)


def test_symbolic_derivations():
    """eq-vlb-kl-snr: KL weight = SNR(s) − SNR(t); eq-vlb-invariance: the integrand is dF(λ(t))/dt;
    eq-vlb-continuous: T (SNR(s) − SNR(t)) → −SNR′(t)."""
    import sympy as sp

    kl = snr_bound.kl_term_snr_derivation()
    assert sp.simplify(kl["weight"] - kl["snr_gap"]) == 0
    # numerically too, at a point, as a guard against a vacuous simplification
    point = {kl["alpha_bar_s"]: 0.9, kl["alpha_bar_t"]: 0.6}
    assert float(kl["weight"].subs(point)) == pytest.approx(0.9 / 0.1 - 0.6 / 0.4)
    inv = snr_bound.invariance_derivation()
    assert sp.simplify(sp.diff(inv["antiderivative"], inv["t"]) - inv["integrand"]) == 0
    lim = snr_bound.continuous_limit_derivation()
    assert sp.simplify(lim["limit"] - lim["minus_snr_prime"]) == 0
