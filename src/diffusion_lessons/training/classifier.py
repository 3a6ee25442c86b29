"""The noise-aware image classifier of classifier guidance: trained, measured, saved and read.

:func:`train_classifier` trains a :class:`~diffusion_lessons.nets.unet.UNetClassifier` with
:func:`~diffusion_lessons.guidance.guided.classifier_loss` (cross-entropy of y given
x_t = √ᾱ x_0 + σ ε at λ = λ(t), t ∼ U(0, 1] under the run's schedule), so that it estimates
p(y | x_t) at every noise level, as classifier guidance needs (Dhariwal & Nichol 2021). Every draw
of step s comes from a generator seeded by ``(seed, s)``, as in the image trainer
(:mod:`~diffusion_lessons.training.engine`). On a GPU with bf16 the step runs under the trainer's
autocast (fp32 elsewhere: fp16 would need a gradient scaler).
:func:`accuracy_by_level` measures it on held-out images, and :func:`save_classifier` /
:func:`read_classifier` store it as safetensors with its configuration (no pickle).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from diffusion_lessons.checks import check_choice, check_image_labels, check_positive_int
from diffusion_lessons.guidance.guided import classifier_loss
from diffusion_lessons.guidance.metrics import class_accuracy
from diffusion_lessons.montecarlo import MeanSE
from diffusion_lessons.nets.unet import UNetClassifier, UNetConfig
from diffusion_lessons.noise.schedules import get_schedule
from diffusion_lessons.training import checkpoints
from diffusion_lessons.training.engine import batch_draws, mix_seed
from diffusion_lessons.training.optimization import amp_dtype, autocast
from diffusion_lessons.training.pretrained import WEIGHT_DTYPES

CLASSIFIER_FORMAT = "diffusion-lessons-classifier-v1"
"""The ``format`` entry of a saved classifier's metadata."""


@dataclass
class ClassifierRun:
    """What :func:`train_classifier` returns: the model (in eval mode), the loss of every step,
    the steps done, and the seconds they took."""

    model: UNetClassifier
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def train_classifier(
    config: UNetConfig,
    num_classes: int,
    images: Tensor,
    labels: Tensor,
    *,
    schedule: str = "linear_log_snr",
    steps: int = 10_000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    time_limit: float | None = None,
    device: torch.device | str = "cpu",
) -> ClassifierRun:
    """Train a noise-aware classifier for ``steps`` AdamW steps (or until ``time_limit`` seconds).

    ``images``: float ``(N, C, H, W)`` in [−1, 1]; ``labels``: ``(N,)`` in 0..``num_classes`` − 1.
    Batches and their draws are the trainer's
    (:func:`~diffusion_lessons.training.engine.batch_draws`, on a stream of their own).
    """
    check_positive_int(steps, name="steps")
    check_positive_int(batch_size, name="batch_size")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be a number of seconds > 0 or None, got {time_limit!r}")
    labels = check_image_labels(labels, num_classes, images.shape[0])
    device = torch.device(device)
    torch.manual_seed(seed)
    model = UNetClassifier(config, num_classes).to(device)
    images, labels = images.to(device, torch.float32), labels.to(device)
    sched = get_schedule(schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses: list[Tensor] = []
    start = time.perf_counter()
    model.train()
    step = 0
    while step < steps:
        idx, t, eps, _ = batch_draws(images, step, batch_size, seed, stream=3)
        lam = sched.log_snr(t.double()).float()
        with autocast(device) if amp_dtype(device) == torch.bfloat16 else nullcontext():
            loss = classifier_loss(model, images[idx], labels[idx], lam, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        step += 1
        if time_limit is not None and step % 50 == 0:
            if time.perf_counter() - start >= time_limit:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.eval()
    return ClassifierRun(model, torch.stack(losses).float().tolist(), step, seconds)


@torch.no_grad()
def accuracy_by_level(
    model: UNetClassifier,
    images: Tensor,
    labels: Tensor,
    log_snrs: tuple[float, ...] = (8.0, 4.0, 0.0, -4.0),
    *,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict[float, MeanSE]:
    """The classifier's accuracy on ``images`` noised to each log-SNR in ``log_snrs`` (one draw
    of ε per image, seeded), as :func:`~diffusion_lessons.guidance.metrics.class_accuracy`."""
    device = next(model.parameters()).device
    out = {}
    for lam in log_snrs:
        g = torch.Generator().manual_seed(mix_seed(seed, round(1000 * lam)))
        a, s = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
        logits = []
        for k in range(0, images.shape[0], batch_size):
            x0 = images[k : k + batch_size]
            eps = torch.randn(x0.shape, generator=g)
            xt = (a * x0 + s * eps).to(device)  # eq-forward-marginal at ᾱ = sigmoid(λ)
            logits.append(model(xt, torch.full((x0.shape[0],), lam, device=device)).float().cpu())
        out[lam] = class_accuracy(torch.cat(logits), labels)
    return out


def save_classifier(
    model: UNetClassifier, path: str | os.PathLike, info: dict | None = None, dtype: str = "float32"
) -> Path:
    """Write ``model`` to ``path`` (safetensors; weights as ``dtype``, a key of
    :data:`~diffusion_lessons.training.pretrained.WEIGHT_DTYPES`) with its configuration and the
    JSON-ready ``info`` in the metadata."""
    check_choice(dtype, tuple(WEIGHT_DTYPES), name="dtype")
    tensors = {
        k: v.detach().to("cpu", WEIGHT_DTYPES[dtype]).contiguous()
        for k, v in model.state_dict().items()
    }
    meta = {
        "format": CLASSIFIER_FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "num_classes": str(model.num_classes),
        "info": json.dumps(info or {}),
    }
    return checkpoints.write_safetensors(tensors, path, meta)


def read_classifier(path: str | os.PathLike) -> tuple[UNetClassifier, dict]:
    """Read a classifier written by :func:`save_classifier`: ``(model in eval mode, info)``;
    raises ``ValueError`` naming the file when it is of another format."""
    meta, tensors = checkpoints.read_safetensors(path)
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(
            f"{path} is not a saved classifier (format {meta.get('format')!r}); expected "
            f"{CLASSIFIER_FORMAT!r}, written by training.classifier.save_classifier"
        )
    model = UNetClassifier(
        UNetConfig.from_dict(json.loads(meta["config"])), int(meta["num_classes"])
    )
    state = {k: v.float() for k, v in tensors.items()}
    checkpoints.load_module_state(model, state, path=path, architecture="UNetClassifier")
    return model.eval(), json.loads(meta["info"])
