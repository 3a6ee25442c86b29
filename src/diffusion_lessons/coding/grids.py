"""Latent grids: how a continuous latent x_t becomes a symbol an entropy coder can push (chapter 11).

A coded latent lives on a lattice δ·n, n ∈ ℤ. At step t both the posterior q(x_{t-1} | x_t, x_0)
and the model p_θ(x_{t-1} | x_t) are Gaussians of one standard deviation σ̃_t whose means differ from
the reference c_t x_t (known to encoder and decoder) by c_0 x_0 resp. c_0 x̂_0, with ``|x_0|, |x̂_0| ≤ 1``.
So every value either side can meet lies within ``span`` = c_0 + ``window`` σ̃_t of the reference,
and the symbol is the offset n − round(ref/δ) in [−W, W]. The step is δ = σ̃_t / 2^precision, made
coarser where needed so that W ≤ :data:`MAX_HALF_WIDTH`: the coder gives every symbol of the
alphabet at least 2^-24 (:data:`PROBABILITY_BITS`), and that "leak" mass alphabet / 2^24 stays
below 1e-4. Model means are rounded to :data:`MEAN_GRID` grid units before they reach the coder, so
that encoder and decoder floats that differ in the last bits still build the same tables.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

PROBABILITY_BITS = 24
"""constriction's default ANS coders quantize probabilities to 24 bits."""

MEAN_GRID = 2.0**-20
"""Means (in grid units) are rounded to multiples of this before coding."""

MAX_HALF_WIDTH = 768
"""Largest W: alphabets of at most 1537 symbols, leak ≤ 1537 / 2^24 ≈ 9.2e-5."""


def _check_int(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Lattice:
    """The lattice δ·n of one latent with the coded window [−W, W] around a reference.

    Parameters
    ----------
    step : float
        δ > 0.
    half_width : int
        W ≥ 1.
    """

    step: float
    half_width: int

    @property
    def alphabet(self) -> int:
        """Number of symbols, 2W + 1."""
        return 2 * self.half_width + 1

    def leak_bound(self) -> float:
        """Mass the coder can give to symbols the model does not weigh: alphabet / 2^24."""
        return self.alphabet / 2.0**PROBABILITY_BITS

    def units(self, x: np.ndarray) -> np.ndarray:
        """x / δ rounded to :data:`MEAN_GRID` (float64)."""
        u = np.asarray(x, dtype=np.float64) / self.step
        return np.round(u / MEAN_GRID) * MEAN_GRID

    def anchor(self, ref: np.ndarray) -> np.ndarray:
        """The integer lattice point nearest the reference: round(ref / δ), int64."""
        return np.floor(self.units(ref) + 0.5).astype(np.int64)

    def around_mean(self, std: float, window: int) -> Lattice:
        """The same lattice with the narrow window of a draw: W = ⌈window · std / δ⌉.

        A latent *popped* from q(x_{t-1} | x_t, x_0) is coded around q's own (rounded) mean, so
        its alphabet covers ``window`` standard deviations and no more: the coder's floor of
        2^-24 per symbol then makes a draw far in the tails (a "leak") about
        ``alphabet / 2^24`` likely, ten times rarer than in the wide window that the model's
        push needs. The step δ is unchanged, so both codes name the same lattice points.
        """
        return Lattice(self.step, max(1, math.ceil(window * std / self.step)))

    def value(self, symbols: np.ndarray) -> np.ndarray:
        """The latent's value δ·n of lattice points ``symbols``: the only way back to ℝ."""
        return np.asarray(symbols, dtype=np.float64) * self.step


@dataclasses.dataclass(frozen=True)
class LatentGrid:
    """How finely latents are coded.

    Parameters
    ----------
    precision : int
        δ = σ / 2^precision (0 … 12), unless the window forces a coarser step.
    window : int
        Standard deviations kept beyond the extreme means (1 … 64).
    """

    precision: int = 3
    window: int = 8

    def __post_init__(self) -> None:
        _check_int(self.precision, "precision", 0, 12)
        _check_int(self.window, "window", 1, 64)

    def lattice(self, std: float, reach: float) -> Lattice:
        """The lattice of a Gaussian latent of standard deviation ``std`` whose means stay within
        ``reach`` of the reference."""
        if not (std > 0 and reach >= 0 and math.isfinite(std) and math.isfinite(reach)):
            raise ValueError(f"need std > 0 and reach >= 0, got std={std}, reach={reach}")
        span = reach + self.window * std
        # two points of slack: a draw coded around q's rounded mean (Lattice.around_mean) lies
        # at most ⌈span/δ⌉ + 2 points from the rounded reference
        step = max(std / 2.0**self.precision, span / (MAX_HALF_WIDTH - 2))
        return Lattice(step=step, half_width=math.ceil(span / step) + 2)
