"""The evaluation protocol of guidance/metrics.py against closed forms and second methods: the
Fréchet distance of commuting (diagonal) Gaussians, scipy's matrix square root for non-commuting
ones, KID's unbiased MMD² against a double loop and its zero mean for one distribution, the
bootstrap interval of a mean against the normal interval ±1.96 s/√n.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lessons.data.toy import two_gaussians
from diffusion_lessons.guidance import guided, labelled, metrics
from diffusion_lessons.montecarlo import mean_se

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(n, mean, cov, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    return torch.as_tensor(mean, dtype=torch.float64) + z @ torch.linalg.cholesky(cov).T


def random_spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    """Commuting covariances: d² = ‖μ₁ − μ₂‖² + Σ_i (√a_i − √b_i)² (rounding, 1e-10)."""
    f64 = torch.float64
    a, b = (
        torch.tensor([0.5, 2.0, 1.0, 0.1], dtype=f64),
        torch.tensor([1.5, 0.3, 1.0, 0.9], dtype=f64),
    )
    mu1 = torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=f64)
    mu2 = torch.tensor([0.5, 1.0, 0.0, 0.0], dtype=f64)
    want = (mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum()
    got = metrics.gaussian_frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert abs(got - want.item()) < 1e-10


def test_frechet_distance_of_general_gaussians_matches_scipy_sqrtm():
    """Non-commuting covariances: tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} = tr (Σ₁ Σ₂)^{1/2} (similar
    matrices), the second by scipy.linalg.sqrtm as FID's reference code takes it (1e-8); a common
    rotation of both Gaussians leaves the distance unchanged; a Gaussian against itself is 0."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    c1, c2 = random_spd(6, 0), random_spd(6, 1)
    mu1 = torch.linspace(-1, 1, 6, dtype=torch.float64)
    mu2 = torch.zeros(6, dtype=torch.float64)
    cross = scipy_linalg.sqrtm((c1 @ c2).numpy()).real.trace()
    want = (mu1 - mu2).pow(2).sum().item() + (c1.trace() + c2.trace()).item() - 2 * cross
    got = metrics.gaussian_frechet_distance(mu1, c1, mu2, c2)
    assert abs(got - want) < 1e-8
    q, _ = torch.linalg.qr(random_spd(6, 2))
    rotated = metrics.gaussian_frechet_distance(q @ mu1, q @ c1 @ q.T, q @ mu2, q @ c2 @ q.T)
    assert abs(rotated - got) < 1e-8
    assert metrics.gaussian_frechet_distance(mu1, c1, mu1, c1) < 1e-10


def test_frechet_distance_of_a_set_with_itself_is_zero():
    """Same set, same moments: 0 up to the rounding of the eigen-decompositions (1e-9 of tr Σ)."""
    x = gaussian(500, [0.0] * 8, random_spd(8, 3), 4)
    assert metrics.frechet_distance(x, x) < 1e-9 * torch.cov(x.T).trace().item()


def test_frechet_distance_of_samples_approaches_the_gaussian_closed_form():
    """30 replications of two sets of 4,000 draws: the mean of the set distances, less the
    mean term's exact bias (tr Σ₁ + tr Σ₂)/n, lies within 4.5 SEs plus the covariance term's own
    O(F/n) bias (allowed as (tr Σ₁ + tr Σ₂)/n again) of the closed form."""
    c1, c2 = random_spd(3, 5), random_spd(3, 6)
    mu1, mu2 = [0.0, 0.5, 0.0], [0.3, 0.0, -0.2]
    exact = metrics.gaussian_frechet_distance(torch.tensor(mu1), c1, torch.tensor(mu2), c2)
    n = 4000
    bias = (c1.trace() + c2.trace()).item() / n
    draws = torch.tensor(
        [
            metrics.frechet_distance(gaussian(n, mu1, c1, 2 * r), gaussian(n, mu2, c2, 2 * r + 1))
            for r in range(30)
        ]
    )
    est = mean_se(draws - bias)
    assert abs(est.mean - exact) <= 4.5 * est.se + bias, (est, exact)


def test_mmd2_unbiased_is_the_double_sum_over_distinct_pairs():
    """Against explicit loops over i ≠ j with k(x, y) = (xᵀy/F + 1)³ (rounding, 1e-10)."""
    a, b = (
        gaussian(7, [0.0] * 3, torch.eye(3, dtype=torch.float64), 0),
        gaussian(5, [1.0] * 3, torch.eye(3, dtype=torch.float64), 1),
    )

    def k(x, y):
        return ((x @ y) / 3 + 1) ** 3

    kaa = sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    kbb = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    kab = sum(k(a[i], b[j]) for i in range(7) for j in range(5)) / 35
    assert abs(metrics.mmd2_unbiased(a, b) - (kaa + kbb - 2 * kab).item()) < 1e-10


def test_kid_is_zero_within_its_se_for_one_distribution_and_positive_for_two():
    """Two samples of one Gaussian: KID within 4.5 SEs of 0 (an unbiased estimate; the SE is over
    8 independent blocks). A shifted second Gaussian: KID more than 4.5 SEs above 0."""
    cov = random_spd(5, 7)
    a, b = gaussian(4000, [0.0] * 5, cov, 8), gaussian(4000, [0.0] * 5, cov, 9)
    same = metrics.kid(a, b, block_size=500)
    assert same.n == 8 and same.within(0.0), same
    shifted = metrics.kid(a, gaussian(4000, [0.5] * 5, cov, 10), block_size=500)
    assert shifted.mean > 4.5 * shifted.se, shifted


