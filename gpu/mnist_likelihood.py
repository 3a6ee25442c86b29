"""Issue 11, item 2: chapter 10's continuous-time model trained for a wall-clock budget on the
GPU, then its test-set bits/dim term by term, exported as the shipped checkpoint ``mnist``.

A device command may run at most 10 minutes, so a 10-minute training run is two commands on
the same (warm) machine; the training state stays in ``--run`` (a git-ignored folder), and only
the shipped checkpoint, its JSON and a log come back in ``--out``::

    python gpu/mnist_likelihood.py --run runs/gpu-mnist --out "$OUT" --train-seconds 480
    python gpu/mnist_likelihood.py --run runs/gpu-mnist --out "$OUT" --train-seconds 120 \\
        --resume --export

Each call adds its training time to ``--run``/seconds.json, which the export records as
``training_seconds``. The weights are stored as float16 (13 MB for the 6.5M-parameter U-Net,
under the 16 MiB that a file coming back may have); the JSON measures those stored weights.
Rehearsal on a CPU, in seconds::

    python gpu/mnist_likelihood.py --config tiny --run /tmp/r --out /tmp/o --train-seconds 2 \\
        --export --n 32 --methods vdm
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from diffusion_lessons.cli import positive_float, positive_int
from diffusion_lessons.training import config, engine, pretrained
from diffusion_lessons.training.distributed import describe_device

SECONDS_FILE = "seconds.json"


def train(args: argparse.Namespace, device: torch.device) -> dict:
    """Train (or resume) for ``--train-seconds``; add the time to the run's seconds.json."""
    run = Path(args.run)
    record_path = run / SECONDS_FILE
    record = json.loads(record_path.read_text()) if args.resume else {"seconds": 0.0, "calls": []}
    cfg = config.PRESETS[args.config]
    result = engine.train(
        cfg,
        run,
        resume=args.resume,
        device=device,
        progress=False,
        data_root=args.data_root,
        time_limit=args.train_seconds,
    )
    call = {
        "command": args.command,
        "step": result.step,
        "seconds": result.seconds,
        "images_per_second": result.images_per_second,
        "last_loss": result.losses[-1],
    }
    record["seconds"] += result.seconds
    record["calls"].append(call)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"trained to step {result.step} in {result.seconds:.1f} s "
        f"({result.images_per_second:.0f} images/s; {record['seconds']:.1f} s in all)",
        flush=True,
    )
    return record


def export(args: argparse.Namespace, device: torch.device, record: dict) -> None:
    """Export the run as ``--out``/mnist.safetensors + mnist.json, measured on the test set."""
    info = {
        "train_command": " && ".join(c["command"] for c in record["calls"]),
        "export_command": args.command,
        "device": describe_device(device),
        "training_seconds": record["seconds"],
        "training_calls": record["calls"],
        "label": f"trained for {record['seconds'] / 60:.1f} minutes on one {describe_device(device)}",
    }
    weights, info_path = pretrained.export_pretrained(
        Path(args.run) / "checkpoint.safetensors",
        args.out,
        args.name,
        info=info,
        methods=args.methods,
        n=args.n,
        device=device,
        data_root=args.data_root,
        dtype="float16",
    )
    print("\n".join(pretrained.export_report(weights, info_path)), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Train, then (with ``--export``) export and measure; returns 0."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="mnist-gpu", choices=sorted(config.PRESETS))
    p.add_argument("--run", required=True, help="folder of the training state (kept on the GPU)")
    p.add_argument("--out", required=True, help="folder for NAME.safetensors and NAME.json")
    p.add_argument("--name", default="mnist")
    p.add_argument("--train-seconds", type=positive_float, default=None, help="omit: no training")
    p.add_argument("--resume", action="store_true", help="continue the run in --run")
    p.add_argument("--export", action="store_true", help="export and measure after training")
    p.add_argument(
        "--methods",
        type=pretrained.parse_method,
        nargs="+",
        default=[("vdm", None), ("ddpm", 1000)],
        help="vdm and/or ddpm:T (default: vdm ddpm:1000)",
    )
    p.add_argument("--n", type=positive_int, default=None, help="test images (default all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", default=None)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "gpu/mnist_likelihood.py", *argv])
    device = torch.device(args.device)
    if args.train_seconds is not None:
        record = train(args, device)
    else:
        record = json.loads((Path(args.run) / SECONDS_FILE).read_text())
    if args.export:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        export(args, device, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
