"""Where the bound is evaluated: uniform and low-discrepancy times, and the steps they map to."""

import math

import torch
from scipy import stats

from diffusion_lessons.noise import time_sampling


def within(estimates, expected, z=4.5):
    se = estimates.std().item() / math.sqrt(estimates.numel())
    return abs(estimates.mean().item() - expected) < z * se, estimates.mean().item(), se


def test_low_discrepancy_times_are_uniform_and_evenly_spread():
    """Each coordinate is U(0, 1) (Kolmogorov–Smirnov); each batch has one time per 1/n interval."""
    gen = torch.Generator().manual_seed(4)
    batches = torch.stack(
        [time_sampling.low_discrepancy_times(16, generator=gen) for _ in range(4000)]
    )
    for b in (0, 7, 15):
        assert stats.kstest(batches[:, b].numpy(), "uniform").pvalue > 1e-3
    cells = torch.sort(torch.floor(batches * 16).long(), dim=1).values
    assert torch.equal(cells, torch.arange(16).expand_as(cells))


def test_low_discrepancy_estimator_is_unbiased_with_lower_variance():
    """Batch means of f(t) = t² (integral 1/3) under both samplers: unbiased, and much less spread."""
    gen = torch.Generator().manual_seed(5)
    means = {}
    for sampler in time_sampling.SAMPLERS:
        means[sampler] = torch.stack(
            [
                (time_sampling.sample_times(32, sampler=sampler, generator=gen) ** 2).mean()
                for _ in range(3000)
            ]
        )
        ok, mean, se = within(means[sampler], 1 / 3)
        assert ok, (sampler, mean, se)
    assert means["low_discrepancy"].var() < 0.05 * means["uniform"].var()


def test_steps_are_uniform_on_one_to_T():
    gen = torch.Generator().manual_seed(7)
    i = time_sampling.sample_steps(50_000, 10, generator=gen)
    counts = torch.bincount(i, minlength=11)[1:].numpy()
    assert i.min() >= 1 and i.max() <= 10
    assert stats.chisquare(counts).pvalue > 1e-3
    assert time_sampling.steps_from_times(
        torch.tensor([0.0, 0.0999, 0.1, 0.99999]), 10
    ).tolist() == [
        1,
        1,
        2,
        10,
    ]
