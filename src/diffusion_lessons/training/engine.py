"""The image trainer: a fast path on a GPU, the same numbers on a CPU, resumable, multi-GPU.

:func:`train` trains a :class:`~diffusion_lessons.nets.unet.UNet` to predict ε (Ho et al. 2020) with
the loss that ``TrainConfig.objective`` names
(:data:`~diffusion_lessons.training.config.OBJECTIVES`: DDPM's L_simple or VDM's continuous-time
L_∞, both the library's losses of the denoiser ``denoiser.FromEps(unet)``, per dimension).

On CUDA the engine uses bf16 autocast (fp16 with a gradient scaler on a GPU without bf16, such
as Colab's T4: :func:`~diffusion_lessons.training.optimization.amp_dtype`), channels_last, fused
AdamW and ``torch.compile`` (eager, with one warning, where compilation fails); on a CPU it runs
plain fp32 eager. The whole dataset
lives on the device; every random draw of step ``s`` comes from a generator seeded by
``(seed, s)``, so a resumed run continues on exactly the same loss curve. Under ``torchrun``
(WORLD_SIZE > 1) each process takes its share of every global batch and DistributedDataParallel
averages the gradients; rank 0 logs and writes checkpoints
(:mod:`~diffusion_lessons.training.checkpoints`).

The parts live in four modules, each read in one sitting:

- :mod:`~diffusion_lessons.training.config`: the run (``TrainConfig``, ``PRESETS``), its loss
  (``OBJECTIVES``, ``as_denoiser``), its data;
- :mod:`~diffusion_lessons.training.optimization`: one step (``lr_at``, ``ema_update``,
  ``make_optimizer``, ``amp_dtype``, ``autocast``, ``make_scaler``, ``make_loss_fn``, ``compile_or_eager``, ``TrainState``,
  ``build_state``, ``train_step``, what ``benchmarks/bench_train.py`` times) and the state's
  checkpoint (``save_state``, ``restore_state``);
- :mod:`~diffusion_lessons.training.distributed`: the device, the processes, out of memory;
- this module: the batches (:func:`mix_seed`, :func:`batch_indices`, :func:`batch_draws`,
  :func:`step_batch`, t drawn on (0, 1] so that λ stays finite) and the loop (:func:`train`, :func:`run_steps`,
  :func:`oom_error`).
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from diffusion_lessons.guidance.guided import drop_labels
from diffusion_lessons.nets.unet import UNet
from diffusion_lessons.training.config import TrainConfig, training_images, training_labels
from diffusion_lessons.training.distributed import (
    distributed_context,
    largest_fitting_batch,
    mean_over_processes,
    oom_message,
    training_device,
)
from diffusion_lessons.training.optimization import (
    LossFn,
    TrainState,
    build_state,
    checkpoint_file,
    make_loss_fn,
    save_state,
    train_step,
)

# ---------------------------------------------------------------------------------------------
# The batches: every random draw of a step is seeded by (seed, step).


def mix_seed(*ints: int) -> int:
    """A 63-bit seed from a tuple of integers (splitmix-style), so streams do not overlap."""
    h = 0x9E3779B97F4A7C15
    for i in ints:
        h = ((h ^ (i & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> Tensor:
    """Indices of the global batch of ``step``: epochs are seeded permutations of range(n).

    Step s takes positions s·B … s·B + B − 1 of the endless sequence perm_0, perm_1, … (perm_e
    seeded by ``(seed, e)``), so every example is seen once per epoch, and the batch depends only
    on ``step`` (resuming needs no sampler state). ``(batch_size,)`` long, on the CPU.
    """
    k = step * batch_size + torch.arange(batch_size)
    epoch, pos = k // n, k % n
    out = torch.empty(batch_size, dtype=torch.long)
    for e in epoch.unique().tolist():
        perm = _epoch_permutation(n, seed, e)
        mask = epoch == e
        out[mask] = perm[pos[mask]]
    return out


def batch_draws(
    images: Tensor, step: int, batch_size: int, seed: int, stream: int = 1
) -> tuple[Tensor, Tensor, Tensor, torch.Generator]:
    """The draws of the global batch of ``step``: ``(indices, t, eps, generator)`` on the
    device of ``images``.

    The indices come from :func:`batch_indices`. t ~ U(0, 1] is drawn as 1 − U[0, 1), so that
    λ(t) is finite, and then ε ~ N(0, I) shaped like the images. Both come from a generator
    seeded by ``(seed, step, stream)``, which is returned so that a caller can draw more from
    the same stream. The trainer uses stream 1 and the classifier stream 3.
    """
    device = images.device
    idx = batch_indices(step, batch_size, images.shape[0], seed).to(device)
    g = torch.Generator(device=device).manual_seed(mix_seed(seed, step, stream))
    t = 1.0 - torch.rand(batch_size, generator=g, device=device)
    eps = torch.randn((batch_size, *images.shape[1:]), generator=g, device=device)
    return idx, t, eps, g


def step_batch(
    images: Tensor,
    step: int,
    cfg: TrainConfig,
    rank: int = 0,
    world: int = 1,
    labels: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """``(x0, t, eps)`` of this rank's share of the global batch of ``step``; with ``labels``
    (a class-conditional run), ``(x0, t, eps, y)``.

    The global batch is drawn identically on every rank from generators seeded by
    ``(seed, step)``: the indices, t and ε of :func:`batch_draws`, and then each label replaced by
    the null label ``cfg.num_classes`` with probability ``cfg.label_dropout``
    (:func:`~diffusion_lessons.guidance.guided.drop_labels`). Rank r keeps rows
    r·B/W … (r + 1)·B/W − 1, so W processes compute exactly the gradient of one process on the
    whole batch.
    """
    b = cfg.batch_size // world
    rows = slice(rank * b, (rank + 1) * b)
    idx, t, eps, g = batch_draws(images, step, cfg.batch_size, cfg.seed)
    x0 = images[idx[rows]]
    if labels is None:
        return x0, t[rows], eps[rows]
    y = drop_labels(labels[idx], cfg.label_dropout, cfg.num_classes, generator=g)
    return x0, t[rows], eps[rows], y[rows]


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclass
class TrainResult:
    """What :func:`train` returns: the model, its EMA, the loss of every step (including steps
    done before a resume), the final step, and the speed of this run."""

    model: nn.Module
    ema: nn.Module
    losses: list[float] = field(default_factory=list)
    step: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    images: Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    data_root: str | None = None,
    time_limit: float | None = None,
    labels: Tensor | None = None,
) -> TrainResult:
    """Train the U-Net of ``cfg`` for ``cfg.steps`` steps; checkpoint to ``out_dir``.

    ``images`` (float ``(N, C, H, W)`` in [−1, 1]) default to :func:`~diffusion_lessons.training.config.load_images`;
    a class-conditional run (``cfg.num_classes > 0``) also takes their ``labels`` (``(N,)``,
    default :func:`~diffusion_lessons.training.config.training_labels`). With
    ``out_dir``, the state goes to ``out_dir/checkpoint.safetensors`` every
    ``cfg.checkpoint_every`` steps and at the end; an existing checkpoint is only continued with
    ``resume=True`` (and never silently overwritten otherwise). Under torchrun, call it in every
    process.

    ``time_limit`` (seconds, or None) ends the run early, at the first logging step (every
    ``cfg.log_every`` steps) at which this call has trained for that long; the checkpoint is
    written there, and ``resume=True`` continues on the same loss curve (how a GPU run that
    must fit 10-minute commands is split, ``gpu/README.md``).
    """
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be a number of seconds > 0 or None, got {time_limit!r}")
    rank, world, local_rank, own_group = distributed_context()
    try:
        if cfg.batch_size % world:
            raise ValueError(
                f"batch_size={cfg.batch_size} must be divisible by the {world} processes"
            )
        dev = training_device(device, local_rank)
        ckpt = checkpoint_file(out_dir, resume=resume)
        images = training_images(cfg, images, dev, data_root)
        labels = training_labels(cfg, labels, images.shape[0], dev, data_root)
        torch.manual_seed(cfg.seed)  # the model's initial weights
        model = UNet(cfg.unet_config())
        state = build_state(model, cfg, dev, world=world, resume_from=ckpt if resume else None)
        loss_fn = make_loss_fn(cfg, dev)
        return run_steps(
            state,
            images,
            loss_fn,
            cfg,
            ckpt,
            rank,
            world,
            progress=progress,
            time_limit=time_limit,
            labels=labels,
        )
    finally:
        if own_group:
            dist.destroy_process_group()


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


class _Progress:
    """The progress bar (rank 0): the last logged loss and the images per second since then."""

    def __init__(self, cfg: TrainConfig, step: int, show: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=cfg.steps,
            initial=step,
            desc=f"training {cfg.dataset}",
            leave=False,
            disable=not show,
            mininterval=0.5,
        )
        self.batch_size, self.mark_step = cfg.batch_size, step
        self.start = self.mark = time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        speed = (step - self.mark_step) * self.batch_size / max(now - self.mark, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{speed:.0f}")
        self.bar.update(step - self.mark_step)
        self.mark, self.mark_step = now, step

    def seconds(self, device: torch.device) -> float:
        """Seconds since the start, once the device has finished its queued work."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - self.start


