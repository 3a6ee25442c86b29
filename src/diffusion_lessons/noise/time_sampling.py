"""Where the bound is evaluated: times t ∈ (0, 1) drawn uniformly or with low discrepancy
(Kingma et al. 2021, VDM, appendix), and the discrete steps i ∈ {1..T} they map to."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lessons.checks import (
    check_choice,
    check_positive_int,
)

SAMPLERS = ("uniform", "low_discrepancy")
"""The time samplers of :func:`sample_times`: independent uniform times, or VDM's low-discrepancy
times (one uniform shift of an even grid)."""


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def uniform_times(n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """n independent times t_b ∼ U(0, 1): ``(n,)`` float64."""
    check_positive_int(n, name="n")
    return torch.rand(n, generator=generator, dtype=torch.float64, device=_device(generator))


def low_discrepancy_times(n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """VDM's low-discrepancy times t_b = (u + b/n) mod 1, b = 0..n−1, one u ∼ U(0, 1): ``(n,)``.

    Each t_b alone is U(0, 1), so any average over the batch stays unbiased; together they cover
    [0, 1] evenly (one per interval of length 1/n), which lowers the variance of the batch mean.
    """
    check_positive_int(n, name="n")
    dev = _device(generator)
    u = torch.rand((), generator=generator, dtype=torch.float64, device=dev)
    return torch.remainder(u + torch.arange(n, dtype=torch.float64, device=dev) / n, 1.0)


def sample_times(
    n: int, *, sampler: str = "uniform", generator: torch.Generator | None = None
) -> Tensor:
    """Times from ``sampler`` ∈ {"uniform", "low_discrepancy"}: ``(n,)`` float64 in [0, 1)."""
    check_choice(sampler, SAMPLERS, name="time sampler")
    fn = uniform_times if sampler == "uniform" else low_discrepancy_times
    return fn(n, generator=generator)


def sample_steps(
    n: int, T: int, *, sampler: str = "uniform", generator: torch.Generator | None = None
) -> Tensor:
    """Discrete steps i ∈ {1..T}, each uniform: i = ⌊t T⌋ + 1 with t from :func:`sample_times`."""
    return steps_from_times(sample_times(n, sampler=sampler, generator=generator), T)


def steps_from_times(t: Tensor, T: int) -> Tensor:
    """The step i = ⌊t T⌋ + 1 ∈ {1..T} whose interval [(i−1)/T, i/T) holds t: ``(B,)`` long.

    Maps U(0, 1) to U{1..T}; with the same t, L_T and L_∞ use common random numbers.
    """
    check_positive_int(T, name="T")
    return torch.clamp(torch.floor(t * T).long() + 1, min=1, max=T)


def uniform_steps(
    n: int, T: int, *, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """Steps i drawn independently and uniformly from {1..T}: ``(n,)`` long (one per example)."""
    check_positive_int(T, name="T")
    return torch.randint(1, T + 1, (n,), generator=generator, device=device)
