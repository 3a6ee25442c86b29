"""VDM's objective for a learned schedule (eq-vlb-invariance): gradient routing, and the split
of the estimator's variance into the parts from t and from (x, ε)."""

import math

import pytest
import torch

from diffusion_lessons.denoisers.denoiser import FromEps
from diffusion_lessons.nets import mlp
from diffusion_lessons.noise import learned_schedule as ls
from diffusion_lessons.noise import time_sampling
from diffusion_lessons.objectives import continuous_time
from diffusion_lessons.objectives import schedule_variance as sv

V, D = 0.5, 2


def exact_denoiser(z, lam):
    """E[x | z_t] for x ∼ N(0, V I), written independently of the library."""
    ab = torch.sigmoid(lam)[:, None].to(z)
    return ab.sqrt() * V * z / (ab * V + 1 - ab)


def randomize(module, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))


def test_training_loss_routes_gradients_as_vdm():
    """ε-model and endpoints get ∇ mean(−ELBO); the interior gets ∇ mean(L_∞²) only.

    Both gradients are recomputed here with separate autograd calls on the same random draws.
    """
    torch.manual_seed(0)
    model = mlp.MLPDenoiser(dim=D, hidden=16, depth=1, emb_dim=8, noise_scale=1.0)
    sched = ls.MonotoneLogSNR(hidden=8)
    bundle = sv.DenoiserWithSchedule(model, sched)
    x = torch.randn(64, D)
    loss = sv.variance_trained_loss("uniform")(bundle, (x,), torch.Generator().manual_seed(1))
    got = torch.autograd.grad(loss, list(bundle.parameters()), allow_unused=True)
    got = dict(zip([n for n, _ in bundle.named_parameters()], got, strict=True))

    gen = torch.Generator().manual_seed(1)
    t = time_sampling.sample_times(64, generator=gen)
    eps = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    x0_hat = FromEps(model)
    bound = continuous_time.negative_elbo(x, x0_hat, sched, t, eps, create_graph=True).mean()
    sq = (
        continuous_time.continuous_diffusion_loss(x, x0_hat, sched, t, eps, create_graph=True) ** 2
    ).mean()
    names = [n for n, _ in bundle.named_parameters()]
    params = list(bundle.parameters())
    g_bound = dict(
        zip(
            names,
            torch.autograd.grad(bound, params, retain_graph=True, allow_unused=True),
            strict=True,
        )
    )
    g_sq = dict(zip(names, torch.autograd.grad(sq, params, allow_unused=True), strict=True))
    for name in names:
        interior = name.startswith("schedule.") and name.split(".", 1)[1] in sched.interior_names()
        expected = g_sq[name] if interior else g_bound[name]
        assert got[name] is not None and expected is not None, name
        assert torch.allclose(got[name], expected, rtol=1e-4, atol=1e-6), name


