"""The image trainer: a fast path on a GPU, the same numbers on a CPU, resumable, multi-GPU.

:func:`train` trains a :class:`~diffusion_lessons.nets.unet.UNet` to predict ε (Ho et al. 2020) with
the loss that ``TrainConfig.objective`` names (:data:`OBJECTIVES`): ``"eps"`` is DDPM's
L_simple = E‖ε − ε̂‖² (:func:`l_simple`) and ``"vdm"`` is VDM's continuous-time diffusion loss
−½ λ'(t) ‖ε − ε̂‖² (:func:`vdm_loss`, Kingma et al. 2021), both per dimension. Both are the
library's losses (:mod:`~diffusion_lessons.objectives.simple`,
:mod:`~diffusion_lessons.objectives.continuous_time`) of the denoiser
``denoiser.FromEps(unet)``.

The U-Net is conditioned on the log-SNR λ (``cond`` the identity), not on t ∈ [0, 1]: a network
on t would need ``denoiser.schedule_time(schedule)``, a 60-step bisection per batch that recovers
the t the engine drew in the first place. On a CPU it cost 6.5% of a step of the ``tiny`` preset
(1.5 ms of 23 ms) and 0.1% of ``mnist-small``; on a GPU it would add some 600 small kernel
launches and host synchronisations (its range checks) to every step (an estimate, not measured).
Conditioned on λ, the network is a denoiser under any schedule. So that λ stays finite, t is drawn
on (0, 1] (:func:`step_batch`): at t = 0 the cosine and linear-β schedules have λ = +∞.

On CUDA the engine uses bf16 autocast, channels_last, fused AdamW and ``torch.compile`` (eager,
with one warning, where compilation fails); on a CPU it runs plain fp32 eager. The whole dataset
lives on the device; every random draw of step ``s`` comes from a generator seeded by
``(seed, s)``, so a resumed run continues on exactly the same loss curve. Under ``torchrun``
(WORLD_SIZE > 1) each process takes its share of every global batch and DistributedDataParallel
averages the gradients; rank 0 logs and writes checkpoints
(:mod:`~diffusion_lessons.training.checkpoints`).

The parts, in the order of this file:

- the objective: :func:`as_denoiser`, :func:`l_simple`, :func:`vdm_loss`, :data:`OBJECTIVES`;
- the run: :class:`TrainConfig`, :data:`PRESETS`, :func:`load_images`, :func:`training_images`;
- the batches: :func:`batch_indices`, :func:`step_batch`;
- the device and the processes: :func:`training_device`, :func:`distributed_context`,
  :func:`distribute`, :func:`mean_over_processes`;
- the step: :func:`lr_at`, :func:`ema_update`, :func:`make_optimizer`, :func:`autocast`,
  :func:`make_loss_fn`, :func:`compile_or_eager`, :func:`backward_compiled_or_eager`,
  :class:`TrainState`, :func:`build_state`, :func:`train_step` (what
  ``benchmarks/bench_train.py`` times);
- out of memory: :func:`largest_fitting_batch`, :func:`oom_message`, :func:`oom_error`;
- checkpoints: :func:`checkpoint_file`, :func:`save_state`, :func:`restore_state`;
- the loop: :func:`train`, :func:`run_steps`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from diffusion_lessons.checks import check_choice, check_positive_int
from diffusion_lessons.data import datasets
from diffusion_lessons.denoisers import denoiser
from diffusion_lessons.nets.unet import UNet, UNetConfig
from diffusion_lessons.noise.schedules import SCHEDULES, Schedule, get_schedule
from diffusion_lessons.objectives import continuous_time, simple
from diffusion_lessons.training import checkpoints

# ---------------------------------------------------------------------------------------------
# The objective: the loss of one batch, named once by ``TrainConfig.objective``.


def as_denoiser(model: nn.Module) -> denoiser.FromEps:
    """The engine's U-Net (an ε-network conditioned on λ) as a denoiser: ``FromEps(model)``.

    The one place that says how the engine's network is read; the losses below and
    ``cli eval`` use it.
    """
    return denoiser.FromEps(model)


def _per_dimension(per_example: Tensor, x0: Tensor) -> Tensor:
    return per_example.mean() / x0[0].numel()


def l_simple(schedule: Schedule, model: nn.Module, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """DDPM's L_simple in continuous time, per dimension: mean_b ‖ε_b − ε̂_θ(x_t, λ_b)‖² / D (scalar).

    :func:`~diffusion_lessons.objectives.simple.eps_loss_continuous` of the denoiser
    ``FromEps(model)`` (the U-Net is conditioned on λ), averaged over the batch and divided by
    D = C·H·W, the number the engine reports. ``x0, eps: (B, C, H, W)``, ``t: (B,)`` in (0, 1].
    Ho et al. 2020, eq. 14.
    """
    per_example = simple.eps_loss_continuous(x0, as_denoiser(model), schedule, t, eps)
    return _per_dimension(per_example, x0)


def vdm_loss(schedule: Schedule, model: nn.Module, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """VDM's continuous-time diffusion loss L_∞ in nats per dimension (scalar).

    :func:`~diffusion_lessons.objectives.continuous_time.continuous_diffusion_loss` (nats per
    example, summed over dimensions; −½ λ′(t) ‖ε − ε̂‖² in ε units) of ``FromEps(model)``,
    averaged over the batch and divided by D. Shapes as in :func:`l_simple`. Kingma et al. 2021,
    eq. 17.
    """
    per_example = continuous_time.continuous_diffusion_loss(
        x0, as_denoiser(model), schedule, t, eps
    )
    return _per_dimension(per_example, x0)


Objective = Callable[[Schedule, nn.Module, Tensor, Tensor, Tensor], Tensor]
OBJECTIVES: dict[str, Objective] = {"eps": l_simple, "vdm": vdm_loss}
"""``TrainConfig.objective`` → its loss ``(schedule, model, x0, t, eps) → scalar``."""


# ---------------------------------------------------------------------------------------------
# The run: its configuration and its data.


RESUMABLE_FIELDS = ("steps", "checkpoint_every", "log_every", "compile")
"""Fields that may change when a run is resumed; any other difference is refused."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint).

    Model: ``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``dropout`` (see
    :class:`~diffusion_lessons.nets.unet.UNetConfig`). Data: ``dataset`` (a key of
    :data:`~diffusion_lessons.data.datasets.DATASETS`), ``max_examples`` (the first N training images, or all). Objective:
    ``schedule`` (a key of :data:`~diffusion_lessons.noise.schedules.SCHEDULES`), ``objective`` (a
    key of :data:`OBJECTIVES`: the loss, named once). Optimisation: ``steps``, global
    ``batch_size``, AdamW ``lr`` after ``warmup_steps`` of linear warm-up (:func:`lr_at`),
    ``weight_decay``, ``grad_clip`` (global norm, or None), ``ema_decay``, ``seed``.
    Bookkeeping: ``checkpoint_every``, ``log_every`` steps; ``compile``: None means on CUDA only.
    """

    dataset: str = "mnist"
    max_examples: int | None = None
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (7,)
    dropout: float = 0.1
    schedule: str = "linear_log_snr"
    objective: str = "eps"
    steps: int = 20_000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 500
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    compile: bool | None = None

    def __post_init__(self) -> None:
        check_choice(self.dataset, tuple(datasets.DATASETS), name="dataset")
        check_choice(self.schedule, tuple(SCHEDULES), name="schedule")
        check_choice(self.objective, tuple(OBJECTIVES), name="objective")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            check_positive_int(getattr(self, name), name=name)
        if self.max_examples is not None:
            check_positive_int(self.max_examples, name="max_examples")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.objective == "vdm":
            ends = get_schedule(self.schedule).log_snr(torch.tensor([0.0, 1.0]))
            if not torch.isfinite(ends).all():
                raise ValueError(
                    f"objective 'vdm' needs a finite log-SNR at t = 0 and t = 1; schedule "
                    f"{self.schedule!r} has {ends.tolist()}: use 'linear_log_snr'"
                )
        self.unet_config()  # validates the model fields

    def unet_config(self) -> UNetConfig:
        """The :class:`~diffusion_lessons.nets.unet.UNetConfig` of this run's model."""
        channels, side, _ = datasets.DATASETS[self.dataset].shape
        return UNetConfig(
            image_size=side,
            in_channels=channels,
            ch=self.ch,
            ch_mult=self.ch_mult,
            num_res_blocks=self.num_res_blocks,
            attn_resolutions=self.attn_resolutions,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown TrainConfig fields {sorted(set(d) - known)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


PRESETS: dict[str, TrainConfig] = {
    "mnist": TrainConfig(dataset="mnist"),
    "mnist-small": TrainConfig(
        dataset="mnist", ch=32, num_res_blocks=1, steps=5000, warmup_steps=200, lr=5e-4
    ),
    "fashion_mnist": TrainConfig(dataset="fashion_mnist"),
    "tiny": TrainConfig(
        dataset="digits",
        max_examples=256,
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        steps=4,
        batch_size=16,
        lr=1e-3,
        warmup_steps=2,
        ema_decay=0.9,
        checkpoint_every=2,
        log_every=1,
    ),
}
"""Named configurations for the command line (``--config NAME``); no config files are executed."""


def load_images(cfg: TrainConfig, split: str = "train", root: str | None = None) -> Tensor:
    """The images of ``cfg.dataset`` (:func:`~diffusion_lessons.data.datasets.load_images`):
    float32 ``(N, C, H, W)`` in [−1, 1]; the training split cut to ``cfg.max_examples`` images."""
    limit = cfg.max_examples if split == "train" else None
    return datasets.load_images(cfg.dataset, split, root=root, limit=limit)


def training_images(
    cfg: TrainConfig, images: Tensor | None, device: torch.device, root: str | None = None
) -> Tensor:
    """``images`` (default :func:`load_images`) checked against ``cfg.dataset``, as float32 on
    ``device``: ``(N, C, H, W)``."""
    images = load_images(cfg, root=root) if images is None else images
    channels, side, _ = datasets.DATASETS[cfg.dataset].shape
    if images.ndim != 4 or tuple(images.shape[1:]) != (channels, side, side):
        raise ValueError(
            f"images must have shape (N, {channels}, {side}, {side}) for "
            f"{cfg.dataset!r}, got {tuple(images.shape)}"
        )
    return images.to(device, torch.float32)


# ---------------------------------------------------------------------------------------------
# The batches: every random draw of a step is seeded by (seed, step).


def _mix(*ints: int) -> int:
    """A 63-bit seed from a tuple of integers (splitmix-style), so streams do not overlap."""
    h = 0x9E3779B97F4A7C15
    for i in ints:
        h = ((h ^ (i & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))


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


def step_batch(
    images: Tensor, step: int, cfg: TrainConfig, rank: int = 0, world: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x0, t, eps)`` of this rank's share of the global batch of ``step``.

    The global batch (indices; t ~ U(0, 1] as 1 − U[0, 1), so that λ(t) is finite; ε ~ N(0, I))
    is drawn identically on every rank from generators seeded by ``(seed, step)``; rank r keeps
    rows r·B/W … (r + 1)·B/W − 1, so W processes compute exactly the gradient of one process on
    the whole batch.
    """
    b = cfg.batch_size // world
    rows = slice(rank * b, (rank + 1) * b)
    idx = batch_indices(step, cfg.batch_size, images.shape[0], cfg.seed)[rows]
    x0 = images[idx.to(images.device)]
    g = torch.Generator(device=images.device).manual_seed(_mix(cfg.seed, step, 1))
    t = 1.0 - torch.rand(cfg.batch_size, generator=g, device=images.device)[rows]
    eps = torch.randn((cfg.batch_size, *images.shape[1:]), generator=g, device=images.device)
    return x0, t, eps[rows]


# ---------------------------------------------------------------------------------------------
# The device and the processes.


def training_device(device: torch.device | str | None = None, local_rank: int = 0) -> torch.device:
    """``device``, or by default ``cuda:<local_rank>`` when CUDA is available and the CPU otherwise.

    On CUDA the GPU becomes the current device and TF32 is allowed for what stays in fp32.
    """
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def distributed_context() -> tuple[int, int, int, bool]:
    """``(rank, world_size, local_rank, initialised_here)`` from torchrun's environment variables.

    With WORLD_SIZE > 1 the default process group is initialised (NCCL on CUDA, gloo on a CPU)
    unless it already is.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0, False
    here = not dist.is_initialized()
    if here:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    return rank, world, int(os.environ.get("LOCAL_RANK", rank)), here


def distribute(model: nn.Module, device: torch.device, world: int = 1) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when ``world > 1`` (gradients averaged)."""
    if world == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def mean_over_processes(values: Tensor, world: int = 1) -> Tensor:
    """The mean of ``values`` over the ``world`` processes (all-reduced in place; itself if 1)."""
    if world > 1:
        dist.all_reduce(values)
        values /= world
    return values


# ---------------------------------------------------------------------------------------------
# The step: learning rate, forward and backward (compiled or eager), AdamW, EMA.


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of step ``step`` (from 0): linear warm-up over ``cfg.warmup_steps``
    steps to ``cfg.lr``, then constant: lr · min(1, (step + 1) / warmup_steps)."""
    if not cfg.warmup_steps:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """θ_ema ← decay · θ_ema + (1 − decay) · θ for every parameter, in place."""
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW (fused kernels on CUDA) with the run's learning rate and weight decay."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",
    )


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (faster convolutions under bf16), contiguous elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


LossFn = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]
"""``loss_fn(forward, x0, t, eps) → scalar``: the loss of one batch through ``forward``."""


def make_loss_fn(cfg: TrainConfig, device: torch.device) -> LossFn:
    """The engine's loss of one batch: ``OBJECTIVES[cfg.objective]`` under ``cfg.schedule``,
    with the inputs in :func:`memory_format` and the pass under :func:`autocast`."""
    objective = OBJECTIVES[cfg.objective]
    schedule = get_schedule(cfg.schedule)
    fmt = memory_format(device)

    def loss_fn(forward: nn.Module, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        with autocast(device):
            return objective(schedule, forward, x0.contiguous(memory_format=fmt), t, eps)

    return loss_fn


@dataclass
class Network:
    """The forward pass of a step: ``eager`` (the model, or its DDP wrapper) and, when compiling,
    ``compiled = torch.compile(eager)``, dropped for the rest of the run if it ever fails."""

    eager: nn.Module
    compiled: Callable[..., Tensor] | None = None

    @property
    def forward(self) -> Callable[..., Tensor]:
        """The compiled forward pass while there is one, else the eager one."""
        return self.eager if self.compiled is None else self.compiled


def compile_or_eager(net: nn.Module, enabled: bool) -> Network:
    """``net`` with ``torch.compile(net)`` beside it when ``enabled`` (compilation is lazy)."""
    return Network(net, torch.compile(net) if enabled else None)


def backward_compiled_or_eager(
    net: Network, loss_fn: LossFn, batch: tuple[Tensor, Tensor, Tensor], opt: torch.optim.Optimizer
) -> Tensor:
    """``loss = loss_fn(net.forward, *batch)`` and ``loss.backward()``; returns ``loss``.

    If the compiled pass fails with anything but running out of memory, warn once, zero the
    gradients and redo the pass eagerly; the rest of the run stays eager.
    """
    try:
        loss = loss_fn(net.forward, *batch)
        loss.backward()
        return loss
    except torch.OutOfMemoryError:
        raise
    except Exception as err:
        if net.compiled is None:
            raise
        warnings.warn(
            f"torch.compile failed ({type(err).__name__}: {err}); training eagerly", stacklevel=2
        )
    net.compiled = None
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net.forward, *batch)
    loss.backward()
    return loss


@dataclass
class TrainState:
    """What the steps change: the weights, their EMA, AdamW, the forward pass, the number of
    steps done and the loss of each (what a checkpoint holds, but for ``net``)."""

    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    net: Network
    step: int = 0
    losses: list[float] = field(default_factory=list)


def build_state(
    model: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    *,
    world: int = 1,
    resume_from: Path | None = None,
) -> TrainState:
    """The state of a run of ``cfg`` around ``model``, new or resumed from ``resume_from``.

    ``model`` moves to ``device`` in :func:`memory_format`; the EMA starts as its copy; the
    optimizer is :func:`make_optimizer`'s. After the resume, the forward pass is wrapped for
    DistributedDataParallel when ``world > 1`` and compiled when ``cfg.compile`` says so (None:
    on CUDA only).
    """
    model = model.to(device, memory_format=memory_format(device))
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = make_optimizer(model, cfg, device)
    step, losses = 0, []
    if resume_from is not None:
        step, losses = restore_state(resume_from, cfg, model, ema, opt)
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    net = compile_or_eager(distribute(model, device, world), use_compile)
    return TrainState(model, ema, opt, net, step, losses)


def train_step(
    state: TrainState, batch: tuple[Tensor, Tensor, Tensor], loss_fn: LossFn, cfg: TrainConfig
) -> Tensor:
    """Step ``state.step`` on ``batch = (x0, t, eps)``; returns its loss (detached).

    Sets the learning rate (:func:`lr_at`), computes the loss and its gradient
    (:func:`backward_compiled_or_eager`), clips the gradient's global norm to ``cfg.grad_clip``,
    steps the optimizer, updates the EMA with ``cfg.ema_decay`` and counts the step. :func:`train`
    runs it for every step, after the step's dropout seed and batch; the benchmark times it.
    """
    for group in state.opt.param_groups:
        group["lr"] = lr_at(state.step, cfg)
    state.opt.zero_grad(set_to_none=True)
    loss = backward_compiled_or_eager(state.net, loss_fn, batch, state.opt)
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(list(state.model.parameters()), cfg.grad_clip)
    state.opt.step()
    ema_update(state.ema, state.model, cfg.ema_decay)
    state.step += 1
    return loss.detach()


# ---------------------------------------------------------------------------------------------
# Out of memory.


def largest_fitting_batch(try_batch: Callable[[int], object], batch_size: int) -> int:
    """Halve ``batch_size`` until ``try_batch(b)`` runs without ``torch.OutOfMemoryError``.

    Returns the first size that fits (0 if even 1 does not).
    """
    b = batch_size
    while b >= 1:
        try:
            try_batch(b)
            return b
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            b //= 2
    return 0


def oom_message(batch_size: int, fits_per_process: int, world: int = 1) -> str:
    """The error text for running out of GPU memory at global ``batch_size``."""
    if fits_per_process == 0:
        return (
            f"out of GPU memory at batch_size={batch_size}, and even 1 image per GPU does not "
            "fit: use a smaller model (ch, num_res_blocks) or a larger GPU"
        )
    return (
        f"out of GPU memory at batch_size={batch_size} ({batch_size // world} per GPU); "
        f"a forward and backward pass fits with {fits_per_process} per GPU: try "
        f"--batch-size {fits_per_process * world}"
    )


def oom_error(
    state: TrainState, images: Tensor, loss_fn: LossFn, cfg: TrainConfig, world: int = 1
) -> RuntimeError:
    """The error to raise when a step ran out of memory: it names a batch size that fits.

    Probes eager forward and backward passes on the first rows of step 0's global batch, halving
    from this process's share (:func:`largest_fitting_batch`).
    """
    state.opt.zero_grad(set_to_none=True)
    fits = largest_fitting_batch(
        lambda b: loss_fn(state.net.eager, *(v[:b] for v in step_batch(images, 0, cfg))).backward(),
        cfg.batch_size // world,
    )
    return RuntimeError(oom_message(cfg.batch_size, fits, world))


# ---------------------------------------------------------------------------------------------
# Checkpoints: one training-state file (:mod:`~diffusion_lessons.training.checkpoints`) in ``out_dir``.

CHECKPOINT_NAME = "checkpoint.safetensors"


def checkpoint_file(out_dir: str | os.PathLike | None, *, resume: bool) -> Path | None:
    """``out_dir/checkpoint.safetensors`` (None without ``out_dir``).

    An existing file is only continued with ``resume=True`` and never silently overwritten; a
    resume without a file raises ``FileNotFoundError``.
    """
    ckpt = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if ckpt is not None and ckpt.exists() and not resume:
        raise ValueError(f"{ckpt} exists: pass resume=True (--resume) or choose another out_dir")
    if resume and (ckpt is None or not ckpt.exists()):
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt}")
    return ckpt


