"""Langevin dynamics and annealed Langevin dynamics (chapter 8, "Score-based models").

One Langevin step towards a density p with score ∇ log p and step size α > 0 is

    x ← x + (α/2) ∇ log p(x) + √α z,        z ~ N(0, I)

(:func:`langevin_step`); as α → 0 and the number of steps → ∞ its law tends to p (the
unadjusted Langevin algorithm, whose stationary law is p only up to O(α)). :func:`langevin`
runs it with a fixed score ``score(x) -> ∇ log p(x)``, for example the exact score of a
:class:`~diffusion_lessons.data.toy.GaussianMixture`.

:func:`annealed_langevin` is Song & Ermon's (2019) Algorithm 1 (NCSN) on the book's denoiser
interface: it runs Langevin on the noised laws q_λ(x_t) of x_t = √ᾱ x_0 + σ ε down a ladder of
noise levels λ_1 < λ_2 < … < λ_L (log-SNR increasing, noise decreasing), with the score
ŝ = ``score_from(denoiser, x, λ)`` (``eq-tweedie``) and step α_i = ε σ_i² / σ_L². NCSN writes
the same algorithm for x_0 + σ ε (variance exploding); x_t / √ᾱ is that variable, and Langevin
commutes with the rescaling when α is rescaled by ᾱ, so the two differ only in what ε means.

Randomness comes from an injectable ``generator``; ``callback(step, x)`` sees every iterate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_lessons.checks import as_coefficient, check_positive_int
from diffusion_lessons.denoisers.denoiser import Denoiser, score_from

Score = Callable[[Tensor], Tensor]
"""``score(x (B, ...)) -> ∇ log p(x) (B, ...)``: the score of one fixed density."""

Callback = Callable[[int, Tensor], None]
"""``callback(step, x)``: step counts from 1 over the whole run; x is the iterate after it."""


def check_step_size(step_size: float, *, name: str = "step_size") -> float:
    """Return ``step_size`` as a float after checking it is a finite number > 0."""
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
        raise ValueError(f"{name} must be a number > 0, got {step_size!r}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {step_size!r}")
    return float(step_size)


def check_log_snr_ladder(log_snrs: Tensor, *, name: str = "log_snrs") -> Tensor:
    """Return ``log_snrs: (L,)`` as float64 after checking it increases strictly (noise falls)."""
    lam = as_coefficient(log_snrs)
    if lam.ndim != 1 or lam.numel() < 1:
        raise ValueError(f"{name} must have shape (L,) with L >= 1, got {tuple(lam.shape)}")
    if torch.isnan(lam).any() or (lam[1:] <= lam[:-1]).any():
        raise ValueError(
            f"{name} must increase strictly (the noise must decrease from level to level), "
            f"got {lam.tolist()}"
        )
    return lam.double()


def check_output_shape(out: Tensor, x: Tensor, *, name: str) -> Tensor:
    """Return ``out`` after checking it has the shape of ``x`` (no silent broadcasting)."""
    if out.shape != x.shape:
        raise ValueError(
            f"{name} returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; "
            "it must return the shape of x"
        )
    return out


def langevin_step(x: Tensor, score_x: Tensor, step_size: float | Tensor, noise: Tensor) -> Tensor:
    """One Langevin step x + (α/2) ∇ log p(x) + √α z, given ``score_x`` = ∇ log p(x) and z.

    ``step_size`` α is a number, or a tensor that broadcasts against ``x`` (one α per example).
    """
    return x + 0.5 * step_size * score_x + step_size**0.5 * noise


@torch.no_grad()
def langevin(
    score: Score,
    x: Tensor,
    *,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Run ``n_steps`` Langevin steps of size α = ``step_size`` from ``x: (B, ...)``: ``(B, ...)``.

    Each step is :func:`langevin_step` with the score ``score(x)`` of the target density and
    fresh noise from ``generator``; ``callback(k, x)`` sees the iterate after step k.
    """
    step_size = check_step_size(step_size)
    check_positive_int(n_steps, name="n_steps")
    for k in range(1, n_steps + 1):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = langevin_step(x, check_output_shape(score(x), x, name="score"), step_size, z)
        if callback is not None:
            callback(k, x)
    return x


@torch.no_grad()
def annealed_langevin(
    denoiser: Denoiser,
    x: Tensor,
    log_snrs: Tensor,
    *,
    step_size: float,
    n_steps_each: int,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) from ``x: (B, ...)``.

    For each level λ_i of ``log_snrs: (L,)`` (strictly increasing: noise decreasing), run
    ``n_steps_each`` Langevin steps with the denoiser's score at λ_i and step α_i = ε σ_i²/σ_L²
    (ε = ``step_size``, σ_i² = sigmoid(−λ_i)), each level starting where the last one stopped.
    Returns the last iterate, a draw of (about) q_{λ_L}; ``callback(k, x)`` sees every step k
    = 1 … L · ``n_steps_each``.
    """
    step_size = check_step_size(step_size)
    check_positive_int(n_steps_each, name="n_steps_each")
    lam = check_log_snr_ladder(log_snrs).to(x.device)
    var = torch.sigmoid(-lam)  # σ_i², float64

    def checked(xt: Tensor, log_snr: Tensor) -> Tensor:
        return check_output_shape(denoiser(xt, log_snr), xt, name="denoiser")

    k = 0
    for i in range(len(lam)):
        alpha = step_size * (var[i] / var[-1]).item()
        level = lam[i].expand(x.shape[0])
        for _ in range(n_steps_each):
            k += 1
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = langevin_step(x, score_from(checked, x, level), alpha, z)
            if callback is not None:
                callback(k, x)
    return x
