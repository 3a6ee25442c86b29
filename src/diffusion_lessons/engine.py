"""The image trainer: a fast path on a GPU, the same numbers on a CPU, resumable, multi-GPU.

:func:`train` trains a :class:`~diffusion_lessons.unet.UNet` to predict ε (Ho et al. 2020) with
the loss named by ``TrainConfig.objective``: ``"eps"`` is DDPM's L_simple = E‖ε − ε̂‖² and
``"vdm"`` is VDM's continuous-time diffusion loss −½ λ'(t) ‖ε − ε̂‖² (Kingma et al. 2021), both per
dimension (:func:`eps_loss`). On CUDA it uses bf16 autocast, channels_last, fused AdamW and
``torch.compile`` (eager, with one warning, where compilation fails); on a CPU it runs plain
fp32 eager. The whole dataset lives on the device; every random draw of step ``s`` comes from a
generator seeded by ``(seed, s)``, so a resumed run continues on exactly the same loss curve.
Under ``torchrun`` (WORLD_SIZE > 1) each process takes its share of every global batch and
DistributedDataParallel averages the gradients; rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import functools
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

from .checks import check_choice, check_positive_int
from .data import load_digits, load_mnist, scale_images
from .schedules import SCHEDULES, get_schedule
from .unet import UNet, UNetConfig
from .vlb import log_snr_and_derivative

DATASETS = {"mnist": (1, 28, 256), "fashion_mnist": (1, 28, 256), "digits": (1, 8, 17)}
"""Dataset name → (channels, side, number of pixel levels ``bins``)."""

OBJECTIVES = ("eps", "vdm")
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "log_every", "compile")
"""Fields that may change when a run is resumed; any other difference is refused."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint).

    Model: ``ch``, ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``dropout`` (see
    :class:`~diffusion_lessons.unet.UNetConfig`). Data: ``dataset`` (a key of
    :data:`DATASETS`), ``max_examples`` (the first N training images, or all). Objective:
    ``schedule`` (a key of :data:`~diffusion_lessons.schedules.SCHEDULES`), ``objective``
    (``"eps"`` or ``"vdm"``). Optimisation: ``steps``, global ``batch_size``, AdamW ``lr`` after
    ``warmup_steps`` of linear warm-up, ``weight_decay``, ``grad_clip`` (global norm, or None),
    ``ema_decay``, ``seed``. Bookkeeping: ``checkpoint_every``, ``log_every`` steps;
    ``compile``: None means on CUDA only.
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
        check_choice(self.dataset, tuple(DATASETS), name="dataset")
        check_choice(self.schedule, tuple(SCHEDULES), name="schedule")
        check_choice(self.objective, OBJECTIVES, name="objective")
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
        """The :class:`~diffusion_lessons.unet.UNetConfig` of this run's model."""
        channels, side, _ = DATASETS[self.dataset]
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


def config_differences(stored: TrainConfig, new: TrainConfig) -> list[str]:
    """The fields (outside :data:`RESUMABLE_FIELDS`) where two configs differ, as 'name: a → b'."""
    a, b = stored.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} → {b[k]!r}" for k in a if k not in RESUMABLE_FIELDS and a[k] != b[k]]


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
    """The images of ``cfg.dataset``: float32 ``(N, C, H, W)`` in [−1, 1] (first ``max_examples``)."""
    if cfg.dataset == "digits":
        images, _ = load_digits(split)
    else:
        raw, _ = load_mnist(split, name=cfg.dataset, root=root)
        images = scale_images(raw)
    return images[: cfg.max_examples] if split == "train" else images


# ---------------------------------------------------------------------------------------------
# The loss and the per-step randomness.


