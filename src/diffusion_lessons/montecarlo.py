"""Monte Carlo estimates with their standard errors (every chapter that estimates by sampling).

An estimate from n independent draws x_1..x_n is their mean, and its standard error is
s / √n with s the sample standard deviation (n − 1 in its denominator). Pages print
``mean ± se``; tests compare ``|mean − exact|`` with a multiple of ``se``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class MeanSE(NamedTuple):
    """A Monte Carlo mean, its standard error, and the number of draws."""

    mean: float
    se: float
    n: int

    def within(self, exact: float, z: float = 4.5) -> bool:
        """Whether ``exact`` lies within ``z`` standard errors of the mean (4.5: a false alarm
        about once in 150,000 for a Gaussian estimate)."""
        return abs(self.mean - exact) <= z * self.se


def mean_se(draws: Tensor) -> MeanSE:
    """The mean of independent ``draws`` (any shape, flattened) and its standard error s/√n."""
    x = torch.as_tensor(draws).detach().reshape(-1).double()
    n = x.numel()
    if n < 2:
        raise ValueError(f"draws must hold at least 2 values for a standard error, got {n}")
    return MeanSE(x.mean().item(), x.std().item() / math.sqrt(n), n)
