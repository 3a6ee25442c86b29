"""Bits/dim of images: the loop of likelihood.py, and each term of the two image bounds
(discrete_time.ddpm_terms, continuous_time.vdm_terms) against an independent calculation."""

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from diffusion_lessons import likelihood
from diffusion_lessons.denoisers.denoiser import FromEps
from diffusion_lessons.noise import schedules
from diffusion_lessons.objectives import continuous_time, discrete_time

MU, S = 0.1, 0.15  # Gaussian "images": every pixel ~ N(MU, S²), independent
SHAPE = (1, 4, 4)
D = 16


pytestmark = pytest.mark.usefixtures("one_thread")


class OptimalEps(nn.Module):
    """E[ε | x_t] for x_0 ~ N(MU, S² I): σ (x_t − √ᾱ MU) / (ᾱ S² + σ²) (Gaussian conditioning),
    an ε-network conditioned on λ (wrapped as FromEps(OptimalEps()))."""

    def forward(self, xt, lam):
        lam = lam.double()[:, None, None, None]
        ab, s2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        return (s2.sqrt() * (xt.double() - ab.sqrt() * MU) / (ab * S**2 + s2)).to(xt.dtype)


def OptimalDenoiser(schedule=None):  # noqa: N802 (reads as the class it wraps)
    """The exact E[x_0 | x_t] as a denoiser D(x_t, λ); the schedule is not needed (λ is given)."""
    return FromEps(OptimalEps())


def _gaussian_images(n, seed=0):
    x = MU + S * torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed))
    assert x.abs().max() < 1, "no clipping needed (6 standard deviations)"
    return x


def test_continuous_diffusion_term_matches_the_closed_form_for_gaussian_data():
    """With the optimal denoiser, E‖ε − ε̂‖² = D ᾱS²/(ᾱS² + σ²), so L_∞ = −½∫λ' D S²e^λ/(1 + S²e^λ)
    dt = (D/2) log((1 + S² e^{λ(0)}) / (1 + S² e^{λ(1)})): Monte Carlo vs closed form."""
    sched = schedules.get_schedule("linear_log_snr")
    n = 20_000
    x0 = _gaussian_images(n)
    g = torch.Generator().manual_seed(1)
    t, eps = torch.rand(n, generator=g), torch.randn(x0.shape, generator=g)
    x0, eps = x0.double(), eps.double()
    est = continuous_time.continuous_diffusion_loss(x0, OptimalDenoiser(sched), sched, t, eps)
    lam0, lam1 = 13.3, -5.0
    exact = D / 2 * math.log((1 + S**2 * math.exp(lam0)) / (1 + S**2 * math.exp(lam1)))
    tol = 4 * est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - exact) < tol, (est.mean().item(), exact, tol)


def test_vdm_reconstruction_is_the_discretized_gaussian_of_scipy():
    """−log p(x|z_0), z_0 = α_0 x + σ_0 ε, decoder N(z_0/α_0, σ_0²/α_0²) cut into 256 bins."""
    sched = schedules.get_schedule("linear_log_snr", log_snr_max=8.0)  # σ_0/α_0 = e^{-4}
    k = torch.randint(0, 256, (3, *SHAPE), generator=torch.Generator().manual_seed(0))
    x0 = (2 * k / 255 - 1).float()
    terms = continuous_time.vdm_terms(
        OptimalDenoiser(sched), x0.double(), sched, generator=torch.Generator().manual_seed(5)
    )
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a0, s0 = math.sqrt(1 / (1 + math.exp(-8))), math.sqrt(1 / (1 + math.exp(8)))
    mean = (a0 * x0.double() + s0 * noise) / a0
    scale, half = s0 / a0, 1 / 255
    hi = norm.cdf(((x0.double() + half - mean) / scale).numpy())
    lo = norm.cdf(((x0.double() - half - mean) / scale).numpy())
    hi[(k == 255).numpy()], lo[(k == 0).numpy()] = 1.0, 0.0
    expected = -torch.log(torch.from_numpy(hi - lo)).flatten(1).sum(1)
    assert torch.allclose(terms["reconstruction"], expected, rtol=1e-6)
    total = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
    assert torch.allclose(terms["total"], total)


def test_bits_per_dim_of_a_uniform_decoder_is_eight():
    """A discretized Gaussian so wide that all 256 levels are equally likely: log2(256) = 8 bits."""
    terms = {"reconstruction": torch.full((4,), D * math.log(256.0))}
    assert likelihood.to_bits_per_dim(terms, D)["reconstruction"] == pytest.approx(8.0)


