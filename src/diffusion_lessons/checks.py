"""Shape and range checks shared by every module.

Bad input fails loudly with a ``ValueError`` that names the argument and what is
allowed; nothing is clipped or reshaped silently.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_coefficient(value: Tensor | float) -> Tensor:
    """``value`` as a floating tensor that keeps every digit it was given.

    A Python float is a double, but ``torch.as_tensor(0.1)`` rounds it to float32 (the default
    dtype), which silently costs float64 data seven digits. Python numbers, lists, arrays and
    integer tensors therefore become float64; a floating tensor keeps its dtype and device.
    """
    if isinstance(value, Tensor):
        return value if torch.is_floating_point(value) else value.double()
    return torch.as_tensor(value, dtype=torch.float64)


def promote_coefficient(coef: Tensor, x: Tensor) -> Tensor:
    """``coef`` in the promoted dtype of ``coef`` and ``x`` (float64 if either is float64).

    Compute a coefficient (a square root, a sigmoid) in this dtype and cast the result to ``x``
    once at the end: float64 data then gets float64 coefficients, and float32 data with float32
    coefficients stays in float32 (no float64 on the GPU, no extra host syncs).
    """
    coef = as_coefficient(coef)
    return coef.to(torch.promote_types(coef.dtype, x.dtype))


def append_dims(coef: Tensor, x: Tensor, *, name: str = "t", x_name: str = "x") -> Tensor:
    """Reshape a per-example coefficient ``coef`` so that it broadcasts against ``x``.

    ``coef`` may be a scalar (shape ``()``), or have shape ``(B,)`` where ``B`` is the
    leading (batch) dimension of ``x``; it comes back with shape ``(B, 1, ..., 1)``
    (as many trailing ones as ``x`` has further dimensions).

    Raises ``ValueError`` naming both arguments and both shapes when they do not fit.
    """
    coef = torch.as_tensor(coef)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or x.ndim == 0 or coef.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"{name} has shape {tuple(coef.shape)} but {x_name} has shape {tuple(x.shape)}: "
            f"{name} must be a scalar or have shape (B,) with B = {x_name}.shape[0]"
            + (f" = {x.shape[0]}" if x.ndim else "")
        )
    return coef.reshape(coef.shape + (1,) * (x.ndim - 1))


def sum_except_batch(x: Tensor) -> Tensor:
    """Σ over every dimension but the first: ``(B, ...) → (B,)`` (a per-example total)."""
    return x.reshape(x.shape[0], -1).sum(1)


def check_labels(y: Tensor | int, num_classes: int, *, allow_null: bool, name: str = "y") -> Tensor:
    """``y`` as a long tensor after checking that every label is a class 0..C−1 (or the null
    label C, where ``allow_null``); raises a ``ValueError`` naming ``name`` otherwise."""
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    top = num_classes if allow_null else num_classes - 1
    if y.numel() and (y.min() < 0 or y.max() > top):
        allowed = f"0..{top}" + (f" ({num_classes} is the null label)" if allow_null else "")
        raise ValueError(
            f"{name} holds unknown labels (values from {y.min().item()} to {y.max().item()}); "
            f"with {num_classes} classes the allowed labels are {allowed}"
        )
    return y.long()


def check_image_labels(labels: Tensor, num_classes: int, n_images: int) -> Tensor:
    """``labels`` as a long tensor after checking that it holds one class 0..C−1 per image:
    shape ``(n_images,)``, no null label (:func:`check_labels`)."""
    labels = check_labels(labels, num_classes, allow_null=False, name="labels")
    if labels.shape != (n_images,):
        raise ValueError(
            f"labels must have shape ({n_images},), one per image, got {tuple(labels.shape)}"
        )
    return labels


def check_time(
    t: Tensor | float, *, name: str = "t", low: float = 0.0, high: float = 1.0
) -> Tensor:
    """Return ``t`` as a floating tensor after checking ``low <= t <= high`` everywhere.

    Continuous time runs over [0, 1]: t = 0 is the data, t = 1 the end of the forward process.
    """
    t = torch.as_tensor(t)
    if not torch.is_floating_point(t):
        t = t.to(torch.get_default_dtype())
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN; allowed values are {low} <= {name} <= {high}")
    if t.numel() and (t.min() < low or t.max() > high):
        raise ValueError(
            f"{name} must lie in [{low}, {high}], got values from {t.min().item():.6g} "
            f"to {t.max().item():.6g}"
        )
    return t


def check_step(i: Tensor | int, T: int, *, name: str = "i") -> Tensor:
    """Return the discrete step index ``i`` as a long tensor after checking ``1 <= i <= T``."""
    i = torch.as_tensor(i)
    if i.is_floating_point() or i.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer steps 1..{T}, got dtype {i.dtype}")
    if i.numel() and (i.min() < 1 or i.max() > T):
        raise ValueError(
            f"{name} must lie in 1..{T} (T = {T} steps), got values from {i.min().item()} "
            f"to {i.max().item()}"
        )
    return i.long()


def check_choice(value: str, allowed: tuple[str, ...] | list[str], *, name: str) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise naming all choices."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}")
    return value


def check_positive_int(n: int, *, name: str) -> int:
    """Return ``n`` if it is an int >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    return n


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise a ValueError naming both tensors unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "they must be equal"
        )
