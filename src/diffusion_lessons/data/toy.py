"""Two-dimensional distributions with exact densities and scores: a Gaussian mixture (and its
law after any amount of forward noise), the eight and two Gaussians, a checkerboard.

Every identity in the book is checkable on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_lessons.checks import check_positive_int

# ---------------------------------------------------------------------------------------------
# 2-D distributions with exact densities


_NOISED_CACHE_SIZE = 4096
"""How many noised mixtures one :class:`GaussianMixture` keeps (about 1 kB each in 2-D)."""


@dataclass(frozen=True)
class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, Σ_k) in D dimensions.

    ``weights: (K,)`` positive, summing to 1; ``means: (K, D)``; ``covs: (K, D, D)`` symmetric
    positive definite. Tensors are float64, so exact quantities are exact to rounding.
    """

    weights: Tensor
    means: Tensor
    covs: Tensor

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weights, dtype=torch.float64)
        m = torch.as_tensor(self.means, dtype=torch.float64)
        c = torch.as_tensor(self.covs, dtype=torch.float64)
        if w.ndim != 1 or m.ndim != 2 or c.ndim != 3:
            raise ValueError(
                "weights, means, covs must have shapes (K,), (K, D), (K, D, D); got "
                f"{tuple(w.shape)}, {tuple(m.shape)}, {tuple(c.shape)}"
            )
        K, D = m.shape
        if w.shape[0] != K or c.shape != (K, D, D):
            raise ValueError(
                f"weights, means, covs disagree: weights {tuple(w.shape)}, means {tuple(m.shape)}, "
                f"covs {tuple(c.shape)}; expected (K,), (K, D), (K, D, D)"
            )
        if (w <= 0).any() or abs(w.sum().item() - 1.0) > 1e-9:
            raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}")
        if not torch.allclose(c, c.transpose(1, 2)) or (torch.linalg.eigvalsh(c) <= 0).any():
            raise ValueError("covs must be symmetric positive definite")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "covs", c)
        # Factorizations used by every density and score call, computed once: L_k with
        # Σ_k = L_k L_kᵀ, L_k⁻¹, Σ_k⁻¹ and log det Σ_k.
        chol = torch.linalg.cholesky(c)
        eye = torch.eye(D, dtype=torch.float64).expand(K, D, D)
        chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        object.__setattr__(self, "_chol", chol)
        object.__setattr__(self, "_chol_inv", chol_inv)
        object.__setattr__(self, "_precision", chol_inv.transpose(1, 2) @ chol_inv)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        object.__setattr__(self, "_log_det", log_det)
        object.__setattr__(self, "_noised", {})  # ᾱ → noised(ᾱ), see noised()

    @property
    def precisions(self) -> Tensor:
        """Σ_k⁻¹ for each component: ``(K, D, D)``, float64 (computed once, from Cholesky)."""
        return self._precision

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points: shape ``(n, D)``, float64."""
        check_positive_int(n, name="n")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + torch.einsum("nij,nj->ni", self._chol[k], z)

    def component_log_probs(self, x: Tensor) -> Tensor:
        """log w_k + log N(x; μ_k, Σ_k) for each point and component: ``(N, K)``."""
        x = self._check_points(x)
        diff = x[:, None, :] - self.means[None]  # (N, K, D)
        sol = torch.einsum("kij,nkj->nki", self._chol_inv, diff)  # L_k⁻¹ (x − μ_k)
        maha = torch.einsum("nkd,nkd->nk", sol, sol)  # (N, K)
        return torch.log(self.weights) - 0.5 * (
            maha + self._log_det + self.dim * math.log(2 * math.pi)
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) for ``x: (N, D)``: shape ``(N,)``."""
        return torch.logsumexp(self.component_log_probs(x), dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """p(k | x) for ``x: (N, D)``: shape ``(N, K)``."""
        return torch.softmax(self.component_log_probs(x), dim=1)

    def score(self, x: Tensor) -> Tensor:
        """∇_x log p(x) = Σ_k p(k | x) Σ_k⁻¹ (μ_k − x), for ``x: (N, D)``: shape ``(N, D)``."""
        x = self._check_points(x)
        r = self.responsibilities(x)  # (N, K)
        diff = self.means[None] - x[:, None, :]  # (N, K, D)
        pulls = torch.einsum("kij,nkj->nki", self._precision, diff)  # Σ_k⁻¹ (μ_k − x)
        return torch.einsum("nk,nkd->nd", r, pulls)

    def noised(self, alpha_bar: float) -> GaussianMixture:
        """The law of x_t = √ᾱ x_0 + √(1 − ᾱ) ε when x_0 follows this mixture.

        Each component N(μ, Σ) becomes N(√ᾱ μ, ᾱ Σ + (1 − ᾱ) I); the weights stay.
        ``alpha_bar`` must lie in [0, 1]. The noised mixture of each ᾱ is built (checked and
        factorized) once and then reused: a sampler asks for the same levels at every run.
        """
        if not 0.0 <= float(alpha_bar) <= 1.0:
            raise ValueError(f"alpha_bar must lie in [0, 1], got {alpha_bar!r}")
        a = float(alpha_bar)
        if a not in self._noised:
            if len(self._noised) >= _NOISED_CACHE_SIZE:
                self._noised.clear()
            eye = torch.eye(self.dim, dtype=torch.float64)
            self._noised[a] = GaussianMixture(
                self.weights, math.sqrt(a) * self.means, a * self.covs + (1 - a) * eye
            )
        return self._noised[a]

    def mean(self) -> Tensor:
        """E[x]: shape ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x] = Σ_k w_k (Σ_k + μ_k μ_kᵀ) − E[x] E[x]ᵀ: shape ``(D, D)``."""
        m = self.mean()
        second = torch.einsum(
            "k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :]
        )
        return second - torch.outer(m, m)

    def _check_points(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        return x.to(torch.float64)


def isotropic_mixture(weights, means, std: float) -> GaussianMixture:
    """A mixture whose components all have covariance std² I."""
    means = torch.as_tensor(means, dtype=torch.float64)
    K, D = means.shape
    covs = (std**2) * torch.eye(D, dtype=torch.float64).expand(K, D, D).clone()
    return GaussianMixture(torch.as_tensor(weights, dtype=torch.float64), means, covs)


def eight_gaussians(radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """Eight equal Gaussians evenly spaced on a circle: the classic 2-D toy distribution."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return isotropic_mixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, std)


def two_gaussians(distance: float = 2.0, std: float = 0.5, weight: float = 0.5) -> GaussianMixture:
    """Two Gaussians at (±distance/2, 0) with weights (weight, 1 − weight)."""
    means = torch.tensor([[-distance / 2, 0.0], [distance / 2, 0.0]], dtype=torch.float64)
    return isotropic_mixture([weight, 1 - weight], means, std)


@dataclass(frozen=True)
class Checkerboard:
    """Uniform density on the dark squares of a ``size`` × ``size`` board covering [−half, half]².

    Square (i, j) is dark when i + j is even. The exact density is 1 / (dark area) there, 0 elsewhere.
    """

    size: int = 4
    half: float = 2.0

    @property
    def cell(self) -> float:
        return 2 * self.half / self.size

    def _dark_cells(self) -> Tensor:
        ij = torch.cartesian_prod(torch.arange(self.size), torch.arange(self.size))
        return ij[(ij.sum(1) % 2) == 0]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points: shape ``(n, 2)``, float64."""
        check_positive_int(n, name="n")
        cells = self._dark_cells()
        k = torch.randint(len(cells), (n,), generator=generator)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return -self.half + (cells[k].double() + u) * self.cell

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) for ``x: (N, 2)``: log(1 / dark area) on dark squares, −inf elsewhere."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must have shape (N, 2), got {tuple(x.shape)}")
        idx = torch.floor((x + self.half) / self.cell)
        inside = ((idx >= 0) & (idx < self.size)).all(1)
        dark = (idx.sum(1) % 2) == 0
        area = len(self._dark_cells()) * self.cell**2
        out = torch.full((x.shape[0],), -math.inf, dtype=torch.float64)
        out[inside & dark] = -math.log(area)
        return out
