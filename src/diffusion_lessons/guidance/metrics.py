"""The evaluation protocol of chapter 9, as plain functions: class accuracy of samples, features
from a classifier, the Fréchet distance and KID between two feature sets, a bootstrap interval,
and on the 2-D mixture the total variation between samples and a gridded exact density.

The features are those of a small classifier trained in the chapter (its penultimate layer,
:func:`penultimate_features`), not Inception's: the numbers measure samples against a test set
in *that* feature space and are not comparable with published FIDs (Heusel et al. 2017) or
KIDs (Bińkowski et al. 2018). A noise floor (the test set against the training set) says how
small a distance can be read as "indistinguishable".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from diffusion_lessons.checks import check_labels, check_positive_int
from diffusion_lessons.guidance.labelled import TiltedGrid
from diffusion_lessons.montecarlo import MeanSE, mean_se


def class_accuracy(logits: Tensor, y: Tensor | int) -> MeanSE:
    """The fraction a of samples the classifier assigns to their intended class, with its
    binomial standard error ≈ √(a(1 − a)/n) (:func:`~diffusion_lessons.montecarlo.mean_se` of
    the hits): a :class:`~diffusion_lessons.montecarlo.MeanSE`.

    ``logits: (N, C)`` of a classifier on the samples; ``y``: the intended label, one int or
    ``(N,)``, in 0..C−1 (a label the classifier does not know is an error).
    """
    logits = torch.as_tensor(logits)
    if logits.ndim != 2 or logits.shape[0] < 2:
        raise ValueError(f"logits must have shape (N, C) with N >= 2, got {tuple(logits.shape)}")
    y = check_labels(y, logits.shape[1], allow_null=False)
    if y.ndim == 1 and y.shape != (logits.shape[0],):
        raise ValueError(
            f"y must be one label or (N,) = ({logits.shape[0]},), got {tuple(y.shape)}"
        )
    hits = (logits.argmax(dim=1) == y.to(logits.device)).double()
    return mean_se(hits)


@torch.no_grad()
def penultimate_features(
    classifier: nn.Module, x: Tensor, log_snr: float, *, batch_size: int = 1024
) -> Tensor:
    """The feature extractor: ``classifier.features(x, c)`` at one noise input c = ``log_snr``
    for every row (a clean-image classifier: its highest level), in batches: ``(N, H)`` float64.

    ``classifier`` is anything with ``features(x (B, ...), c (B,))``, e.g.
    :class:`~diffusion_lessons.guidance.guided.NoiseAwareClassifier`.
    """
    check_positive_int(batch_size, name="batch_size")
    if not hasattr(classifier, "features"):
        raise ValueError(f"classifier must have a features(x, c) method, got {type(classifier)}")
    p = next(classifier.parameters(), None) if isinstance(classifier, nn.Module) else None
    dtype = torch.float32 if p is None else p.dtype
    device = "cpu" if p is None else p.device
    out = []
    for chunk in torch.as_tensor(x).split(batch_size):
        c = torch.full((chunk.shape[0],), float(log_snr), dtype=dtype, device=device)
        out.append(classifier.features(chunk.to(device=device, dtype=dtype), c).double().cpu())
    return torch.cat(out)


def _check_features(a: Tensor, b: Tensor, min_rows: int = 2) -> tuple[Tensor, Tensor]:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features_a and features_b must have shapes (N, F) and (M, F) with one F, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < min_rows or b.shape[0] < min_rows:
        raise ValueError(
            f"features_a and features_b need at least {min_rows} rows each, got "
            f"{a.shape[0]} and {b.shape[0]}"
        )
    return a, b


def _sqrt_psd(m: Tensor) -> Tensor:
    """The symmetric square root of a positive semi-definite matrix, via eigh (eigenvalues
    below zero by rounding are set to zero)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def gaussian_frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}): the squared 2-Wasserstein
    (Fréchet) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Dowson & Landau 1982; FID, Heusel et al.
    2017). ``mu: (F,)``, ``cov: (F, F)`` positive semi-definite.

    The cross term is the trace of the square root of the *symmetric* PSD matrix
    Σ₁^{1/2} Σ₂ Σ₁^{1/2}, taken by eigh: no complex parts to discard (``scipy.linalg.sqrtm`` of
    the non-symmetric Σ₁Σ₂ produces them).
    """
    mu1, mu2 = torch.as_tensor(mu1).double(), torch.as_tensor(mu2).double()
    cov1, cov2 = torch.as_tensor(cov1).double(), torch.as_tensor(cov2).double()
    F_ = mu1.shape[0]
    if (
        mu1.shape != (F_,)
        or mu2.shape != (F_,)
        or cov1.shape != (F_, F_)
        or cov2.shape != cov1.shape
    ):
        raise ValueError(
            f"need mu1, mu2: (F,) and cov1, cov2: (F, F); got {tuple(mu1.shape)}, "
            f"{tuple(mu2.shape)}, {tuple(cov1.shape)}, {tuple(cov2.shape)}"
        )
    root1 = _sqrt_psd(cov1)
    cross = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross
    return max(d2.item(), 0.0)


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """The Fréchet distance between two feature sets ``(N, F)`` and ``(M, F)``, squared as FID
    reports it: :func:`gaussian_frechet_distance` between their sample means and covariances
    (n − 1 in the denominator), as FID (Heusel et al. 2017) computes it. Biased
    upwards for finite sets (by about tr Σ/N + tr Σ/M): compare numbers at one set size.
    """
    a, b = _check_features(features_a, features_b)
    return gaussian_frechet_distance(
        a.mean(0),
        torch.cov(a.T, correction=1).reshape(a.shape[1], -1),
        b.mean(0),
        torch.cov(b.T, correction=1).reshape(b.shape[1], -1),
    )


def polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    """k(x, y) = (xᵀy / F + 1)³, the kernel of KID (Bińkowski et al. 2018): ``(N, M)``."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(features_a: Tensor, features_b: Tensor) -> float:
    """The unbiased estimate of MMD² with :func:`polynomial_kernel` (Gretton et al. 2012):
    mean of k(a_i, a_j) over i ≠ j, plus the same for b, minus twice the mean of k(a_i, b_j).
    Its expectation is 0 when both sets come from one distribution; it can be negative."""
    a, b = _check_features(features_a, features_b)
    kaa, kbb, kab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    n, m = a.shape[0], b.shape[0]
    term_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    term_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return (term_a + term_b - 2 * kab.mean()).item()