def _discrete_closed_form(sched, T):
    """Σ_{i=2}^T E KL_i for the optimal denoiser: c_i² E‖x_0 − x̂_0‖² / (2 β̃_i) with
    c_i = √ᾱ_{i−1} β_i / (1 − ᾱ_i) and E‖x_0 − x̂_0‖² = D S² σ_i² / (ᾱ_i S² + σ_i²)."""
    ab = [1.0] + [
        torch.sigmoid(sched.log_snr(torch.tensor(i / T, dtype=torch.float64))).item()
        for i in range(1, T + 1)
    ]
    total = 0.0
    for i in range(2, T + 1):
        beta = 1 - ab[i] / ab[i - 1]
        beta_tilde = (1 - ab[i - 1]) / (1 - ab[i]) * beta
        c = math.sqrt(ab[i - 1]) * beta / (1 - ab[i])
        post_var = S**2 * (1 - ab[i]) / (ab[i] * S**2 + 1 - ab[i])
        total += c**2 * D * post_var / (2 * beta_tilde)
    return total


def test_ddpm_diffusion_terms_match_the_closed_form_exactly_summed_and_sampled():
    sched = schedules.get_schedule("linear_log_snr")
    T, n = 10, 2000
    x0 = _gaussian_images(n)
    model = OptimalDenoiser(sched)
    exact = _discrete_closed_form(sched, T)
    lam = discrete_time.log_snr_grid(sched.ddpm_alpha_bar(T))
    summed = discrete_time.nelbo_terms_exact_sum(
        model, x0.double(), lam, generator=torch.Generator().manual_seed(2)
    )["diffusion"]
    assert abs(summed.mean().item() - exact) < 4 * summed.std().item() / math.sqrt(n)
    sampled = discrete_time.ddpm_terms(
        model, x0.double(), sched.ddpm_alpha_bar(T), generator=torch.Generator().manual_seed(3)
    )["diffusion"]
    assert abs(sampled.mean().item() - exact) < 4 * sampled.std().item() / math.sqrt(n)
    assert sampled.std() > summed.std(), "one sampled step is noisier than the exact sum"


def test_ddpm_prior_and_reconstruction_terms():
    sched = schedules.get_schedule("linear_log_snr")
    T = 10
    k = torch.randint(0, 256, (6, *SHAPE), generator=torch.Generator().manual_seed(0))
    x0 = (2 * k / 255 - 1).double()
    terms = discrete_time.ddpm_terms(OptimalDenoiser(sched), x0, sched.ddpm_alpha_bar(T))
    ab_T = torch.sigmoid(torch.tensor(-5.0, dtype=torch.float64))
    q = torch.distributions.Normal(ab_T.sqrt() * x0.double(), (1 - ab_T).sqrt())
    prior = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1)
    assert torch.allclose(terms["prior"], prior.sum(1))
    # the decoder's scale √β_1 is far wider than a bin here, so −log p ≈ −log(density × 2/255)
    assert (terms["reconstruction"] > 0).all()
    assert torch.allclose(
        terms["total"], terms["prior"] + terms["reconstruction"] + terms["diffusion"]
    )


class ShiftedEps(OptimalEps):
    """The optimal ε̂ plus a constant error δ in every pixel."""

    def __init__(self, delta):
        super().__init__()
        self.delta = delta

    def forward(self, xt, lam):
        return super().forward(xt, lam) + self.delta


