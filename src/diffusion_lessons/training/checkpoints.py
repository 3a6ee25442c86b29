"""Checkpoints as safetensors files (no pickle): one writer, one reader, one state check.

Two formats share them:

- **weights** (:func:`save_weights`, :func:`load_weights`): the ``state_dict`` of one module and a
  JSON ``metadata`` dict; :func:`diffusion_lessons.training.fit.fit` writes it.
- **training state** (:func:`save_training_state`, :func:`read_training_state`,
  :func:`load_training_state`): several modules under name prefixes (the engine's ``model/`` and
  ``ema/``), the optimizer state, the loss of every step, the run's configuration and step; the
  engine writes and resumes it, and ``cli eval`` loads its EMA weights.

Every loader checks everything before it copies anything: a file that is missing, truncated, of
the other format, for another architecture, or (on resume) of another configuration raises and
leaves the modules untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

TRAINING_FORMAT = "diffusion_lessons.engine/1"
"""The ``format`` metadata of a training-state file."""


# ---------------------------------------------------------------------------------------------
# The file: atomic writer and reader.


def write_safetensors(
    tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> Path:
    """Write ``tensors`` and string ``metadata`` to ``path`` as safetensors, atomically.

    The file is written beside ``path`` and renamed over it only when complete, so an interrupted
    write never leaves a truncated checkpoint behind (and never harms the one already there).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Read a safetensors file without pickle: ``(metadata, tensors)``.

    Raises ``FileNotFoundError`` when there is no file and ``ValueError`` when it is not a readable
    safetensors file (for instance a truncated one).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise ValueError(
            f"{path} is not a readable safetensors checkpoint ({err}); it may be truncated"
        ) from err
    return meta, tensors


# ---------------------------------------------------------------------------------------------
# The checks: weights against a module, a stored configuration against a new one.


def check_state(
    own: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    *,
    path: str | os.PathLike,
    architecture: str = "?",
) -> None:
    """Raise ``ValueError`` unless ``state`` has exactly the keys and shapes of ``own``.

    ``own`` is the ``state_dict`` of the module to load into; the message names the missing and
    unexpected keys and the shape mismatches (the first five of each).
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} holds weights for another architecture ({architecture}): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )


def load_module_state(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    path: str | os.PathLike,
    architecture: str = "?",
) -> None:
    """:func:`check_state`, then copy ``state`` into ``module`` (untouched when the check fails)."""
    check_state(module.state_dict(), state, path=path, architecture=architecture)
    module.load_state_dict(state)


def config_differences(
    stored: Mapping[str, object], new: Mapping[str, object], *, may_differ: tuple[str, ...] = ()
) -> list[str]:
    """The fields outside ``may_differ`` where two configurations differ, as ``'name: a → b'``.

    A field present in only one of them counts as a difference (shown as ``<absent>``).
    """
    keys = list(stored) + [k for k in new if k not in stored]
    absent = "<absent>"
    return [
        f"{k}: {stored.get(k, absent)!r} → {new.get(k, absent)!r}"
        for k in keys
        if k not in may_differ and (k not in stored or k not in new or stored[k] != new[k])
    ]


def check_resumable(
    stored: Mapping[str, object],
    new: Mapping[str, object],
    *,
    may_differ: tuple[str, ...],
    path: str | os.PathLike,
) -> None:
    """Raise ``ValueError`` naming every field (outside ``may_differ``) where the configs differ."""
    diff = config_differences(stored, new, may_differ=may_differ)
    if diff:
        raise ValueError(
            f"cannot resume from {path}: the configuration differs in " + "; ".join(diff)
        )


# ---------------------------------------------------------------------------------------------
# Format 1: the weights of one module.


def save_weights(
    model: nn.Module, path: str | os.PathLike, *, metadata: dict | None = None
) -> Path:
    """Write ``model``'s weights and a JSON-ready ``metadata`` dict to ``path``, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"architecture": type(model).__name__, "metadata": json.dumps(metadata or {})}
    return write_safetensors(state, path, meta)


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load the weights saved by :func:`save_weights` into ``model``; return the metadata dict.

    Raises ``ValueError`` when the file is not a readable safetensors file, or holds weights for
    another architecture (missing or unexpected keys, other shapes); ``model`` is left untouched.
    """
    meta, state = read_safetensors(path)
    load_module_state(model, state, path=path, architecture=meta.get("architecture", "?"))
    return json.loads(meta.get("metadata", "{}"))


# ---------------------------------------------------------------------------------------------
# Format 2: a training state (modules under prefixes, optimizer, losses, config, step).


@dataclass(frozen=True)
class TrainingCheckpoint:
    """A training-state file as read: the run's ``config`` (a JSON dict), the ``step`` reached,
    all ``tensors`` (``<prefix>/…``, ``opt/<param index>/<state name>``, ``losses``) and the
    string ``metadata``."""

    config: dict
    step: int
    tensors: dict[str, Tensor]
    metadata: dict[str, str]

    def state(self, prefix: str) -> dict[str, Tensor]:
        """The tensors stored under ``prefix/`` (e.g. ``"ema"``), with the prefix removed."""
        head = prefix + "/"
        return {k[len(head) :]: v for k, v in self.tensors.items() if k.startswith(head)}

    def optimizer_state(self) -> dict[int, dict[str, Tensor]]:
        """The optimizer's per-parameter state: ``{param index: {state name: tensor}}``."""
        out: dict[int, dict[str, Tensor]] = {}
        for key, value in self.tensors.items():
            if key.startswith("opt/"):
                _, i, name = key.split("/")
                out.setdefault(int(i), {})[name] = value
        return out