def kid(features_a: Tensor, features_b: Tensor, *, block_size: int = 1000) -> MeanSE:
    """KID (Bińkowski et al. 2018): :func:`mmd2_unbiased` averaged over disjoint blocks of
    ``block_size`` rows of each set, with the standard error of that mean over the blocks
    (independent blocks, so the SE is honest): a :class:`~diffusion_lessons.montecarlo.MeanSE`.

    Needs at least two blocks: ``min(N, M) >= 2 * block_size``; rows past the last full block
    are not used (shuffle the sets first if their order means anything).
    """
    check_positive_int(block_size, name="block_size")
    a, b = _check_features(features_a, features_b)
    blocks = min(a.shape[0], b.shape[0]) // block_size
    if blocks < 2 or block_size < 2:
        raise ValueError(
            f"kid needs block_size >= 2 and two blocks of it in each set: block_size={block_size}, "
            f"set sizes {a.shape[0]} and {b.shape[0]}"
        )
    draws = [
        mmd2_unbiased(
            a[i * block_size : (i + 1) * block_size], b[i * block_size : (i + 1) * block_size]
        )
        for i in range(blocks)
    ]
    return mean_se(torch.tensor(draws, dtype=torch.float64))


def binned_total_variation(samples: Tensor, grid: TiltedGrid) -> float:
    """½ Σ_cells abs(n_cell / n − p_cell): the total variation distance between the histogram of
    ``samples: (n, D)`` on the grid's cells and the gridded density's cell masses
    p_cell = density × volume (:func:`~diffusion_lessons.guidance.labelled.tilted_density_on_grid`).

    Samples outside the grid count as mass on no cell (they add their fraction in full). Even
    exact draws give a positive value, about ½ Σ √(2 p_cell / (π n)) for many cells: measure
    that noise floor with draws from the grid itself
    (:func:`~diffusion_lessons.guidance.labelled.sample_from_grid`) at the same n.
    """
    samples = torch.as_tensor(samples, dtype=torch.float64)
    points = grid.points
    D = points.shape[1]
    if samples.ndim != 2 or samples.shape[1] != D or samples.shape[0] < 1:
        raise ValueError(
            f"samples must have shape (n, {D}) with n >= 1, got {tuple(samples.shape)}"
        )
    side = grid.cell_volume ** (1 / D)
    low = points.min(0).values - side / 2
    per_axis = round(points.shape[0] ** (1 / D))
    idx = torch.floor((samples - low) / side).long()  # (n, D) cell index along each axis
    inside = ((idx >= 0) & (idx < per_axis)).all(1)
    strides = per_axis ** torch.arange(D - 1, -1, -1)  # cartesian_prod order: last axis fastest
    flat = (idx[inside] * strides).sum(1)
    counts = torch.bincount(flat, minlength=points.shape[0]).double()
    n = samples.shape[0]
    mass = grid.density * grid.cell_volume
    return 0.5 * ((counts / n - mass).abs().sum().item() + (~inside).double().sum().item() / n)


class Interval(NamedTuple):
    """A statistic on the data and a confidence interval [low, high] at ``level``."""

    estimate: float
    low: float
    high: float
    level: float


def bootstrap_interval(
    statistic: Callable[..., float],
    *samples: Tensor,
    n_boot: int = 200,
    level: float = 0.95,
    generator: torch.Generator | None = None,
) -> Interval:
    """The percentile bootstrap interval of ``statistic(*samples)`` (Efron & Tibshirani 1993).

    Each of ``samples`` (rows are independent draws) is resampled with replacement on its own,
    ``n_boot`` times; the interval is the (1 − level)/2 and (1 + level)/2 quantiles of the
    statistic's values over the resamples. For a Fréchet distance it states the sampling error
    of the number, not its finite-set bias.
    """
    check_positive_int(n_boot, name="n_boot")
    if not 0 < level < 1 or not math.isfinite(level):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if not samples:
        raise ValueError("bootstrap_interval needs at least one sample")
    values = []
    for _ in range(n_boot):
        resampled = [
            s[torch.randint(s.shape[0], (s.shape[0],), generator=generator)] for s in samples
        ]
        values.append(float(statistic(*resampled)))
    v = torch.tensor(values, dtype=torch.float64)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(v, q).tolist()
    return Interval(float(statistic(*samples)), low, high, level)
