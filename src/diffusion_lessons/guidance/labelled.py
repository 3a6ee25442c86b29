"""A labelled Gaussian mixture: the exact oracle of chapter 9, at every noise level.

The classes are groups of components: component k of the mixture p(x) = Σ_k w_k N(x; μ_k, Σ_k)
(:class:`~diffusion_lessons.data.toy.GaussianMixture`) belongs to class ``labels[k]``, so

    p(y) = Σ_{k ∈ y} w_k,    p(x | y) = Σ_{k ∈ y} (w_k / p(y)) N(x; μ_k, Σ_k),
    p(y | x) = p(x | y) p(y) / p(x)                                         (Bayes)

are mixtures again, and so is their law after forward noise (each component N(μ, Σ) becomes
N(√ᾱ μ, ᾱ Σ + σ² I), ``eq-forward-marginal``). Everything the chapter compares a learned object
with is therefore exact: p(x_t), p(x_t | y), p(y | x_t) and its gradient, the scores, the
conditional denoiser E[x_0 | x_t, y] (``eq-score-eps`` per class), and the tilted density
p(x | y)^γ p(x)^{1−γ} that guidance with weight w = γ − 1 is often said to sample (it does not:
Chidambaram et al. 2024; Bradley & Nakkiran 2024), normalized on a grid.

Labels are integers 0..C−1; the label C is the *null label*, "no class", which the conditional
denoiser answers with the unconditional one (as a classifier-free model does, Ho & Salimans 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from diffusion_lessons.checks import check_labels, check_positive_int
from diffusion_lessons.data.oracles import mixture_denoiser
from diffusion_lessons.data.toy import GaussianMixture
from diffusion_lessons.denoisers.denoiser import Denoiser


def _rows_labels(y: Tensor | int, n: int, num_classes: int, *, allow_null: bool) -> Tensor:
    """Labels for ``n`` rows: an int (every row) or a ``(n,)`` tensor, checked."""
    y = check_labels(y, num_classes, allow_null=allow_null)
    if y.ndim == 0:
        return y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"y must be one label or have shape (N,) = ({n},), got {tuple(y.shape)}")
    return y


class TiltedGrid(NamedTuple):
    """A density tabulated on a regular grid of cubic cells: ``points: (M, D)`` the cell centres
    (:func:`grid_points`), ``density: (M,)`` (summing to 1 / ``cell_volume``), ``cell_volume``
    the volume of each cell."""

    points: Tensor
    density: Tensor
    cell_volume: float


@dataclass(frozen=True)
class LabelledMixture:
    """A Gaussian mixture whose components are grouped into classes.

    ``mixture``: the :class:`~diffusion_lessons.data.toy.GaussianMixture` p(x) (K components in
    D dimensions); ``labels: (K,)`` the class 0..C−1 of each component, every class used at
    least once. Points ``x: (N, D)``, labels ``y: (N,)`` or one int; everything is float64.
    """

    mixture: GaussianMixture
    labels: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.mixture, GaussianMixture):
            raise ValueError(
                f"mixture must be a data.toy.GaussianMixture, got {type(self.mixture).__name__}"
            )
        labels = torch.as_tensor(self.labels)
        K = self.mixture.weights.shape[0]
        if labels.shape != (K,) or labels.is_floating_point():
            raise ValueError(
                f"labels must hold one integer class per component, shape ({K},), got "
                f"shape {tuple(labels.shape)} and dtype {labels.dtype}"
            )
        labels = labels.long()
        used = torch.unique(labels)
        if labels.min() < 0 or not torch.equal(used, torch.arange(len(used))):
            raise ValueError(
                f"labels must use every class 0..C−1 at least once, got {labels.tolist()}"
            )
        object.__setattr__(self, "labels", labels)

    @property
    def num_classes(self) -> int:
        """C, the number of classes (the null label is C)."""
        return int(self.labels.max().item()) + 1

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def class_prior(self) -> Tensor:
        """p(y) = Σ_{k ∈ y} w_k: shape ``(C,)``."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(
            0, self.labels, self.mixture.weights
        )

    def class_mixture(self, y: int) -> GaussianMixture:
        """p(x | y): the components of class ``y`` with weights w_k / p(y)."""
        y = int(check_labels(y, self.num_classes, allow_null=False).item())
        keep = self.labels == y
        w = self.mixture.weights[keep]
        return GaussianMixture(w / w.sum(), self.mixture.means[keep], self.mixture.covs[keep])

    def noised(self, alpha_bar: float) -> LabelledMixture:
        """The labelled law of (x_t, y): every component noised (``eq-forward-marginal``), the
        labels kept."""
        return LabelledMixture(self.mixture.noised(alpha_bar), self.labels)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` labelled points: ``x: (n, D)`` float64 and ``y: (n,)`` long."""
        check_positive_int(n, name="n")
        weights = self.class_prior()
        y = torch.multinomial(weights, n, replacement=True, generator=generator)
        x = torch.empty(n, self.dim, dtype=torch.float64)
        for c in range(self.num_classes):
            rows = y == c
            if rows.any():
                x[rows] = self.class_mixture(c).sample(int(rows.sum()), generator=generator)
        return x, y

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x): shape ``(N,)``."""
        return self.mixture.log_prob(x)

    def log_prob_given(self, x: Tensor, y: Tensor | int) -> Tensor:
        """log p(x | y), row n under its own label y_n: shape ``(N,)``."""
        return self._per_class(x, y, lambda m, rows: m.log_prob(rows), ())

    def score(self, x: Tensor) -> Tensor:
        """∇_x log p(x): shape ``(N, D)``."""
        return self.mixture.score(x)

    def score_given(self, x: Tensor, y: Tensor | int) -> Tensor:
        """∇_x log p(x | y), the score of the class's own mixture: shape ``(N, D)``."""
        return self._per_class(x, y, lambda m, rows: m.score(rows), (self.dim,))

    def class_log_probs(self, x: Tensor) -> Tensor:
        """log p(y | x) for every class: shape ``(N, C)``, each row's exponentials summing to 1.

        log p(y | x) = logsumexp_{k ∈ y} ℓ_k(x) − logsumexp_k ℓ_k(x), ℓ_k = log w_k N(x; μ_k, Σ_k).
        Differentiable in x (the gradient :meth:`class_log_prob_grad` writes in closed form).
        """
        comp = self.mixture.component_log_probs(x)  # (N, K)
        member = self.labels[None, :] == torch.arange(self.num_classes)[:, None]  # (C, K)
        per_class = torch.where(member[None], comp[:, None, :], -math.inf)  # (N, C, K)
        return torch.logsumexp(per_class, dim=2) - torch.logsumexp(comp, dim=1, keepdim=True)

    def class_log_prob_grad(self, x: Tensor, y: Tensor | int) -> Tensor:
        """∇_x log p(y | x), in closed form: Σ_k [p(k | x, y) − p(k | x)] Σ_k⁻¹ (μ_k − x).

        Row n under its label y_n; shape ``(N, D)``. Here p(k | x, y) is the responsibility of
        component k within class y (zero outside it): the gradient that classifier guidance
        adds, s ∇ log p(y | x_t) (Dhariwal & Nichol 2021).
        """
        x = _points(x, self.dim)
        y = _rows_labels(y, x.shape[0], self.num_classes, allow_null=False)
        comp = self.mixture.component_log_probs(x)  # (N, K)
        in_class = self.labels[None, :] == y[:, None]  # (N, K)
        within = torch.softmax(torch.where(in_class, comp, -math.inf), dim=1)
        diff = self.mixture.means[None] - x[:, None, :]  # (N, K, D)
        pulls = torch.linalg.solve(self.mixture.covs[None], diff[..., None])[..., 0]
        return ((within - torch.softmax(comp, dim=1))[..., None] * pulls).sum(1)

    def tilted_log_prob(self, x: Tensor, y: Tensor | int, gamma: float) -> Tensor:
        """γ log p(x | y) + (1 − γ) log p(x), the *unnormalized* log of the tilted density
        p(x | y)^γ p(x)^{1−γ} ∝ p(x) p(y | x)^γ: shape ``(N,)``."""
        gamma = _check_finite(gamma, "gamma")
        return gamma * self.log_prob_given(x, y) + (1 - gamma) * self.log_prob(x)

    def tilted_score(self, x: Tensor, y: Tensor | int, gamma: float) -> Tensor:
        """γ ∇log p(x | y) + (1 − γ) ∇log p(x): the score of the tilted density, ``(N, D)``.

        On the noised mixture (:meth:`noised`) this is what classifier-free guidance with weight
        w = γ − 1 follows at that noise level (Ho & Salimans 2022), which is *not* the score of
        the noised tilted density.
        """
        gamma = _check_finite(gamma, "gamma")
        return gamma * self.score_given(x, y) + (1 - gamma) * self.score(x)

    def _per_class(self, x: Tensor, y: Tensor | int, fn, trailing: tuple[int, ...]) -> Tensor:
        """``fn(class_mixture(c), rows)`` for the rows of each class c, reassembled."""
        x = _points(x, self.dim)
        y = _rows_labels(y, x.shape[0], self.num_classes, allow_null=False)
        out = torch.empty((x.shape[0], *trailing), dtype=torch.float64)
        for c in torch.unique(y).tolist():
            rows = y == c
            out[rows] = fn(self.class_mixture(c), x[rows])
        return out


def _points(x: Tensor, dim: int) -> Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape (N, {dim}), got {tuple(x.shape)}")
    return x.to(torch.float64)


def _check_finite(value: float, name: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def grid_points(low: float, high: float, n: int, dim: int = 2) -> tuple[Tensor, float]:
    """The centres of an n^D grid of cells covering [low, high]^D: ``(n^D, D)`` float64, and the
    volume of one cell ((high − low)/n)^D."""
    if not high > low or n < 2 or dim < 1 or n**dim > 4_000_000:
        raise ValueError(
            "need high > low, n >= 2 and n**dim <= 4e6, got "
            f"low={low}, high={high}, n={n}, dim={dim}"
        )
    h = (high - low) / n
    axis = low + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    points = torch.cartesian_prod(*([axis] * dim)).reshape(-1, dim)
    return points, h**dim


def tilted_density_on_grid(
    oracle: LabelledMixture, y: int, gamma: float, *, low: float, high: float, n: int
) -> TiltedGrid:
    """p_γ(x | y) = p(x | y)^γ p(x)^{1−γ} / Z, normalized on the grid of :func:`grid_points`.

    Z is the grid's Riemann sum, so ``density.sum() * cell_volume == 1``; at γ = 1 it is p(x | y)
    (up to the mass outside [low, high]^D and the quadrature error), at γ = 0 it is p(x). Choose
    the box so that it holds the mass: for γ > 1 the tilt pushes mass away from the other
    classes (Chidambaram et al. 2024).
    """
    points, volume = grid_points(low, high, n, oracle.dim)
    log_p = oracle.tilted_log_prob(points, y, gamma)
    log_z = torch.logsumexp(log_p, dim=0) + math.log(volume)
    return TiltedGrid(points, torch.exp(log_p - log_z), volume)


def sample_from_grid(
    grid: TiltedGrid, n: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` draws ``(n, D)`` from a gridded density: a cell with probability density × volume,
    then a uniform point in it. Exact draws from the tilted distribution up to the grid's
    resolution, e.g. the reference set that guided samples are held against."""
    check_positive_int(n, name="n")
    cells = torch.multinomial(
        grid.density * grid.cell_volume, n, replacement=True, generator=generator
    )
    side = grid.cell_volume ** (1 / grid.points.shape[1])
    jitter = torch.rand(n, grid.points.shape[1], generator=generator, dtype=torch.float64) - 0.5
    return grid.points[cells] + side * jitter


def exact_denoiser_given(oracle: LabelledMixture, y: Tensor | int) -> Denoiser:
    """E[x_0 | x_t, y]: the exact conditional denoiser of each row's class, as a plain
    :data:`~diffusion_lessons.denoisers.denoiser.Denoiser` ``(x_t (B, D), log_snr (B,)) → (B, D)``.

    ``y``: one label or ``(B,)`` labels; the null label C gives the unconditional E[x_0 | x_t]
    (:func:`~diffusion_lessons.data.oracles.mixture_denoiser`). Its score is that of p(x_t | y)
    (``eq-score-eps``, applied to the class's own mixture).
    """
    C = oracle.num_classes
    y = check_labels(y, C, allow_null=True)
    per_class = [mixture_denoiser(oracle.class_mixture(c)) for c in range(C)]
    per_class.append(mixture_denoiser(oracle.mixture))

    def x0_hat(xt: Tensor, log_snr: Tensor) -> Tensor:
        labels = _rows_labels(y, xt.shape[0], C, allow_null=True)
        lam = torch.as_tensor(log_snr)
        if lam.shape != (xt.shape[0],):
            raise ValueError(
                f"log_snr must have shape (B,) = ({xt.shape[0]},), got {tuple(lam.shape)}"
            )
        out = torch.empty_like(xt)
        for c in torch.unique(labels).tolist():
            rows = labels == c
            out[rows] = per_class[c](xt[rows], lam[rows])
        return out

    return x0_hat


def exact_classifier(oracle: LabelledMixture) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact noise-aware classifier: ``(x_t (B, D), log_snr (B,)) → log p(y | x_t) (B, C)``.

    Row b is :meth:`LabelledMixture.class_log_probs` of the mixture noised to ᾱ_b = sigmoid(λ_b)
    (computed once per distinct λ). Its outputs are log-probabilities, hence valid logits: it
    stands wherever a trained classifier network does, e.g. in
    :func:`~diffusion_lessons.guidance.guided.classifier_log_prob`. Differentiable in x_t.
    """

    def logits(xt: Tensor, log_snr: Tensor) -> Tensor:
        lam = torch.as_tensor(log_snr, dtype=torch.float64)
        if xt.ndim != 2 or lam.shape != (xt.shape[0],):
            raise ValueError(
                f"need xt: (B, {oracle.dim}) and log_snr: (B,), got {tuple(xt.shape)} and "
                f"{tuple(lam.shape)}"
            )
        levels, which = torch.unique(lam, return_inverse=True)
        parts, order = [], []
        for k, level in enumerate(levels.tolist()):
            rows = torch.nonzero(which == k)[:, 0]
            ab = torch.sigmoid(torch.tensor(level, dtype=torch.float64)).item()
            parts.append(oracle.noised(ab).class_log_probs(xt[rows]))
            order.append(rows)
        out = torch.cat(parts)[torch.argsort(torch.cat(order))]  # differentiable reassembly
        return out.to(xt.dtype)

    return logits