def test_bound_trained_loss_is_the_mean_negative_elbo():
    """The control objective: mean(−ELBO) on the same draws, gradients to every parameter."""
    torch.manual_seed(0)
    model = mlp.MLPDenoiser(dim=D, hidden=16, depth=1, emb_dim=8, noise_scale=1.0)
    bundle = sv.DenoiserWithSchedule(model, ls.MonotoneLogSNR(hidden=8))
    x = torch.randn(64, D)
    loss = sv.bound_trained_loss("low_discrepancy")(bundle, (x,), torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    t = time_sampling.sample_times(64, sampler="low_discrepancy", generator=gen)
    eps = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    expected = continuous_time.negative_elbo(x, FromEps(model), bundle.schedule, t, eps).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    grads = torch.autograd.grad(loss, list(bundle.parameters()), allow_unused=True)
    assert all(g is not None for g in grads)
    with pytest.raises(ValueError, match="time sampler"):
        sv.bound_trained_loss("sobol")
    with pytest.raises(ValueError, match="time sampler"):
        sv.variance_trained_loss("sobol")


def linear_schedule(lmax=6.0, lmin=-4.0):
    from diffusion_lessons.noise import schedules

    return schedules.get_schedule("linear_log_snr", log_snr_max=lmax, log_snr_min=lmin)


def test_variance_split_of_a_time_independent_loss():
    """x̂ = z/√ᾱ (ε̂ = 0) under a linear log-SNR: L = ½(λ_max − λ_min)‖ε‖², whatever t and x.

    So the part from t is 0 and the part from (x, ε) is the sample variance of that, computed here
    directly.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, D, generator=gen, dtype=torch.float64)
    eps = torch.randn(500, D, generator=gen, dtype=torch.float64)
    no_denoising = lambda z, lam: z / torch.sigmoid(lam).sqrt()[:, None]
    d = sv.time_variance_decomposition(x, no_denoising, linear_schedule(), eps, n_nodes=16)
    expected = 0.5 * 10.0 * (eps**2).sum(1)
    torch.testing.assert_close(d["pair_means"], expected, rtol=1e-9, atol=0)
    assert d["from_t"] < 1e-9 * d["from_x_eps"] and d["from_t_main"] < 1e-9 * d["from_x_eps"]
    assert d["from_x_eps"] == pytest.approx(expected.var().item(), rel=1e-9)
    assert d["total"] == pytest.approx(d["from_t"] + d["from_x_eps"])


def test_variance_split_against_brute_force_monte_carlo():
    """Gaussian data, exact denoiser: each part against an independent Monte Carlo estimate.

    - E L and Var L: from independent triples (x, ε, t), and E L against the closed form L_∞;
    - the part from t, E Var_t L: ½ E (L(t_1) − L(t_2))² with two independent times per pair;
    - the part from (x, ε) = Var L − E Var_t L.
    All within 4.5 Monte Carlo standard errors.
    """
    sched = linear_schedule()
    gen = torch.Generator().manual_seed(1)
    n = 20_000
    x = math.sqrt(V) * torch.randn(n, D, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, D, generator=gen, dtype=torch.float64)
    d = sv.time_variance_decomposition(x, exact_denoiser, sched, eps, n_nodes=48)

    exact_mean = 0.5 * D * (math.log1p(V * math.exp(6.0)) - math.log1p(V * math.exp(-4.0)))
    assert abs(d["mean"] - exact_mean) < 4.5 * math.sqrt(d["total"] / n)

    m = 200_000
    xm = math.sqrt(V) * torch.randn(m, D, generator=gen, dtype=torch.float64)
    em = torch.randn(m, D, generator=gen, dtype=torch.float64)
    t1, t2 = (torch.rand(m, generator=gen, dtype=torch.float64) for _ in range(2))
    l1 = continuous_time.continuous_diffusion_loss(xm, exact_denoiser, sched, t1, em)
    l2 = continuous_time.continuous_diffusion_loss(xm, exact_denoiser, sched, t2, em)
    total_mc = l1.var().item()
    total_se = math.sqrt(((l1 - l1.mean()) ** 4).mean().item() - total_mc**2) / math.sqrt(m)
    half_sq = 0.5 * (l1 - l2) ** 2
    from_t_mc, from_t_mc_se = half_sq.mean().item(), half_sq.std().item() / math.sqrt(m)

    def close(a, a_se, b, b_se):
        return abs(a - b) < 4.5 * math.hypot(a_se, b_se)

    assert close(d["total"], d["total_se"], total_mc, total_se), (d["total"], total_mc)
    assert close(d["from_t"], d["from_t_se"], from_t_mc, from_t_mc_se), (d["from_t"], from_t_mc)
    assert close(
        d["from_x_eps"],
        d["from_x_eps_se"],
        total_mc - from_t_mc,
        math.hypot(total_se, from_t_mc_se),
    )
    # the main effect of t is a part of the t-part
    assert 0 < d["from_t_main"] < d["from_t"]


def test_variance_split_from_x_eps_does_not_depend_on_the_interior():
    """eq-vlb-invariance pair by pair: E_t L for fixed (x, ε) is the same under a random monotone
    schedule as under the linear one with the same endpoints (up to the quadrature error)."""
    net = ls.MonotoneLogSNR(log_snr_max=6.0, log_snr_min=-4.0, hidden=8).double()
    randomize(net, 5, scale=1.0)
    with torch.no_grad():
        net.gamma_0.fill_(-6.0)
        net.raw_gap.fill_(10.0 + math.log(-math.expm1(-10.0)))  # softplus⁻¹(10)
    gen = torch.Generator().manual_seed(2)
    x = math.sqrt(V) * torch.randn(300, D, generator=gen, dtype=torch.float64)
    eps = torch.randn(300, D, generator=gen, dtype=torch.float64)
    a = sv.time_variance_decomposition(x, exact_denoiser, net, eps, n_nodes=200)
    b = sv.time_variance_decomposition(x, exact_denoiser, linear_schedule(), eps, n_nodes=200)
    torch.testing.assert_close(a["pair_means"], b["pair_means"], rtol=1e-6, atol=0)
    assert a["from_t"] != pytest.approx(b["from_t"], rel=1e-2)  # but the part from t differs


def test_variance_split_bad_input():
    x = torch.zeros(4, D)
    ident = lambda z, lam: z
    with pytest.raises(ValueError, match="n_nodes must be an integer >= 1"):
        sv.time_variance_decomposition(x, ident, linear_schedule(), x, n_nodes=0)
    with pytest.raises(ValueError, match="same shape"):
        sv.time_variance_decomposition(x, ident, linear_schedule(), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        sv.time_variance_decomposition(x[:1], ident, linear_schedule(), x[:1])


@pytest.mark.parametrize("sampler", ["uniform", "low_discrepancy"])
def test_variance_split_predicts_the_minibatch_variance(sampler):
    """Minibatches of 16 (times from sample_times per minibatch, the mean of continuous_diffusion_loss
    over each, as chapter 6 measures it): uniform times have variance total / B;
    low-discrepancy times (from_t − from_t_main + from_x_eps) / B, the main effect of t removed."""
    sched, B, n_batches = linear_schedule(), 16, 12_000
    gen = torch.Generator().manual_seed(7)
    x = math.sqrt(V) * torch.randn(8192, D, generator=gen, dtype=torch.float64)
    eps = torch.randn(8192, D, generator=gen, dtype=torch.float64)
    d = sv.time_variance_decomposition(x, exact_denoiser, sched, eps, n_nodes=48)
    predicted_se = d["total_se"] / B  # the main effect of t has a much smaller error
    if sampler == "uniform":
        predicted = d["total"] / B
    else:
        predicted = (d["from_t"] - d["from_t_main"] + d["from_x_eps"]) / B
    xb = math.sqrt(V) * torch.randn(B * n_batches, D, generator=gen, dtype=torch.float64)
    t = torch.cat(
        [time_sampling.sample_times(B, sampler=sampler, generator=gen) for _ in range(n_batches)]
    )
    eb = torch.randn(xb.shape, generator=gen, dtype=xb.dtype)
    per_example = continuous_time.continuous_diffusion_loss(xb, exact_denoiser, sched, t, eb)
    est = per_example.reshape(n_batches, B).mean(1)
    measured = est.var().item()
    measured_se = math.sqrt(((est - est.mean()) ** 4).mean().item() - measured**2) / math.sqrt(
        n_batches
    )
    assert abs(measured - predicted) < 4.5 * math.hypot(measured_se, predicted_se), (
        measured,
        predicted,
    )
    assert d["from_t_main"] > 0.05 * d["from_t"]  # the two predictions really differ
