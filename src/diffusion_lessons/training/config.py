"""The image trainer's run: its configuration (:class:`TrainConfig`, the named :data:`PRESETS`),
its loss, named once by ``TrainConfig.objective`` (:data:`OBJECTIVES`: ``"eps"`` is DDPM's L_simple,
``"vdm"`` VDM's continuous-time L_∞, both the library's losses of the denoiser
:func:`as_denoiser`, per dimension), and its data (:func:`load_images`, :func:`training_images`).

The U-Net is conditioned on the log-SNR λ (``cond`` the identity), not on t ∈ [0, 1]: a network
on t would need ``denoiser.schedule_time(schedule)``, a 60-step bisection per batch that recovers
the t the engine drew in the first place. On a CPU it cost 6.5% of a step of the ``tiny`` preset
(1.5 ms of 23 ms) and 0.1% of ``mnist-small``. Conditioned on λ, the network is a denoiser under
any schedule.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from diffusion_lessons.checks import check_choice, check_image_labels, check_positive_int
from diffusion_lessons.data import datasets
from diffusion_lessons.denoisers import denoiser
from diffusion_lessons.guidance.guided import Labelled
from diffusion_lessons.nets.unet import UNetConfig
from diffusion_lessons.noise.schedules import SCHEDULES, Schedule, get_schedule
from diffusion_lessons.objectives import continuous_time, simple

# ---------------------------------------------------------------------------------------------
# The objective: the loss of one batch, named once by ``TrainConfig.objective``.


def as_denoiser(model: nn.Module, y: Tensor | int | None = None) -> denoiser.FromEps:
    """The engine's U-Net (an ε-network conditioned on λ) as a denoiser: ``FromEps(model)``.

    A class-conditional U-Net is read at the labels ``y``: ``(B,)`` labels of one batch (the
    losses below), or one label for every row (:func:`unconditional_label` for its
    unconditional half, through :class:`~diffusion_lessons.guidance.guided.Labelled`). The one
    place that says how the engine's network is read; the losses below, ``cli eval`` and
    :mod:`~diffusion_lessons.training.pretrained` use it.
    """
    if y is None:
        return denoiser.FromEps(model)
    if isinstance(y, int):
        return denoiser.FromEps(Labelled(model, y))
    return denoiser.FromEps(functools.partial(model, y=y))


def unconditional_label(model: nn.Module) -> int | None:
    """The label that reads ``model`` as an unconditional model: the null label C of a
    class-conditional U-Net with C classes (trained with label dropout), None for an
    unconditional U-Net. A conditional checkpoint's bits/dim are those of this model."""
    return getattr(model, "num_classes", None)


def _per_dimension(per_example: Tensor, x0: Tensor) -> Tensor:
    return per_example.mean() / x0[0].numel()


def l_simple(
    schedule: Schedule,
    model: nn.Module,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    y: Tensor | None = None,
) -> Tensor:
    """DDPM's L_simple in continuous time, per dimension: mean_b ‖ε_b − ε̂_θ(x_t, λ_b)‖² / D (scalar).

    :func:`~diffusion_lessons.objectives.simple.eps_loss_continuous` of the denoiser
    ``FromEps(model)`` (the U-Net is conditioned on λ), averaged over the batch and divided by
    D = C·H·W, the number the engine reports. ``x0, eps: (B, C, H, W)``, ``t: (B,)`` in (0, 1],
    ``y: (B,)`` the labels of a class-conditional model (:func:`as_denoiser`). Ho et al. 2020,
    eq. 14.
    """
    per_example = simple.eps_loss_continuous(x0, as_denoiser(model, y), schedule, t, eps)
    return _per_dimension(per_example, x0)


def vdm_loss(
    schedule: Schedule,
    model: nn.Module,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    y: Tensor | None = None,
) -> Tensor:
    """VDM's continuous-time diffusion loss L_∞ in nats per dimension (scalar).

    :func:`~diffusion_lessons.objectives.continuous_time.continuous_diffusion_loss` (nats per
    example, summed over dimensions; −½ λ′(t) ‖ε − ε̂‖² in ε units) of ``FromEps(model)``,
    averaged over the batch and divided by D. Shapes as in :func:`l_simple`. Kingma et al. 2021,
    eq. 17.
    """
    per_example = continuous_time.continuous_diffusion_loss(
        x0, as_denoiser(model, y), schedule, t, eps
    )
    return _per_dimension(per_example, x0)


