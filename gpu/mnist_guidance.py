"""Issue 11, item 3: chapter 9's class-conditional MNIST model and its noise-aware classifier,
trained on the GPU in one command, measured and exported.

1. The ``mnist-gpu-cfg`` preset (a 1.6M-parameter U-Net that takes labels, each dropped to the
   null label with probability 0.2, trained with L_simple) for ``--cfg-seconds``.
2. The noise-aware classifier (:class:`~diffusion_lessons.nets.unet.UNetClassifier`, the same
   U-Net's way down with a pooled head) for ``--clf-seconds``, with its test accuracy at four
   noise levels.
3. With ``--export``: ``mnist-cfg.safetensors``/``.json`` (the unconditional half's bits/dim,
   float16 weights), ``mnist-classifier.safetensors`` (float16) and ``guidance.json``: the
   guidance sweep, classifier-free at each ``--weights`` w and classifier guidance at s = 1 + w,
   ``--per-class`` ancestral samples of every class from the same noise, each set measured by
   the classifier's accuracy on its intended labels at λ = 8 and by the Fréchet distance of its
   pooled features to the test set's (chapter 9's yardstick, features of this classifier).

Rehearsal on a CPU, in seconds::

    python gpu/mnist_guidance.py --config tiny-cfg --run /tmp/r --out /tmp/o --cfg-seconds 2 \\
        --clf-seconds 2 --export --n 32 --per-class 2 --steps 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from diffusion_lessons.cli import positive_float, positive_int
from diffusion_lessons.data import datasets
from diffusion_lessons.guidance import guided, metrics
from diffusion_lessons.noise.schedules import get_schedule
from diffusion_lessons.sampling.ancestral import ancestral_sample
from diffusion_lessons.training import classifier, config, engine, pretrained
from diffusion_lessons.training.distributed import describe_device

CLEAN = 8.0
"""The log-SNR at which the classifier reads a sample as a clean image (σ² = 3.4e-4)."""
CLASSIFIER_NAME = "mnist-classifier"


def train_models(args: argparse.Namespace, device: torch.device) -> dict:
    """Train the conditional U-Net into ``--run``/cfg and the classifier into ``--run``."""
    run = Path(args.run)
    cfg = config.PRESETS[args.config]
    images = config.load_images(cfg, root=args.data_root)  # read once, for both models
    labels = config.training_labels(cfg, None, len(images), torch.device("cpu"), args.data_root)
    result = engine.train(
        cfg,
        run / "cfg",
        images=images,
        labels=labels,
        device=device,
        progress=False,
        time_limit=args.cfg_seconds,
    )
    print(
        f"conditional U-Net: step {result.step} in {result.seconds:.1f} s "
        f"({result.images_per_second:.0f} images/s), last loss {result.losses[-1]:.4f}",
        flush=True,
    )
    clf_cfg = dataclasses.replace(cfg.unet_config(), num_classes=None, dropout=0.0)
    clf = classifier.train_classifier(
        clf_cfg,
        cfg.num_classes,
        images,
        labels,
        schedule=cfg.schedule,
        steps=10**7,
        batch_size=cfg.batch_size,
        lr=args.clf_lr,
        seed=cfg.seed,
        time_limit=args.clf_seconds,
        device=device,
    )
    test_x = datasets.load_images(cfg.dataset, "test", root=args.data_root, limit=args.n)
    test_y = datasets.load_labels(cfg.dataset, "test", root=args.data_root, limit=args.n)
    acc = classifier.accuracy_by_level(clf.model, test_x, test_y)
    record = {
        "cfg": {
            "command": args.command,
            "step": result.step,
            "seconds": result.seconds,
            "images_per_second": result.images_per_second,
            "last_loss": result.losses[-1],
        },
        "classifier": {
            "steps": clf.steps,
            "seconds": clf.seconds,
            "batch_size": cfg.batch_size,
            "lr": args.clf_lr,
            "last_loss": clf.losses[-1],
            "test_images": len(test_y),
            "accuracy": {f"{lam:g}": [a.mean, a.se] for lam, a in acc.items()},
        },
    }
    print(
        f"classifier: {clf.steps} steps in {clf.seconds:.1f} s; accuracy by λ: "
        + ", ".join(f"{lam:g}: {a.mean:.4f}" for lam, a in acc.items()),
        flush=True,
    )
    path = classifier.save_classifier(clf.model, run / f"{CLASSIFIER_NAME}.safetensors", record)
    print(f"classifier written to {path}", flush=True)
    (run / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def sweep(args, device, model, clf, cfg) -> dict:
    """Classifier-free and classifier guidance over ``--weights`` from one noise: accuracy and
    Fréchet distance (pooled classifier features) per weight."""
    C = cfg.num_classes
    y = torch.arange(C, device=device).repeat_interleave(args.per_class)
    cond = config.as_denoiser(model, y)
    uncond = config.as_denoiser(model, guided.null_label(C))
    log_p = guided.classifier_log_prob(clf, y, C)
    ab = get_schedule(cfg.schedule).alpha_bar_grid(args.steps)
    shape = (len(y), *datasets.DATASETS[cfg.dataset].shape)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(17)).to(device)
    test_x = datasets.load_images(cfg.dataset, "test", root=args.data_root, limit=args.n)
    test_feats = metrics.penultimate_features(clf, test_x.to(device), CLEAN).cpu()
    rows = []
    for w in args.weights:
        for name, den in (
            ("classifier-free", guided.classifier_free(cond, uncond, w)),
            ("classifier", guided.classifier_guided(uncond, log_p, 1.0 + w)),
        ):
            start = time.perf_counter()
            x = ancestral_sample(
                den,
                shape,
                ab,
                x_T=x_T,
                device=device,
                generator=torch.Generator(device=device).manual_seed(20),
            )
            seconds = time.perf_counter() - start
            with torch.no_grad():
                logits = clf(x, torch.full((len(y),), CLEAN, device=device)).float().cpu()
            acc = metrics.class_accuracy(logits, y.cpu())
            feats = metrics.penultimate_features(clf, x, CLEAN).cpu()
            fd = metrics.frechet_distance(feats, test_feats)
            rows.append(
                {
                    "guidance": name,
                    "w": w,
                    "accuracy": acc.mean,
                    "accuracy_se": acc.se,
                    "frechet_distance": fd,
                    "seconds": seconds,
                }
            )
            print(
                f"  {name} w = {w:g}: accuracy {acc.mean:.4f} ± {acc.se:.4f}, FD {fd:.3f} "
                f"({seconds:.1f} s)",
                flush=True,
            )
    floor_x = config.load_images(cfg, root=args.data_root)[: len(test_x)]
    floor = metrics.frechet_distance(
        metrics.penultimate_features(clf, floor_x.to(device), CLEAN).cpu(), test_feats
    )
    return {
        "steps": args.steps,
        "per_class": args.per_class,
        "clean_log_snr": CLEAN,
        "frechet_floor_train_vs_test": floor,
        "rows": rows,
    }


def export(args: argparse.Namespace, device: torch.device, record: dict) -> None:
    """Export the conditional model (measured as its unconditional half), copy the classifier,
    and run the sweep into ``--out``/guidance.json."""
    run, out = Path(args.run), Path(args.out)
    info = {
        "train_command": record["cfg"]["command"],
        "device": describe_device(device),
        "training_seconds": record["cfg"]["seconds"],
        "label": f"class-conditional, trained for {record['cfg']['seconds'] / 60:.1f} minutes "
        f"on one {describe_device(device)}",
    }
    weights, info_path = pretrained.export_pretrained(
        run / "cfg" / "checkpoint.safetensors",
        out,
        args.name,
        info=info,
        methods=[("vdm", None)],
        n=args.n,
        device=device,
        data_root=args.data_root,
        dtype="float16",
    )
    print("\n".join(pretrained.export_report(weights, info_path)), flush=True)
    clf, _ = classifier.read_classifier(run / f"{CLASSIFIER_NAME}.safetensors")
    record["classifier"]["device"] = describe_device(device)
    classifier.save_classifier(
        clf, out / f"{CLASSIFIER_NAME}.safetensors", record["classifier"], dtype="float16"
    )
    clf = clf.to(device)
    pre = pretrained.read_weights(weights)
    model = pre.model.to(device)
    result = {
        "device": describe_device(device),
        "training": record,
        "sweep": sweep(args, device, model, clf, pre.config),
    }
    (out / "guidance.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {sorted(p.name for p in out.iterdir())}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Train both models (with ``--cfg-seconds``), then (with ``--export``) export; returns 0."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="mnist-gpu-cfg", choices=sorted(config.PRESETS))
    p.add_argument("--run", required=True, help="folder of the training state (kept on the GPU)")
    p.add_argument("--out", required=True, help="folder for the files that come back")
    p.add_argument("--name", default="mnist-cfg")
    p.add_argument("--cfg-seconds", type=positive_float, default=None, help="omit: no training")
    p.add_argument("--clf-seconds", type=positive_float, default=120.0)
    p.add_argument("--clf-lr", type=positive_float, default=1e-3)
    p.add_argument("--export", action="store_true", help="export, measure and sweep")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--per-class", type=positive_int, default=100)
    p.add_argument("--steps", type=positive_int, default=256, help="ancestral steps")
    p.add_argument("--n", type=positive_int, default=None, help="test images (default all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", default=None)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if config.PRESETS[args.config].num_classes == 0:
        p.error(f"--config {args.config} is unconditional: name a preset with num_classes")
    args.command = shlex.join(["python", "gpu/mnist_guidance.py", *argv])
    device = torch.device(args.device)
    if args.cfg_seconds is not None:
        record = train_models(args, device)
    else:
        record = json.loads((Path(args.run) / "record.json").read_text())
    if args.export:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        export(args, device, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
