"""Mixed precision: bf16 where the GPU has it, fp16 with a gradient scaler on a T4, fp32 on a CPU.

No test machine has a GPU, so the choice is tested as the pure function it is (with
``torch.cuda.is_bf16_supported`` patched), and the scaler's part of the step on the CPU, where
``torch.amp.GradScaler`` runs the same scale / unscale / skip-on-overflow logic.
"""

import dataclasses
import math

import pytest
import torch

from diffusion_lessons.training import config, optimization

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = config.PRESETS["tiny"]


@pytest.mark.parametrize(
    ("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)], ids=["H100", "T4"]
)
def test_cuda_autocasts_to_bf16_where_supported_else_fp16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert optimization.amp_dtype(torch.device("cuda")) is expected
    assert optimization.amp_dtype(torch.device("cuda:0")) is expected


def test_cpu_runs_fp32_and_needs_no_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # not asked
    cpu = torch.device("cpu")
    assert optimization.amp_dtype(cpu) is None
    assert not optimization.make_scaler(cpu).is_enabled()
    x = torch.ones(2, 2)
    with optimization.autocast(cpu):
        assert (x @ x).dtype == torch.float32


def test_scaler_is_enabled_exactly_for_fp16(monkeypatch):
    cpu = torch.device("cpu")
    for dtype, enabled in ((torch.float16, True), (torch.bfloat16, False), (None, False)):
        monkeypatch.setattr(optimization, "amp_dtype", lambda device, dtype=dtype: dtype)
        assert optimization.make_scaler(cpu).is_enabled() is enabled


def _state(scaler):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    ema = torch.nn.Linear(4, 1).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    net = optimization.compile_or_eager(model, enabled=False)
    return optimization.TrainState(model, ema, opt, net, scaler=scaler)


def _loss_fn(forward, x0, t, eps):
    return ((forward(x0).squeeze(1) - t) ** 2).mean() * eps


def test_a_scaled_step_equals_the_unscaled_step_and_overflow_skips_it():
    """Scale 2¹⁰ then unscale is exact in fp32 (a power of two), clipping included; an infinite
    loss makes the scaler skip the optimizer step and halve its scale."""
    cfg = dataclasses.replace(TINY, warmup_steps=0, lr=0.1, grad_clip=0.05, ema_decay=0.5)
    x0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    t = torch.rand(8, generator=torch.Generator().manual_seed(2))
    plain = _state(torch.amp.GradScaler("cpu", enabled=False))
    scaled = _state(torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=True))
    for state in (plain, scaled):
        loss = optimization.train_step(state, (x0, t, torch.tensor(1.0)), _loss_fn, cfg)
        assert math.isfinite(loss.item())
    # the gradient norm exceeds the clip, so both steps are clipped to the same length
    for a, b in zip(plain.model.parameters(), scaled.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    moved = [p.detach().clone() for p in scaled.model.parameters()]
    ema_before = [p.detach().clone() for p in scaled.ema.parameters()]
    optimization.train_step(scaled, (x0, t, torch.tensor(math.inf)), _loss_fn, cfg)
    for p, m in zip(scaled.model.parameters(), moved, strict=True):
        assert torch.equal(p.detach(), m)  # the step was skipped: not a single weight changed
    assert scaled.scaler.get_scale() == 2.0**9
    assert scaled.step == 2  # the step is still counted (its batch was drawn and used)
    # the EMA moved toward the unchanged weights, as after any step
    for e, b, m in zip(scaled.ema.parameters(), ema_before, moved, strict=True):
        torch.testing.assert_close(e, 0.5 * b + 0.5 * m)