def save_training_state(
    path: str | os.PathLike,
    *,
    modules: Mapping[str, nn.Module],
    opt: torch.optim.Optimizer,
    step: int,
    losses: list[float],
    config: dict,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a training state to ``path`` atomically.

    Tensors: ``<name>/…`` for each of ``modules`` (e.g. ``{"model": m, "ema": e}``),
    ``opt/<param index>/<state name>`` and ``losses`` (float64, one per step done); metadata: the
    format, ``config`` (JSON), ``step`` and the strings in ``metadata``.
    """
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        tensors |= {f"{name}/{k}": v for k, v in module.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"opt/{i}/{name}"] = torch.as_tensor(value)
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": TRAINING_FORMAT, **(metadata or {})}
    meta |= {"config": json.dumps(config), "step": str(step)}
    return write_safetensors(tensors, path, meta)


def read_training_state(path: str | os.PathLike) -> TrainingCheckpoint:
    """Read a file written by :func:`save_training_state`; nothing is modified.

    Raises ``FileNotFoundError`` when there is no file, and ``ValueError`` when it is not a
    readable safetensors file (e.g. truncated) or not a training state (e.g. a weights file).
    """
    meta, tensors = read_safetensors(path)
    if meta.get("format") != TRAINING_FORMAT:
        raise ValueError(
            f"{path} is not a training-engine checkpoint (format {meta.get('format')!r}, "
            f"architecture {meta.get('architecture', '?')!r}); expected {TRAINING_FORMAT!r}"
        )
    return TrainingCheckpoint(json.loads(meta["config"]), int(meta["step"]), tensors, meta)


def load_training_state(
    ckpt: TrainingCheckpoint,
    *,
    modules: Mapping[str, nn.Module],
    opt: torch.optim.Optimizer,
    path: str | os.PathLike,
) -> tuple[int, list[float]]:
    """Copy ``ckpt`` into ``modules`` (by prefix) and ``opt``; return ``(step, losses)``.

    Every module's weights and the optimizer's state are checked before anything is copied.
    """
    arch = ckpt.metadata.get("architecture", "?")
    states = {name: ckpt.state(name) for name in modules}
    for name, module in modules.items():
        check_state(module.state_dict(), states[name], path=path, architecture=arch)
    opt_sd = opt.state_dict()
    opt_state = ckpt.optimizer_state()
    if ckpt.step > 0 and len(opt_state) != sum(len(g["params"]) for g in opt_sd["param_groups"]):
        raise ValueError(f"{path} holds optimizer state for another architecture")
    for name, module in modules.items():
        module.load_state_dict(states[name])
    opt.load_state_dict({"state": opt_state, "param_groups": opt_sd["param_groups"]})
    return ckpt.step, ckpt.tensors["losses"].tolist()