def _out_of_time(
    log: _Progress, time_limit: float | None, world: int, device: torch.device
) -> bool:
    """Whether the run has used its ``time_limit``: rank 0 decides and tells every process, so
    all stop at the same step (every process must pass a ``time_limit``, or none)."""
    if time_limit is None:
        return False
    stop = torch.tensor([time.perf_counter() - log.start >= time_limit], device=device)
    if world > 1:
        dist.broadcast(stop, src=0)
    return bool(stop.item())


def run_steps(
    state: TrainState,
    images: Tensor,
    loss_fn: LossFn,
    cfg: TrainConfig,
    ckpt: Path | None = None,
    rank: int = 0,
    world: int = 1,
    *,
    progress: bool = True,
    time_limit: float | None = None,
    labels: Tensor | None = None,
) -> TrainResult:
    """Run :func:`~diffusion_lessons.training.optimization.train_step` from ``state.step`` to ``cfg.steps`` on ``images`` (on the device).

    Before each step: the dropout seed ``(seed, step, 2, rank)`` and this rank's share of the
    step's batch (:func:`step_batch`). Every ``log_every`` and ``checkpoint_every`` steps and at
    the end, the losses since the last time are averaged over the processes and kept; rank 0
    writes ``ckpt`` every ``checkpoint_every`` steps and at the end. With ``time_limit``
    (seconds), the run also ends at the first logging step after that long (every process
    stops at the same step: rank 0's clock decides), and the checkpoint is written there.
    ``labels`` (on the device) make the batches those of a class-conditional run.
    """
    log = _Progress(cfg, state.step, show=progress and rank == 0)
    first, pending = state.step, []
    state.model.train()
    try:
        while state.step < cfg.steps:
            torch.manual_seed(mix_seed(cfg.seed, state.step, 2, rank))  # this step's dropout
            try:
                batch = step_batch(images, state.step, cfg, rank, world, labels)
                pending.append(train_step(state, batch, loss_fn, cfg))
            except torch.OutOfMemoryError as err:
                raise oom_error(state, images, loss_fn, cfg, world, labels) from err
            s = state.step
            if _due(s, cfg.log_every, cfg.steps) or _due(s, cfg.checkpoint_every, cfg.steps):
                state.losses += mean_over_processes(torch.stack(pending).double(), world).tolist()
                pending.clear()
                log.update(s, state.losses[-1])
                out_of_time = _out_of_time(log, time_limit, world, images.device)
                due = _due(s, cfg.checkpoint_every, cfg.steps) or out_of_time
                if ckpt is not None and rank == 0 and due:
                    save_state(ckpt, cfg, state)
                if out_of_time:
                    break
        seconds = log.seconds(images.device)
        if world > 1:
            dist.barrier()  # rank 0 has finished writing before anyone returns
    finally:
        log.bar.close()
    state.model.eval()
    done = (state.step - first) * cfg.batch_size
    speed = done / seconds if seconds > 0 else math.nan
    return TrainResult(state.model, state.ema, state.losses, state.step, seconds, speed)


def oom_error(
    state: TrainState,
    images: Tensor,
    loss_fn: LossFn,
    cfg: TrainConfig,
    world: int = 1,
    labels: Tensor | None = None,
) -> RuntimeError:
    """The error to raise when a step ran out of memory: it names a batch size that fits.

    Probes eager forward and backward passes on the first rows of step 0's global batch, halving
    from this process's share (:func:`~diffusion_lessons.training.distributed.largest_fitting_batch`).
    """
    state.opt.zero_grad(set_to_none=True)
    fits = largest_fitting_batch(
        lambda b: loss_fn(
            state.net.eager, *(v[:b] for v in step_batch(images, 0, cfg, labels=labels))
        ).backward(),
        cfg.batch_size // world,
    )
    return RuntimeError(oom_message(cfg.batch_size, fits, world))
