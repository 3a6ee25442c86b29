"""Command line: train a U-Net on images and measure its bits/dim.

    python -m diffusion_lessons.cli train --config mnist --steps 20000 --batch-size 128 --out runs/mnist
    python -m diffusion_lessons.cli train --config mnist --steps 40000 --out runs/mnist --resume
    torchrun --nproc_per_node 8 -m diffusion_lessons.cli train --config mnist --out runs/mnist
    python -m diffusion_lessons.cli eval --checkpoint runs/mnist/checkpoint.safetensors

Configurations are the named presets of :data:`diffusion_lessons.training.config.PRESETS`; the flags
override single fields. Nothing is read from configuration files.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import Sequence

import torch

from diffusion_lessons.data import datasets
from diffusion_lessons.likelihood import evaluate_bits_per_dim
from diffusion_lessons.nets.unet import UNet
from diffusion_lessons.noise.schedules import get_schedule
from diffusion_lessons.objectives import continuous_time, discrete_time
from diffusion_lessons.training import checkpoints, config, engine

OVERRIDES = {"steps": int, "batch_size": int, "lr": float, "seed": int, "max_examples": int}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m diffusion_lessons.cli``."""
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_lessons.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train (or resume training) a U-Net")
    tr.add_argument("--config", required=True, choices=sorted(config.PRESETS))
    for name, kind in OVERRIDES.items():
        tr.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    tr.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile: auto = on CUDA only",
    )
    tr.add_argument("--out", required=True, help="folder for checkpoint.safetensors")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    tr.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if CUDA, else cpu")
    tr.add_argument("--no-progress", action="store_true")
    tr.add_argument("--data-root", default=None, help="folder holding mnist.npz")
    ev = sub.add_parser("eval", help="negative ELBO of the test set in bits/dim (EMA weights)")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--method", choices=("vdm", "ddpm"), default="vdm")
    ev.add_argument("--T", type=int, default=1000, help="steps for --method ddpm")
    ev.add_argument("--n", type=int, default=None, help="number of test images (default all)")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--device", default=None)
    ev.add_argument("--data-root", default=None)
    return parser


def config_from_args(args: argparse.Namespace) -> config.TrainConfig:
    """The preset named by ``--config`` with the fields given on the command line replaced."""
    changes = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    changes["compile"] = {"auto": None, "on": True, "off": False}[args.compile]
    return dataclasses.replace(config.PRESETS[args.config], **changes)


def train(args: argparse.Namespace) -> int:
    """``train``: run (or resume) :func:`~diffusion_lessons.training.engine.train`; rank 0 reports."""
    result = engine.train(
        config_from_args(args),
        args.out,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        data_root=args.data_root,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"step {result.step}: loss {result.losses[-1]:.5f}, "
            f"{result.images_per_second:.1f} images/s, checkpoint in {args.out}"
        )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``eval``: bits/dim of the test set under the checkpoint's EMA weights (checked on load)."""
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = checkpoints.read_training_state(args.checkpoint)
    cfg = config.TrainConfig.from_dict(ckpt.config)
    model = UNet(cfg.unet_config())
    checkpoints.load_module_state(
        model,
        ckpt.state("ema"),
        path=args.checkpoint,
        architecture=ckpt.metadata.get("architecture", "?"),
    )
    model.to(dev).eval()
    images = datasets.load_images(cfg.dataset, "test", root=args.data_root, limit=args.n).to(dev)
    schedule, bins = get_schedule(cfg.schedule), datasets.DATASETS[cfg.dataset].bins
    denoiser = config.as_denoiser(model)  # FromEps: the U-Net is conditioned on λ
    if args.method == "ddpm":
        alpha_bar = schedule.ddpm_alpha_bar(args.T).to(dev)
        terms_fn = functools.partial(
            discrete_time.ddpm_terms, denoiser, alpha_bar=alpha_bar, bins=bins
        )
    else:
        terms_fn = functools.partial(
            continuous_time.vdm_terms, denoiser, schedule=schedule, bins=bins
        )
    bpd = evaluate_bits_per_dim(terms_fn, images, batch_size=args.batch_size)
    print(
        f"{cfg.dataset} test set, {images.shape[0]} images, EMA weights at step {ckpt.step}, "
        f"method {args.method}:"
    )
    for name, value in bpd.items():
        print(f"  {name:15s} {value:.4f} bits/dim")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    return train(args) if args.command == "train" else evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
