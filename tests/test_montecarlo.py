"""Monte Carlo means and standard errors, against the textbook formulas."""

import math

import pytest
import torch

from diffusion_lessons import montecarlo


def test_mean_se_matches_the_formula():
    x = torch.tensor([1.0, 2.0, 4.0, 7.0])
    est = montecarlo.mean_se(x)
    mean = sum(x.tolist()) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in x.tolist()) / 3)  # n − 1 in the denominator
    assert est.n == 4
    assert math.isclose(est.mean, mean, rel_tol=1e-12)
    assert math.isclose(est.se, sd / 2, rel_tol=1e-12)


def test_standard_error_is_the_spread_of_the_mean():
    """Over many repetitions, the SE predicts the spread of the mean of n draws (within 5%)."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4000, 50, generator=g, dtype=torch.float64).mean(1)
    ses = [montecarlo.mean_se(row).se for row in torch.randn(200, 50, generator=g).double()]
    assert abs(means.std().item() / (sum(ses) / len(ses)) - 1) < 0.05


def test_within_and_bad_input():
    est = montecarlo.MeanSE(1.0, 0.1, 10)
    assert est.within(1.4) and not est.within(1.5)
    with pytest.raises(ValueError, match="at least 2 values"):
        montecarlo.mean_se(torch.tensor([1.0]))