def _nichol_dhariwal_alpha_bar(T, max_beta=0.999):
    """ᾱ_0..ᾱ_T of the cosine schedule, β_i = min(1 − f(i/T)/f((i−1)/T), 0.999) (improved-diffusion)."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    ab = [1.0]
    for i in range(1, T + 1):
        ab.append(ab[-1] * (1 - min(1 - f(i / T) / f((i - 1) / T), max_beta)))
    return ab


def test_ddpm_bound_of_the_cosine_schedule_charges_a_small_error_a_small_cost():
    """A constant error δ in ε̂ moves x̂_0 by σ_i δ/√ᾱ_i, so it adds exactly
    Σ_{i=2}^T c_i² D σ_i² δ² / (2 β̃_i ᾱ_i) to E[diffusion] on Nichol & Dhariwal's capped grid.

    Before the cap, ᾱ_T was the cosine's ᾱ(1) = 3.7e-33 and the increase was 5e23 nats, not 0.008.
    """
    cos = schedules.get_schedule("cosine")
    T, n, delta = 100, 200, 1e-3
    x0 = _gaussian_images(n)
    lam = discrete_time.log_snr_grid(cos.ddpm_alpha_bar(T))
    exact_terms, shifted_terms = (
        discrete_time.nelbo_terms_exact_sum(
            model, x0.double(), lam, generator=torch.Generator().manual_seed(2)
        )
        for model in (OptimalDenoiser(cos), FromEps(ShiftedEps(delta)))
    )
    diff = shifted_terms["diffusion"] - exact_terms["diffusion"]  # same noise in both runs
    ab = _nichol_dhariwal_alpha_bar(T)
    expected = 0.0
    for i in range(2, T + 1):
        beta = 1 - ab[i] / ab[i - 1]
        beta_tilde = (1 - ab[i - 1]) / (1 - ab[i]) * beta
        c = math.sqrt(ab[i - 1]) * beta / (1 - ab[i])
        expected += c**2 * D * (1 - ab[i]) * delta**2 / (2 * beta_tilde * ab[i])
    se = diff.std().item() / math.sqrt(n)
    assert abs(diff.mean().item() - expected) < 4 * se, (diff.mean().item(), expected, se)
    # the prior term uses the same capped ᾱ_T (about 2.4e-7 for T = 100)
    q = torch.distributions.Normal(math.sqrt(ab[T]) * x0.double(), math.sqrt(1 - ab[T]))
    prior = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(exact_terms["prior"], prior.flatten(1).sum(1), rtol=1e-9, atol=1e-12)


def test_continuous_term_keeps_a_float64_model_output():
    """With float64 data and a float64 model, ‖ε − ε̂‖² is formed in float64: an ε̂ that is off by
    1e-9 costs −½ λ'(t) D 1e-18. (The old code rounded ε̂ to float32, an error of ~1e-8.)"""
    sched = schedules.get_schedule("linear_log_snr")
    x0 = _gaussian_images(4).double()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)

    class Model(nn.Module):
        def forward(self, xt, lam):
            ab = torch.sigmoid(lam)[:, None, None, None]
            return (xt - ab.sqrt() * x0) / (1 - ab).sqrt() + 1e-9  # the true ε, + 1e-9

    est = continuous_time.continuous_diffusion_loss(x0, FromEps(Model()), sched, t, eps)
    assert est.dtype == torch.float64
    torch.testing.assert_close(
        est, torch.full((4,), 0.5 * 18.3 * D * 1e-18, dtype=torch.float64), rtol=1e-3, atol=0
    )


def test_bad_arguments():
    cos = schedules.get_schedule("linear_beta")  # λ(0) = +∞
    x0 = _gaussian_images(2)
    with pytest.raises(ValueError, match="both must be finite"):
        continuous_time.vdm_terms(OptimalDenoiser(cos), x0, cos)
    with pytest.raises(ValueError, match="T >= 2"):
        discrete_time.ddpm_terms(OptimalDenoiser(cos), x0, cos.ddpm_alpha_bar(1))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        likelihood.evaluate_bits_per_dim(lambda x, generator: {}, x0, batch_size=0)


def test_the_loop_averages_every_image_once_with_its_standard_error():
    """evaluate_bits_per_dim over batches of 3 of 10 images: each term's mean and its standard error
    s/√N, in bits/dim, from a terms function whose values are known (the image's index, and a
    draw of the shared generator)."""
    images = torch.arange(10, dtype=torch.float64).reshape(10, 1, 1, 1).expand(10, *SHAPE)
    seen = []

    def terms_fn(x0, generator):
        seen.append(x0[:, 0, 0, 0].tolist())
        u = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)
        return {"index": x0[:, 0, 0, 0].clone(), "draw": u}

    got = likelihood.evaluate_bits_per_dim(terms_fn, images, batch_size=3, seed=4)
    assert seen == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    nats_to_bpd = 1 / (D * math.log(2))
    idx = torch.arange(10, dtype=torch.float64)
    assert got["index"] == pytest.approx(idx.mean().item() * nats_to_bpd, rel=1e-12)
    assert got["index_se"] == pytest.approx(idx.std().item() / math.sqrt(10) * nats_to_bpd)
    g = torch.Generator().manual_seed(4)
    draws = torch.cat([torch.rand(k, generator=g, dtype=torch.float64) for k in (3, 3, 3, 1)])
    assert got["draw"] == pytest.approx(draws.mean().item() * nats_to_bpd, rel=1e-12)
    assert got["draw_se"] == pytest.approx(draws.std().item() / math.sqrt(10) * nats_to_bpd)


def test_discrete_bound_decreases_to_the_continuous_one_as_t_grows():
    """Kingma et al. (2021, sec. 4.1): with more steps the discrete diffusion loss falls towards
    L_∞, from above, with a gap of order 1/T (Gaussian data, optimal denoiser, over [1/T, 1])."""
    sched = schedules.get_schedule("linear_log_snr")
    gaps = []
    for T in (100, 1000):
        lam0 = 13.3 - 18.3 / T
        cont = D / 2 * math.log((1 + S**2 * math.exp(lam0)) / (1 + S**2 * math.exp(-5.0)))
        gaps.append(_discrete_closed_form(sched, T) / cont - 1)
    assert 0 < gaps[1] < gaps[0] and gaps[1] < 0.01
    assert 5 < gaps[0] / gaps[1] < 20, "first order in 1/T"
