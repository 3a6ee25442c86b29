"""One training step of the image trainer, as named parts: the learning rate (:func:`lr_at`), the
EMA update, AdamW, autocast and its gradient scaler, the loss function, compile-or-eager, and :func:`train_step` (what
``benchmarks/bench_train.py`` times) on a :class:`TrainState`."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from diffusion_lessons.noise.schedules import get_schedule
from diffusion_lessons.training import checkpoints
from diffusion_lessons.training.config import OBJECTIVES, RESUMABLE_FIELDS, TrainConfig
from diffusion_lessons.training.distributed import distribute

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


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype the forward pass autocasts to on ``device``: None (fp32) off CUDA.

    On CUDA, bf16 where the GPU has it (``torch.cuda.is_bf16_supported()``: Ampere and newer,
    the H100), else fp16 (Colab's T4, a Turing GPU), whose narrow exponent needs the gradient
    scaler of :func:`make_scaler`.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to :func:`amp_dtype` on CUDA (bf16, or fp16 without bf16), nothing elsewhere."""
    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler of a step: enabled only when the pass autocasts to fp16.

    fp16 gradients below about 6e-8 flush to zero, so the loss is multiplied by a large factor
    before ``backward`` and the gradients divided by it before the optimizer steps (a step whose
    gradients overflowed is skipped and the factor halved). bf16 and fp32 have fp32's exponent
    range and need no scaling: the scaler is then disabled and passes everything through.
    """
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (faster convolutions under bf16), contiguous elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


LossFn = Callable[..., Tensor]
"""``loss_fn(forward, x0, t, eps[, y]) → scalar``: the loss of one batch through ``forward``
(``y`` the labels of a class-conditional run)."""


def make_loss_fn(cfg: TrainConfig, device: torch.device) -> LossFn:
    """The engine's loss of one batch: ``OBJECTIVES[cfg.objective]`` under ``cfg.schedule``,
    with the inputs in :func:`memory_format` and the pass under :func:`autocast`."""
    objective = OBJECTIVES[cfg.objective]
    schedule = get_schedule(cfg.schedule)
    fmt = memory_format(device)

    def loss_fn(
        forward: nn.Module, x0: Tensor, t: Tensor, eps: Tensor, y: Tensor | None = None
    ) -> Tensor:
        with autocast(device):
            return objective(schedule, forward, x0.contiguous(memory_format=fmt), t, eps, y)

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
    net: Network,
    loss_fn: LossFn,
    batch: tuple[Tensor, ...],
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> Tensor:
    """``loss = loss_fn(net.forward, *batch)`` and ``loss.backward()``; returns ``loss``.

    With an enabled ``scaler`` the backward pass runs on ``scaler.scale(loss)`` (the returned
    loss is unscaled). If the compiled pass fails with anything but running out of memory, warn
    once, zero the gradients and redo the pass eagerly; the rest of the run stays eager.
    """

    def backward(loss: Tensor) -> None:
        (loss if scaler is None else scaler.scale(loss)).backward()

    try:
        loss = loss_fn(net.forward, *batch)
        backward(loss)
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
    backward(loss)
    return loss


@dataclass
class TrainState:
    """What the steps change: the weights, their EMA, AdamW, the forward pass, the number of
    steps done and the loss of each (what a checkpoint holds, but for ``net`` and ``scaler``),
    and the gradient scaler (:func:`make_scaler`; disabled unless the pass runs in fp16)."""

    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    net: Network
    step: int = 0
    losses: list[float] = field(default_factory=list)
    scaler: torch.amp.GradScaler = field(
        default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False)
    )


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
    return TrainState(model, ema, opt, net, step, losses, make_scaler(device))


def train_step(
    state: TrainState, batch: tuple[Tensor, ...], loss_fn: LossFn, cfg: TrainConfig
) -> Tensor:
    """Step ``state.step`` on ``batch = (x0, t, eps)`` (``(x0, t, eps, y)`` with labels); returns
    its loss (detached).

    Sets the learning rate (:func:`lr_at`), computes the loss and its gradient
    (:func:`backward_compiled_or_eager`, through ``state.scaler`` under fp16), clips the
    gradient's global norm to ``cfg.grad_clip`` (after unscaling), steps the optimizer (skipped
    by the scaler when an fp16 gradient overflowed), updates the EMA with ``cfg.ema_decay`` and
    counts the step. :func:`~diffusion_lessons.training.engine.train` runs it for every step,
    after the step's dropout seed and batch; the benchmark times it.
    """
    for group in state.opt.param_groups:
        group["lr"] = lr_at(state.step, cfg)
    state.opt.zero_grad(set_to_none=True)
    loss = backward_compiled_or_eager(state.net, loss_fn, batch, state.opt, state.scaler)
    state.scaler.unscale_(state.opt)  # a no-op unless the scaler is enabled
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(list(state.model.parameters()), cfg.grad_clip)
    state.scaler.step(state.opt)
    state.scaler.update()
    ema_update(state.ema, state.model, cfg.ema_decay)
    state.step += 1
    return loss.detach()


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
    :data:`~diffusion_lessons.training.config.RESUMABLE_FIELDS` (named in the error), another architecture or an unreadable file
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
