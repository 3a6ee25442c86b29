"""The monotone log-SNR network (label eq-monotone-gamma); its training objective is tested in
tests/objectives/test_schedule_variance.py."""

import math

import pytest
import torch

from diffusion_lessons.noise import learned_schedule as ls
from diffusion_lessons.noise import schedules
from diffusion_lessons.objectives import continuous_time

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


@pytest.mark.parametrize("seed", range(20))
def test_log_snr_decreases_for_any_weights(seed):
    """Every parameter drawn at random (large normal): λ(t) strictly decreases, λ′ < 0 everywhere."""
    net = ls.MonotoneLogSNR(hidden=16).double()
    randomize(net, seed)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    lam = net.log_snr(t).detach()
    assert (lam[1:] < lam[:-1]).all()
    _, dlam = schedules.log_snr_and_derivative(net, t[1:-1])
    assert (dlam < 0).all()
    # the endpoints are the endpoint parameters, whatever the interior
    gamma_1 = net.gamma_0 + torch.nn.functional.softplus(net.raw_gap)
    assert lam[0].item() == pytest.approx(-net.gamma_0.item(), abs=1e-9)
    assert lam[-1].item() == pytest.approx(-gamma_1.item(), abs=1e-9)


def test_initial_endpoints_and_schedule_methods():
    net = ls.MonotoneLogSNR(log_snr_max=10.0, log_snr_min=-7.0)
    assert net.log_snr(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([10.0, -7.0], abs=1e-5)
    t = torch.rand(5)
    assert torch.allclose(net.alpha_bar(t) + net.sigma(t) ** 2, torch.ones(5), atol=1e-6)
    assert torch.allclose(net.snr(t), net.alpha_bar(t) / net.sigma(t) ** 2, rtol=1e-4)
    assert set(net.endpoint_names()) | set(net.interior_names()) == {
        n for n, _ in net.named_parameters()
    }


def test_bad_input_raises():
    with pytest.raises(ValueError, match="log_snr_max must exceed"):
        ls.MonotoneLogSNR(log_snr_max=-1.0, log_snr_min=2.0)
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        ls.MonotoneLogSNR().log_snr(torch.tensor([1.5]))


@pytest.mark.parametrize("seed", range(3))
def test_expected_loss_does_not_depend_on_the_interior(seed):
    """eq-vlb-invariance for the network: random interiors, same endpoints, the closed-form L_∞."""
    net = ls.MonotoneLogSNR(log_snr_max=6.0, log_snr_min=-4.0, hidden=8).double()
    randomize(net, seed, scale=1.5)
    with torch.no_grad():
        net.gamma_0.fill_(-6.0)
        net.raw_gap.fill_(10.0 + math.log(-math.expm1(-10.0)))  # softplus⁻¹(10)
    gen = torch.Generator().manual_seed(10 + seed)
    x = math.sqrt(V) * torch.randn(200_000, D, generator=gen, dtype=torch.float64)
    est = continuous_time.continuous_loss_estimate(x, exact_denoiser, net, generator=gen).detach()
    exact = 0.5 * D * (math.log1p(V * math.exp(6.0)) - math.log1p(V * math.exp(-4.0)))
    se = est.std().item() / math.sqrt(est.numel())
    assert abs(est.mean().item() - exact) < 4.5 * se, (est.mean().item(), se, exact)