def test_class_accuracy_is_the_fraction_of_hits_with_its_binomial_se():
    """7 hits out of 10 known logits: 0.7, SE = s/√n with s² = (n/(n − 1)) a(1 − a)."""
    logits = torch.zeros(10, 3)
    logits[torch.arange(10), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])] = 1.0
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 2, 0, 1])  # the last three miss
    acc = metrics.class_accuracy(logits, y)
    assert abs(acc.mean - 0.7) < 1e-12
    assert abs(acc.se - math.sqrt(10 / 9 * 0.7 * 0.3 / 10)) < 1e-12
    assert metrics.class_accuracy(logits, 0).mean == pytest.approx(0.4)


def test_bootstrap_interval_of_a_mean_is_the_normal_interval():
    """For the mean of 2,000 standard normal draws the 95% percentile interval is close to
    mean ± 1.96/√n (±0.044): its half-width within 20% (400 resamples estimate each quantile to
    a few percent of the width) and centred on the estimate within 0.01."""
    x = torch.randn(2000, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ci = metrics.bootstrap_interval(
        lambda s: s.mean().item(), x, n_boot=400, generator=torch.Generator().manual_seed(12)
    )
    half = 1.96 * x.std().item() / math.sqrt(2000)
    assert ci.low < ci.estimate < ci.high
    assert abs((ci.high - ci.low) / 2 - half) < 0.2 * half, ci
    assert abs((ci.high + ci.low) / 2 - ci.estimate) < 0.01


def test_penultimate_features_are_the_classifiers_features_in_batches():
    torch.manual_seed(0)
    net = guided.NoiseAwareClassifier(dim=64, num_classes=10, hidden=32)
    x = torch.randn(50, 1, 8, 8)
    got = metrics.penultimate_features(net, x, 13.0, batch_size=16)
    with torch.no_grad():
        want = net.features(x, torch.full((50,), 13.0)).double()
    assert got.shape == (50, 32)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_binned_total_variation_of_a_hand_histogram():
    """Four cells of mass ¼ on [0, 2]²; samples 3 in cell (0, 0), 1 in (1, 1), 1 outside:
    ½ (0.35 + 0.25 + 0.25 + 0.05 + 0.2) = 0.55."""
    points, volume = labelled.grid_points(0.0, 2.0, 2)
    grid = labelled.TiltedGrid(points, torch.full((4,), 0.25 / volume, dtype=torch.float64), volume)
    x = torch.tensor([[0.2, 0.3], [0.9, 0.1], [0.5, 0.5], [1.5, 1.2], [2.5, 0.0]])
    assert metrics.binned_total_variation(x, grid) == pytest.approx(0.55, abs=1e-12)


def test_binned_total_variation_sees_the_tilt_above_the_noise_floor():
    """Exact draws of p(x | y) (the mixture's own sampler, not the grid's) against the γ = 1 grid:
    within twice the multinomial floor ½ Σ √(2 p / (π n)); against the γ = 4 grid: above three
    floors (it measures 4.6)."""
    lm = labelled.LabelledMixture(two_gaussians(distance=1.5, std=0.6), torch.tensor([0, 1]))
    n = 20_000
    x = lm.class_mixture(1).sample(n, generator=torch.Generator().manual_seed(0))
    exact = labelled.tilted_density_on_grid(lm, 1, 1.0, low=-4.0, high=4.0, n=40)
    tilted = labelled.tilted_density_on_grid(lm, 1, 4.0, low=-4.0, high=4.0, n=40)
    mass = exact.density * exact.cell_volume
    floor = 0.5 * (2 * mass / (math.pi * n)).sqrt().sum().item()
    assert metrics.binned_total_variation(x, exact) <= 2 * floor
    assert metrics.binned_total_variation(x, tilted) > 3 * floor


def test_bad_input_raises_naming_the_argument():
    with pytest.raises(ValueError, match="y holds unknown labels"):
        metrics.class_accuracy(torch.zeros(5, 3), torch.tensor([0, 1, 2, 3, 0]))  # a 3-class
    with pytest.raises(ValueError, match=r"y must be one label or \(N,\)"):
        metrics.class_accuracy(torch.zeros(5, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="features_a and features_b must have shapes"):
        metrics.frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="need at least 2 rows"):
        metrics.frechet_distance(torch.zeros(1, 3), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="kid needs"):
        metrics.kid(torch.zeros(100, 3), torch.zeros(100, 3), block_size=60)
    with pytest.raises(ValueError, match="need mu1, mu2"):
        metrics.gaussian_frechet_distance(
            torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2)
        )
    points, volume = labelled.grid_points(0.0, 1.0, 4)
    grid = labelled.TiltedGrid(points, torch.ones(16, dtype=torch.float64), volume)
    with pytest.raises(ValueError, match=r"samples must have shape \(n, 2\)"):
        metrics.binned_total_variation(torch.zeros(5, 3), grid)
    with pytest.raises(ValueError, match=r"level must lie in \(0, 1\)"):
        metrics.bootstrap_interval(lambda s: 0.0, torch.zeros(5), level=1.0)