def save_state(path: str | os.PathLike, cfg: TrainConfig, state: TrainState) -> Path:
    """Write ``state`` (``model/…``, ``ema/…``, the optimizer, the losses) and ``cfg`` to ``path``.

    Metadata: the format, ``config`` (JSON of ``cfg``), ``architecture`` (UNet), ``unet`` (its
    config) and ``step``; see :func:`~diffusion_lessons.training.checkpoints.save_training_state`.
    """
    return checkpoints.save_training_state(
        path,
        modules={"model": state.model, "ema": state.ema},
        opt=state.opt,
        step=state.step,
        losses=state.losses,
        config=cfg.to_dict(),
        metadata={"architecture": "UNet", "unet": json.dumps(cfg.unet_config().to_dict())},
    )


def restore_state(
    path: str | os.PathLike,
    cfg: TrainConfig,
    model: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
) -> tuple[int, list[float]]:
    """Load a checkpoint into ``model``, ``ema`` and ``opt``; return ``(step, losses)``.

    Everything is checked before anything is copied: a configuration that differs outside
    :data:`RESUMABLE_FIELDS` (named in the error), another architecture or an unreadable file
    raise ``ValueError`` and leave the modules untouched.
    """
    ckpt = checkpoints.read_training_state(path)
    stored = TrainConfig.from_dict(ckpt.config)
    checkpoints.check_resumable(
        stored.to_dict(), cfg.to_dict(), may_differ=RESUMABLE_FIELDS, path=path
    )
    return checkpoints.load_training_state(
        ckpt, modules={"model": model, "ema": ema}, opt=opt, path=path
    )


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
) -> TrainResult:
    """Train the U-Net of ``cfg`` for ``cfg.steps`` steps; checkpoint to ``out_dir``.

    ``images`` (float ``(N, C, H, W)`` in [−1, 1]) default to :func:`load_images`. With
    ``out_dir``, the state goes to ``out_dir/checkpoint.safetensors`` every
    ``cfg.checkpoint_every`` steps and at the end; an existing checkpoint is only continued with
    ``resume=True`` (and never silently overwritten otherwise). Under torchrun, call it in every
    process.
    """
    rank, world, local_rank, own_group = distributed_context()
    try:
        if cfg.batch_size % world:
            raise ValueError(
                f"batch_size={cfg.batch_size} must be divisible by the {world} processes"
            )
        dev = training_device(device, local_rank)
        ckpt = checkpoint_file(out_dir, resume=resume)
        images = training_images(cfg, images, dev, data_root)
        torch.manual_seed(cfg.seed)  # the model's initial weights
        model = UNet(cfg.unet_config())
        state = build_state(model, cfg, dev, world=world, resume_from=ckpt if resume else None)
        loss_fn = make_loss_fn(cfg, dev)
        return run_steps(state, images, loss_fn, cfg, ckpt, rank, world, progress=progress)
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
) -> TrainResult:
    """Run :func:`train_step` from ``state.step`` to ``cfg.steps`` on ``images`` (on the device).

    Before each step: the dropout seed ``(seed, step, 2, rank)`` and this rank's share of the
    step's batch (:func:`step_batch`). Every ``log_every`` and ``checkpoint_every`` steps and at
    the end, the losses since the last time are averaged over the processes and kept; rank 0
    writes ``ckpt`` every ``checkpoint_every`` steps and at the end.
    """
    log = _Progress(cfg, state.step, show=progress and rank == 0)
    first, pending = state.step, []
    state.model.train()
    try:
        while state.step < cfg.steps:
            torch.manual_seed(_mix(cfg.seed, state.step, 2, rank))  # this step's dropout
            try:
                batch = step_batch(images, state.step, cfg, rank, world)
                pending.append(train_step(state, batch, loss_fn, cfg))
            except torch.OutOfMemoryError as err:
                raise oom_error(state, images, loss_fn, cfg, world) from err
            s = state.step
            if _due(s, cfg.log_every, cfg.steps) or _due(s, cfg.checkpoint_every, cfg.steps):
                state.losses += mean_over_processes(torch.stack(pending).double(), world).tolist()
                pending.clear()
                log.update(s, state.losses[-1])
                if ckpt is not None and rank == 0 and _due(s, cfg.checkpoint_every, cfg.steps):
                    save_state(ckpt, cfg, state)
        seconds = log.seconds(images.device)
        if world > 1:
            dist.barrier()  # rank 0 has finished writing before anyone returns
    finally:
        log.bar.close()
    state.model.eval()
    done = (state.step - first) * cfg.batch_size
    speed = done / seconds if seconds > 0 else math.nan
    return TrainResult(state.model, state.ema, state.losses, state.step, seconds, speed)
