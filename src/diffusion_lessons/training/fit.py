"""The small training loop that the chapters reuse (CPU-sized models).

``fit`` draws seeded minibatches from tensors held on the training device, shows a ``tqdm.auto``
progress bar with the running loss, and returns the loss history; its checkpoint is a weights file
of :mod:`~diffusion_lessons.training.checkpoints`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffusion_lessons.checks import check_positive_int
from diffusion_lessons.training.checkpoints import save_weights


@dataclass
class History:
    """What :func:`fit` measured: the loss at every step and the wall-clock time."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def smoothed(self, window: int = 50) -> list[float]:
        """Running mean of the loss over the last ``window`` steps (for plots)."""
        out, total = [], 0.0
        for i, v in enumerate(self.losses):
            total += v
            if i >= window:
                total -= self.losses[i - window]
            out.append(total / min(i + 1, window))
        return out


def _as_tuple(data: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    tensors = (data,) if isinstance(data, Tensor) else tuple(data)
    if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
        raise ValueError(
            "data must be a tensor or a tuple of tensors with the same first dimension, got shapes "
            + ", ".join(str(tuple(t.shape)) for t in tensors)
        )
    return tensors


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, tuple[Tensor, ...], torch.Generator], Tensor],
    data: Tensor | tuple[Tensor, ...],
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "training",
    checkpoint: str | os.PathLike | None = None,
) -> History:
    """Train ``model`` for ``steps`` AdamW steps on minibatches of ``data``; return the :class:`History`.

    ``loss_fn(model, batch, generator)`` returns the scalar loss of one minibatch; ``batch`` is a
    tuple of tensors (one per tensor in ``data``) already on the device, and ``generator`` is the
    seeded ``torch.Generator`` to draw any noise from, so a run is reproducible. The device is
    the GPU when there is one, unless ``device`` says otherwise. With ``checkpoint``, the weights
    are saved there at the end (:func:`~diffusion_lessons.training.checkpoints.save_weights`).
    """
    check_positive_int(steps, name="steps")
    check_positive_int(batch_size, name="batch_size")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    tensors = tuple(t.to(dev) for t in _as_tuple(data))
    n = tensors[0].shape[0]
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    index_gen = torch.Generator().manual_seed(seed + 1)
    model.to(dev).train()
    # foreach: one fused update over all parameters (the per-tensor loop dominates small models)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=True)
    history = History()

    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5, leave=False)
    start = time.perf_counter()
    for _ in bar:
        idx = torch.randint(n, (min(batch_size, n),), generator=index_gen).to(dev)
        loss = loss_fn(model, tuple(t[idx] for t in tensors), gen)
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        history.losses.append(loss.item())
        if len(history.losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(history.losses[-50:]) / 50:.4f}", refresh=False)
    history.seconds = time.perf_counter() - start
    model.eval()
    if checkpoint is not None:
        save_weights(model, checkpoint, metadata={"steps": steps, "final_loss": history.losses[-1]})
    return history