def eps_loss(
    model: nn.Module,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    log_snr: Tensor,
    weight: Tensor | None = None,
) -> Tensor:
    """Weighted ε-prediction loss, per dimension: mean_b w_b ‖ε_b − ε̂_θ(x_t, t_b)‖² / D (scalar).

    x_t = √ᾱ x_0 + σ ε with ᾱ = sigmoid(λ), σ² = sigmoid(−λ); ``x0, eps: (B, C, H, W)``,
    ``t, log_snr: (B,)``. ``weight`` None gives DDPM's L_simple (Ho et al. 2020, eq. 14);
    w = −½ λ'(t) gives VDM's continuous-time diffusion loss (Kingma et al. 2021, eq. 17) in nats
    per dimension.
    """
    ab = torch.sigmoid(log_snr)[:, None, None, None]
    xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps
    sq = (eps - model(xt, t).float()).pow(2).flatten(1).mean(1)
    return (sq if weight is None else weight * sq).mean()


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

    The global batch (indices, t ~ U[0, 1], ε ~ N(0, I)) is drawn identically on every rank from
    generators seeded by ``(seed, step)``; rank r keeps rows r·B/W … (r + 1)·B/W − 1, so W
    processes compute exactly the gradient of one process on the whole batch.
    """
    b = cfg.batch_size // world
    rows = slice(rank * b, (rank + 1) * b)
    idx = batch_indices(step, cfg.batch_size, images.shape[0], cfg.seed)[rows]
    x0 = images[idx.to(images.device)]
    g = torch.Generator(device=images.device).manual_seed(_mix(cfg.seed, step, 1))
    t = torch.rand(cfg.batch_size, generator=g, device=images.device)[rows]
    eps = torch.randn((cfg.batch_size, *images.shape[1:]), generator=g, device=images.device)
    return x0, t, eps[rows]


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


# ---------------------------------------------------------------------------------------------
# Checkpoints: one safetensors file with the weights, the EMA, the optimizer state, the losses.

CHECKPOINT_FORMAT = "diffusion_lessons.engine/1"
CHECKPOINT_NAME = "checkpoint.safetensors"


def save_training_state(
    path: str | os.PathLike,
    cfg: TrainConfig,
    model: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    losses: list[float],
) -> Path:
    """Write the whole training state to ``path`` atomically (temporary file, then rename).

    Tensors: ``model/…``, ``ema/…``, ``opt/<param index>/<state name>``, ``losses`` (float64,
    one per step done); metadata: the format, ``config`` (JSON of ``cfg``), ``unet`` and ``step``.
    No pickle anywhere.
    """
    import json

    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema/{k}": v for k, v in ema.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"opt/{i}/{name}"] = torch.as_tensor(value)
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "architecture": "UNet",
        "config": json.dumps(cfg.to_dict()),
        "unet": json.dumps(cfg.unet_config().to_dict()),
        "step": str(step),
    }
    from .train import write_safetensors

    return write_safetensors(tensors, path, meta)


def read_checkpoint(path: str | os.PathLike) -> tuple[TrainConfig, int, dict[str, Tensor]]:
    """Read an engine checkpoint: ``(config, step, tensors)``; nothing is modified.

    Raises ``FileNotFoundError`` when there is no file, and ``ValueError`` when it is not a
    readable safetensors file (e.g. truncated) or was not written by :func:`save_training_state`.
    """
    import json

    from .train import read_safetensors

    meta, tensors = read_safetensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a training-engine checkpoint (format {meta.get('format')!r}, "
            f"architecture {meta.get('architecture', '?')!r}); expected {CHECKPOINT_FORMAT!r}"
        )
    return TrainConfig.from_dict(json.loads(meta["config"])), int(meta["step"]), tensors


def _check_state(
    prefix: str, module_state: dict[str, Tensor], tensors: dict[str, Tensor], path: Path
) -> dict[str, Tensor]:
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = (
        sorted(set(module_state) - set(state)),
        sorted(set(state) - set(module_state)),
    )
    wrong = [k for k in module_state if k in state and state[k].shape != module_state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} holds weights for another architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    return state


def restore_training_state(
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
    path = Path(path)
    stored, step, tensors = read_checkpoint(path)
    diff = config_differences(stored, cfg)
    if diff:
        raise ValueError(
            f"cannot resume from {path}: the configuration differs in " + "; ".join(diff)
        )
    model_state = _check_state("model/", model.state_dict(), tensors, path)
    ema_state = _check_state("ema/", ema.state_dict(), tensors, path)
    opt_sd = opt.state_dict()
    opt_state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, i, name = key.split("/")
            opt_state.setdefault(int(i), {})[name] = value
    if step > 0 and len(opt_state) != sum(len(g["params"]) for g in opt_sd["param_groups"]):
        raise ValueError(f"{path} holds optimizer state for another architecture")
    model.load_state_dict(model_state)
    ema.load_state_dict(ema_state)
    opt.load_state_dict({"state": opt_state, "param_groups": opt_sd["param_groups"]})
    return step, tensors["losses"].tolist()


# ---------------------------------------------------------------------------------------------
# The training loop.


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
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ckpt = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if ckpt is not None and ckpt.exists() and not resume:
        raise ValueError(f"{ckpt} exists: pass resume=True (--resume) or choose another out_dir")
    if resume and (ckpt is None or not ckpt.exists()):
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt}")
    images = load_images(cfg, root=data_root) if images is None else images
    channels, side, _ = DATASETS[cfg.dataset]
    if images.ndim != 4 or tuple(images.shape[1:]) != (channels, side, side):
        raise ValueError(
            f"images must have shape (N, {channels}, {side}, {side}) for "
            f"{cfg.dataset!r}, got {tuple(images.shape)}"
        )
    images = images.to(dev, torch.float32)
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format

    torch.manual_seed(cfg.seed)
    model = UNet(cfg.unet_config()).to(dev, memory_format=fmt)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = make_optimizer(model, cfg, dev)
    step, losses = 0, []
    if resume:
        step, losses = restore_training_state(ckpt, cfg, model, ema, opt)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    use_compile = cfg.compile if cfg.compile is not None else dev.type == "cuda"
    fwd = torch.compile(net) if use_compile else net
    schedule = get_schedule(cfg.schedule)
    params, ema_params = list(model.parameters()), list(ema.parameters())

    def loss_of(forward: nn.Module, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        log_snr = schedule.log_snr_fn(t.double()).float()
        weight = None
        if cfg.objective == "vdm":
            weight = -0.5 * log_snr_and_derivative(schedule, t)[1].float()
        with autocast(dev):
            return eps_loss(forward, x0.contiguous(memory_format=fmt), t, eps, log_snr, weight)

    def one_step(s: int) -> Tensor:
        nonlocal fwd
        for group in opt.param_groups:
            group["lr"] = (
                cfg.lr * min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
            )
        torch.manual_seed(_mix(cfg.seed, s, 2, rank))  # dropout
        x0, t, eps = step_batch(images, s, cfg, rank, world)
        opt.zero_grad(set_to_none=True)
        try:
            loss = loss_of(fwd, x0, t, eps)
            loss.backward()
        except torch.OutOfMemoryError:
            raise
        except Exception as err:
            if fwd is net:
                raise
            warnings.warn(
                f"torch.compile failed ({type(err).__name__}: {err}); training eagerly",
                stacklevel=2,
            )
            fwd = net
            opt.zero_grad(set_to_none=True)
            loss = loss_of(fwd, x0, t, eps)
            loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - cfg.ema_decay)
        return loss.detach()

    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc=f"training {cfg.dataset}",
        leave=False,
        disable=not progress or rank != 0,
        mininterval=0.5,
    )
    pending: list[Tensor] = []
    start = mark = time.perf_counter()
    first, mark_step = step, step
    model.train()
    try:
        while step < cfg.steps:
            try:
                pending.append(one_step(step))
            except torch.OutOfMemoryError as err:
                opt.zero_grad(set_to_none=True)
                fits = largest_fitting_batch(
                    lambda b: loss_of(net, *(v[:b] for v in step_batch(images, 0, cfg))).backward(),
                    cfg.batch_size // world,
                )
                raise RuntimeError(oom_message(cfg.batch_size, fits, world)) from err
            step += 1
            if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == cfg.steps:
                values = torch.stack(pending).double()
                if world > 1:
                    dist.all_reduce(values)
                    values /= world
                losses += values.tolist()
                pending.clear()
                now = time.perf_counter()
                speed = (step - mark_step) * cfg.batch_size / max(now - mark, 1e-9)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{speed:.0f}")
                bar.update(step - mark_step)
                mark, mark_step = now, step
                if (
                    ckpt is not None
                    and rank == 0
                    and (step % cfg.checkpoint_every == 0 or step == cfg.steps)
                ):
                    save_training_state(ckpt, cfg, model, ema, opt, step, losses)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        if world > 1:
            dist.barrier()  # rank 0 has finished writing before anyone returns
    finally:
        bar.close()
        if own_group:
            dist.destroy_process_group()
    model.eval()
    done = (step - first) * cfg.batch_size
    return TrainResult(
        model, ema, losses, step, seconds, done / seconds if seconds > 0 else math.nan
    )
