"""Training throughput and model-FLOPs utilisation (MFU) of the U-Nets, fast path vs plain loop.

For (a) the book's MNIST U-Net at 28×28 and (b) DDPM's 35.7M-parameter CIFAR-10 U-Net at 32×32,
on random data, it times the engine's own step, :func:`diffusion_lessons.training.optimization.train_step`
(learning rate, ε-prediction loss, backward, gradient clipping, AdamW, EMA update), in two
set-ups of the same model:

- ``fast``:  the engine's set-up (:func:`~diffusion_lessons.training.optimization.build_state`,
  :func:`~diffusion_lessons.training.optimization.make_loss_fn`), which on CUDA means bf16 autocast,
  channels_last, ``torch.compile``, fused AdamW (and TF32 for what stays in fp32);
- ``plain``: fp32 eager with the default AdamW, contiguous tensors, TF32 matmuls off.

FLOPs of one forward + backward pass are counted with ``torch.utils.flop_counter.FlopCounterMode``
(matmuls and convolutions, the usual MFU convention); MFU = FLOPs per step × steps per second /
``--peak-flops`` (default 989e12, H100 SXM bf16 dense). Usage::

    python benchmarks/bench_train.py                      # on the GPU, full size
    python benchmarks/bench_train.py --device cpu --tiny  # a smoke run (tiny models, seconds)
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lessons.nets.unet import (
    UNet,
    UNetConfig,
    count_parameters,
    ddpm_cifar10_config,
    mnist_config,
)
from diffusion_lessons.noise.schedules import get_schedule
from diffusion_lessons.training import config, optimization


@dataclass
class Case:
    """One model to benchmark: its name, configuration and batch size."""

    name: str
    config: UNetConfig
    batch_size: int


def cases(tiny: bool, mnist_batch: int, cifar_batch: int) -> list[Case]:
    """The two models (tiny stand-ins of the same shapes with ``tiny``)."""
    if tiny:
        return [
            Case(
                "mnist (tiny)",
                UNetConfig(
                    image_size=28, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,)
                ),
                8,
            ),
            Case(
                "cifar10 (tiny)",
                UNetConfig(
                    image_size=32,
                    in_channels=3,
                    ch=8,
                    ch_mult=(1, 2, 2, 2),
                    num_res_blocks=1,
                    attn_resolutions=(16,),
                ),
                8,
            ),
        ]
    return [
        Case("mnist (book)", mnist_config(), mnist_batch),
        Case("cifar10 (DDPM 35.7M)", ddpm_cifar10_config(), cifar_batch),
    ]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def step_flops(model: nn.Module, x0: torch.Tensor, t: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass of ``model`` on the batch (FlopCounterMode, fp32)."""
    schedule = get_schedule("linear_log_snr")
    with FlopCounterMode(display=False) as counter:
        config.l_simple(schedule, model, x0, t, torch.randn_like(x0)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def plain_state(model: nn.Module, cfg: config.TrainConfig) -> optimization.TrainState:
    """The ``plain`` set-up: fp32 eager, the default AdamW, an EMA copy (no DDP, no compile)."""
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    return optimization.TrainState(
        model, ema, opt, optimization.compile_or_eager(model, enabled=False)
    )


def time_steps(case: Case, mode: str, dev: torch.device, steps: int, warmup: int) -> float:
    """Seconds per :func:`~diffusion_lessons.training.optimization.train_step` of ``case`` in ``mode``."""
    torch.manual_seed(0)
    fast = mode == "fast"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
    cfg = config.TrainConfig(dataset="mnist", lr=1e-4)  # compile: on CUDA only
    model = UNet(case.config).train()
    if fast:
        state = optimization.build_state(model, cfg, dev)
        loss_fn = optimization.make_loss_fn(cfg, dev)
    else:
        state = plain_state(model.to(dev), cfg)
        loss_fn = functools.partial(config.OBJECTIVES[cfg.objective], get_schedule(cfg.schedule))
    c, s, b = case.config.in_channels, case.config.image_size, case.batch_size
    x0 = torch.rand(b, c, s, s, device=dev) * 2 - 1
    batch = (x0, torch.rand(b, device=dev), torch.randn_like(x0))
    for _ in range(warmup):
        optimization.train_step(state, batch, loss_fn, cfg)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        optimization.train_step(state, batch, loss_fn, cfg)
    _sync(dev)
    return (time.perf_counter() - start) / steps


def measure(case: Case, dev: torch.device, steps: int, warmup: int, peak: float) -> list[dict]:
    """The ``plain`` and ``fast`` rows of one case: speed, FLOPs per step, MFU against ``peak``."""
    c, s, b = case.config.in_channels, case.config.image_size, case.batch_size
    probe = UNet(case.config).to(dev)
    flops = step_flops(probe, torch.rand(b, c, s, s, device=dev) * 2 - 1, torch.rand(b, device=dev))
    params = count_parameters(probe)
    del probe
    rows = []
    for mode in ("plain", "fast"):
        sec = time_steps(case, mode, dev, steps, warmup)
        rows.append(
            {
                "model": case.name,
                "params": params,
                "batch": b,
                "mode": mode,
                "images_per_s": b / sec,
                "ms_per_step": 1e3 * sec,
                "tflops_per_s": flops / sec / 1e12,
                "mfu": flops / sec / peak,
                "gflops_per_step": flops / 1e9,
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    """One line per row, with the speed-up of ``fast`` over ``plain``."""
    head = (
        f"{'model':22s} {'params':>10s} {'batch':>5s} {'mode':>5s} {'img/s':>10s} "
        f"{'ms/step':>9s} {'TFLOP/s':>8s} {'MFU':>7s} {'speed-up':>8s}"
    )
    print(head)
    print("-" * len(head))
    plain = {}
    for r in rows:
        if r["mode"] == "plain":
            plain[r["model"]] = r["images_per_s"]
        up = r["images_per_s"] / plain[r["model"]]
        print(
            f"{r['model']:22s} {r['params']:>10,d} {r['batch']:>5d} {r['mode']:>5s} "
            f"{r['images_per_s']:>10.1f} {r['ms_per_step']:>9.2f} {r['tflops_per_s']:>8.3f} "
            f"{100 * r['mfu']:>6.2f}% {up:>7.2f}x"
        )


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print the table, return the rows."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models, 3 steps (CPU smoke run)")
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 50; 3 with --tiny)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; 1)")
    p.add_argument("--mnist-batch", type=int, default=256)
    p.add_argument("--cifar-batch", type=int, default=128)
    p.add_argument("--peak-flops", type=float, default=989e12, help="peak FLOP/s for MFU")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if args.tiny and dev.type == "cpu":
        torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to a busy machine
    steps = args.steps or (3 if args.tiny else 50)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 10)
    rows = []
    for case in cases(args.tiny, args.mnist_batch, args.cifar_batch):
        rows += measure(case, dev, steps, warmup, args.peak_flops)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}, {steps} timed steps after {warmup} warm-up, "
        f"MFU against {args.peak_flops:.3g} FLOP/s"
    )
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
