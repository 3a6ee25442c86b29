"""Command line: train a U-Net on images and measure its bits/dim.

    diffusion-lessons train --config mnist --steps 20000 --batch-size 128 --out runs/mnist
    diffusion-lessons train --config mnist --steps 40000 --out runs/mnist --resume
    torchrun --nproc_per_node 8 -m diffusion_lessons.cli train --config mnist --out runs/mnist
    diffusion-lessons eval --checkpoint runs/mnist/checkpoint.safetensors

(``python -m diffusion_lessons.cli`` is the same program.) Configurations are the named presets of
:data:`diffusion_lessons.training.config.PRESETS`; the flags override single fields. Nothing is
read from configuration files.

A user's mistake (a run folder that already holds a checkpoint, a missing or truncated file, a
flag out of range) ends the program with one line on stderr, ``diffusion-lessons: error: …``, and
exit status 2; any other exception is a bug and keeps its traceback (``--traceback`` shows it for
the mistakes too).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from collections.abc import Sequence

import torch

from diffusion_lessons.data import datasets
from diffusion_lessons.likelihood import evaluate_bits_per_dim
from diffusion_lessons.training import config, engine, pretrained

PROG = "diffusion-lessons"
"""The program's name, as ``--help`` and the error line show it (the console script's name)."""


def _int_at_least(low: int, what: str):
    """An argparse type: an integer >= ``low``, written plainly (no "1.0", no "1e3")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or str(value) != text.strip().lstrip("+"):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
"""argparse type: an integer >= 1 (``--steps``, ``--batch-size``, ``--T``, ``--n``)."""

non_negative_int = _int_at_least(0, "an integer >= 0")
"""argparse type: an integer >= 0 (``--seed``)."""


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``--lr``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


OVERRIDES = {
    "steps": positive_int,
    "batch_size": positive_int,
    "lr": positive_float,
    "seed": non_negative_int,
    "max_examples": positive_int,
}
"""The preset fields ``train`` may override, with the argparse type that checks each."""

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "diffusion_lessons.training.pretrained",  # export
    "diffusion_lessons.coding.commands",  # compress, decompress
)
"""Modules that register more subcommands: each has ``add_parsers(subparsers)``, whose parsers
call ``set_defaults(func=...)`` like ``train`` and ``eval``."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are the program's one line and exit status 2."""

    def error(self, message: str):
        hint = f" (see '{self.prog} --help')"
        self.exit(2, f"{PROG}: error: {message}{hint}\n")


def _add_train(sub) -> None:
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
    tr.add_argument(
        "--time-limit",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="stop at the first logging step after this long and checkpoint (continue: --resume)",
    )
    tr.set_defaults(func=train)


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="negative ELBO of the test set in bits/dim (EMA weights)")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--method", choices=("vdm", "ddpm"), default="vdm")
    ev.add_argument("--T", type=positive_int, default=1000, help="steps for --method ddpm")
    ev.add_argument("--n", type=positive_int, default=None, help="test images (default all)")
    ev.add_argument("--batch-size", type=positive_int, default=256)
    ev.add_argument("--device", default=None)
    ev.add_argument("--data-root", default=None)
    ev.set_defaults(func=evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``diffusion-lessons``: ``train``, ``eval`` and the subcommands of
    :data:`SUBCOMMAND_MODULES`; each subcommand's ``func`` is what :func:`main` runs."""
    parser = Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of any error"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
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
        time_limit=args.time_limit,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"step {result.step}: loss {result.losses[-1]:.5f}, "
            f"{result.images_per_second:.1f} images/s in {result.seconds:.1f} s, "
            f"checkpoint in {args.out}"
        )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``eval``: bits/dim of the test set under the checkpoint's EMA weights (checked on load)."""
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ema = pretrained.read_training_ema(args.checkpoint)
    cfg, model = ema.config, ema.model.to(dev)
    images = datasets.load_images(cfg.dataset, "test", root=args.data_root, limit=args.n).to(dev)
    T = args.T if args.method == "ddpm" else None
    terms_fn = pretrained.terms_function(model, cfg, args.method, T)  # as export measures
    bpd = evaluate_bits_per_dim(terms_fn, images, batch_size=args.batch_size)
    print(
        f"{cfg.dataset} test set, {images.shape[0]} images, EMA weights at step {ema.step}, "
        f"method {args.method}:"
    )
    for name, value in bpd.items():
        print(f"  {name:15s} {value:.4f} bits/dim")
    return 0


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a user's mistake: the library's ``ValueError`` (a bad argument or
    file, e.g. an existing run folder without ``--resume``, a truncated checkpoint), ``OSError``
    (a missing file, a folder that cannot be written) and the data sets' and shipped checkpoints'
    own errors, which say what to do."""
    return (ValueError, OSError, datasets.DatasetError, pretrained.CheckpointError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the subcommand; returns its exit status.

    A user's mistake (:func:`user_errors`) exits with status 2 and one line on stderr,
    ``diffusion-lessons: error: <message>``; any other exception propagates (a bug).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as err:
        if args.traceback:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        parser.exit(2, f"{PROG}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