Objective = Callable[..., Tensor]
OBJECTIVES: dict[str, Objective] = {"eps": l_simple, "vdm": vdm_loss}
"""``TrainConfig.objective`` → its loss ``(schedule, model, x0, t, eps, y=None) → scalar``."""


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
    ``batch_size``, AdamW ``lr`` after ``warmup_steps`` of linear warm-up (:func:`~diffusion_lessons.training.optimization.lr_at`),
    ``weight_decay``, ``grad_clip`` (global norm, or None), ``ema_decay``, ``seed``.
    Bookkeeping: ``checkpoint_every``, ``log_every`` steps; ``compile``: None means on CUDA only.
    Labels: ``num_classes`` 0 trains an unconditional model; the data set's number of classes
    trains ε̂_θ(x_t, λ, y) on the training labels, each replaced by the null label with
    probability ``label_dropout`` (classifier-free guidance, Ho & Salimans 2022, who use 0.1 or
    0.2), so that one network is both the conditional and the unconditional model.
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
    num_classes: int = 0
    label_dropout: float = 0.0

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
        self._check_label_fields()
        self.unet_config()  # validates the model fields

    def _check_label_fields(self) -> None:
        classes = datasets.DATASETS[self.dataset].num_classes
        if self.num_classes not in (0, classes) or isinstance(self.num_classes, bool):
            raise ValueError(
                f"num_classes must be 0 (unconditional) or {classes} (the classes of "
                f"{self.dataset!r}), got {self.num_classes!r}"
            )
        if self.num_classes == 0 and self.label_dropout != 0.0:
            raise ValueError(
                f"label_dropout={self.label_dropout!r} needs labels: set num_classes={classes}, "
                "or leave label_dropout at 0 for an unconditional model"
            )
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout!r}")

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
            num_classes=self.num_classes or None,
        )

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`TrainConfig.to_dict`; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown TrainConfig fields {sorted(set(d) - known)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


# The smallest run: a CPU trains it in seconds (tests, rehearsals).
_TINY = TrainConfig(
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
)

# Issue 11's GPU runs share one network width and optimiser (PRESETS below).
_MNIST_GPU = TrainConfig(
    dataset="mnist",
    dropout=0.1,
    objective="vdm",
    steps=200_000,
    batch_size=256,
    lr=3e-4,
    warmup_steps=500,
    checkpoint_every=2000,
    log_every=100,
)

PRESETS: dict[str, TrainConfig] = {
    "mnist": TrainConfig(dataset="mnist"),
    "mnist-small": TrainConfig(
        dataset="mnist", ch=32, num_res_blocks=1, steps=5000, warmup_steps=200, lr=5e-4
    ),
    "fashion_mnist": TrainConfig(dataset="fashion_mnist"),
    # Chapter 10's CPU checkpoint: a 1.1M-parameter U-Net trained with VDM's continuous-time
    # loss on a 2-core CPU (about 1.1 s a step at batch 64 on one thread, so about an hour);
    # no dropout, since a run this short underfits.
    "mnist-cpu": TrainConfig(
        dataset="mnist",
        ch=32,
        num_res_blocks=1,
        dropout=0.0,
        objective="vdm",
        steps=3000,
        batch_size=64,
        lr=5e-4,
        warmup_steps=200,
        checkpoint_every=250,
    ),
    # Issue 11's GPU run: the book's continuous-time (VDM) configuration at full width, trained
    # for a wall-clock budget (``train --time-limit``) rather than to its step count: the steps
    # are a ceiling that 10 minutes on an H100 does not reach. EMA 0.999 (a horizon of about
    # 1000 steps, against about 10⁴ steps in the budget).
    "mnist-gpu": _MNIST_GPU,
    # Issue 11's class-conditional model for chapter 9: mnist-gpu's optimiser with labels, each
    # dropped to the null label with probability 0.2 (chapter 9's rate on the 2-D mixture and
    # the digits; Ho & Salimans 2022 use 0.1 or 0.2), trained with L_simple, the objective of
    # sample quality, so that one network gives every guidance weight. ch = 32 (1.6M
    # parameters, 3.2 MB in float16): beside mnist-gpu's 13 MB it keeps the shipped checkpoints
    # under 25 MB, and chapter 9 can sample it on a CPU.
    "mnist-gpu-cfg": dataclasses.replace(
        _MNIST_GPU, ch=32, objective="eps", num_classes=10, label_dropout=0.2
    ),
    "tiny": _TINY,
    # The class-conditional runs rehearsed on a CPU in seconds (tests, gpu/mnist_guidance.py).
    "tiny-cfg": dataclasses.replace(_TINY, num_classes=10, label_dropout=0.2),
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


def training_labels(
    cfg: TrainConfig,
    labels: Tensor | None,
    n_images: int,
    device: torch.device,
    root: str | None = None,
) -> Tensor | None:
    """The training labels of a class-conditional run (``cfg.num_classes > 0``): ``labels``
    (default :func:`~diffusion_lessons.data.datasets.load_labels`, cut to ``cfg.max_examples``)
    checked against the ``n_images`` images and the classes, as int64 ``(N,)`` on ``device``;
    None for an unconditional run, which refuses labels."""
    if cfg.num_classes == 0:
        if labels is not None:
            raise ValueError("labels given to an unconditional run: set num_classes in the config")
        return None
    if labels is None:
        labels = datasets.load_labels(cfg.dataset, root=root, limit=cfg.max_examples)
    return check_image_labels(labels, cfg.num_classes, n_images).to(device)
