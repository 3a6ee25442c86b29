"""The forward (noising) process (book: chapter "The forward process").

- one step, q(x_t | x_{t-1}) = N(√(1 − β_t) x_{t-1}, β_t I)        (label ``eq-forward-step``)
- the marginal, q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)             (label ``eq-forward-marginal``)

Coefficients (``beta``, ``alpha_bar``) are scalars or have shape ``(B,)`` for a batch
``x: (B, ...)``; randomness comes from an optional ``torch.Generator`` or explicit ``eps``.
Square roots of coefficients are taken in the promoted dtype of coefficient and data (a Python
float counts as float64) and cast to the data's dtype once, so float64 data is never rounded
through float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_lessons.checks import append_dims, as_coefficient, promote_coefficient
from diffusion_lessons.noise.schedules import check_betas


def _check_unit_interval(value: Tensor | float, *, name: str, open_low: bool) -> Tensor:
    value = as_coefficient(value)  # a Python float stays a double
    low_bad = (value <= 0) if open_low else (value < 0)
    if value.numel() and (low_bad.any() or (value > 1).any() or torch.isnan(value).any()):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(
            f"{name} must lie in {interval}, got values from {value.min().item():.6g} "
            f"to {value.max().item():.6g}"
        )
    return value


def q_step_mean_std(x_prev: Tensor, beta: Tensor | float) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of q(x_t | x_{t-1}) (label ``eq-forward-step``).

    ``x_prev: (B, ...)``, ``beta``: scalar or ``(B,)`` in (0, 1]. Returns
    (√(1 − β) x_prev, √β), the second broadcastable against ``x_prev``.
    """
    beta = _check_unit_interval(beta, name="beta", open_low=True)
    beta = promote_coefficient(append_dims(beta, x_prev, name="beta", x_name="x_prev"), x_prev)
    return torch.sqrt(1.0 - beta).to(x_prev) * x_prev, torch.sqrt(beta).to(x_prev)


def q_step_sample(
    x_prev: Tensor, beta: Tensor | float, *, generator: torch.Generator | None = None
) -> Tensor:
    """Draw x_t ~ q(x_t | x_{t-1}) for a batch ``x_prev: (B, ...)``."""
    mean, std = q_step_mean_std(x_prev, beta)
    eps = torch.randn(x_prev.shape, generator=generator, dtype=x_prev.dtype, device=x_prev.device)
    return mean + std * eps


def q_marginal_mean_std(x0: Tensor, alpha_bar: Tensor | float) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of q(x_t | x_0) (label ``eq-forward-marginal``).

    ``x0: (B, ...)``, ``alpha_bar``: scalar or ``(B,)`` in [0, 1]. Returns (√ᾱ x0, √(1 − ᾱ)).
    """
    alpha_bar = _check_unit_interval(alpha_bar, name="alpha_bar", open_low=False)
    alpha_bar = promote_coefficient(append_dims(alpha_bar, x0, name="alpha_bar", x_name="x0"), x0)
    return torch.sqrt(alpha_bar).to(x0) * x0, torch.sqrt(1.0 - alpha_bar).to(x0)


def q_sample(
    x0: Tensor,
    alpha_bar: Tensor | float,
    *,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw x_t = √ᾱ x_0 + σ ε ~ q(x_t | x_0); return ``(x_t, eps)``, both shaped like ``x0``.

    Pass ``eps`` to fix the noise (it must have the shape of ``x0``), or a ``generator``.
    """
    mean, std = q_marginal_mean_std(x0, alpha_bar)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    elif eps.shape != x0.shape:
        raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
    return mean + std * eps, eps


def run_forward_chain(
    x0: Tensor,
    betas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Run the Markov chain x_0 → x_1 → … → x_T one step at a time; return x_T.

    ``betas: (T,)`` (checked by :func:`~diffusion_lessons.noise.schedules.check_betas`).
    ``callback(i, x_i)`` is called after each step i = 1..T, so a page can record the trajectory.
    This is the slow, literal version of :func:`q_sample`; the chapter compares the two.
    """
    betas = check_betas(betas)
    x = x0
    # .tolist() is one host sync for the whole chain; each Python float holds its beta exactly
    # (float32 and float64 values alike), and q_step_mean_std keeps it a double.
    for i, beta in enumerate(betas.tolist(), start=1):
        x = q_step_sample(x, beta, generator=generator)
        if callback is not None:
            callback(i, x)
    return x
