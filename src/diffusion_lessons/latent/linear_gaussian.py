"""The evidence lower bound on a model where everything is exact.

The linear-Gaussian latent-variable model (chapter 1)

    z ~ N(0, I_k),    x | z ~ N(W z + b, s² I_d),    W: (d, k), b: (d,), s > 0

has a Gaussian evidence p(x) = N(b, W Wᵀ + s² I) and a Gaussian posterior p(z | x), so the ELBO of
any Gaussian q(z | x), its gap to log p(x) and the importance-weighted (IWAE) bound can all be
compared with exact values. The model is one frozen :class:`LinearGaussian` ``(W, b, s)``,
checked once when it is made. Batches: ``x: (B, d)``; a Gaussian q is a mean ``(B, k)`` and a
covariance ``(k, k)`` or ``(B, k, k)``. Everything returns one value per example, ``(B,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_lessons.gaussians import LOG_2PI, gaussian_log_prob, kl_gaussians_full, mvn_log_prob


@dataclass(frozen=True)
class LinearGaussian:
    """The linear-Gaussian model z ~ N(0, I_k), x | z ~ N(W z + b, s² I_d).

    ``W: (d, k)``, ``b: (d,)``, ``s > 0`` (the observation noise standard deviation).
    """

    W: Tensor
    b: Tensor
    s: float

    def __post_init__(self) -> None:
        if self.W.ndim != 2:
            raise ValueError(f"W must have shape (d, k), got {tuple(self.W.shape)}")
        d = self.W.shape[0]
        if self.b.shape != (d,):
            raise ValueError(f"b must have shape (d,) = ({d},), got {tuple(self.b.shape)}")
        if not self.s > 0:
            raise ValueError(f"s (the observation noise std) must be > 0, got {self.s}")

    def check_x(self, x: Tensor) -> Tensor:
        """``x`` after checking its shape ``(B, d)``."""
        if x.ndim != 2 or x.shape[1] != self.W.shape[0]:
            raise ValueError(
                f"x must have shape (B, d) with d = {self.W.shape[0]}, got {tuple(x.shape)}"
            )
        return x


def linear_gaussian_log_evidence(model: LinearGaussian, x: Tensor) -> Tensor:
    """log p(x) = log N(x; b, W Wᵀ + s² I) (``eq-lg-evidence``): ``x: (B, d)`` → ``(B,)``."""
    W, b, s = model.W, model.b, model.s
    model.check_x(x)
    cov = W @ W.T + s**2 * torch.eye(W.shape[0], dtype=W.dtype)
    return mvn_log_prob(x, b.expand_as(x), cov)


def linear_gaussian_posterior(model: LinearGaussian, x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(B, k)`` and covariance ``(k, k)`` of p(z | x) (``eq-lg-posterior``).

    Σ = (I + Wᵀ W / s²)⁻¹ and μ = Σ Wᵀ (x − b) / s², by completing the square in z.
    """
    W, b, s = model.W, model.b, model.s
    model.check_x(x)
    precision = torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / s**2
    cov = torch.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    return (x - b) @ W @ cov / s**2, cov


def linear_gaussian_expected_log_likelihood(
    model: LinearGaussian, x: Tensor, q_mean: Tensor, q_cov: Tensor
) -> Tensor:
    """E_q[log p(x | z)] for q = N(q_mean, q_cov) in closed form (``eq-lg-reconstruction``) → ``(B,)``.

    −d/2 log(2π s²) − (‖x − W μ_q − b‖² + tr(W Σ_q Wᵀ)) / (2 s²).
    """
    W, b, s = model.W, model.b, model.s
    model.check_x(x)
    d = W.shape[0]
    residual = ((x - q_mean @ W.T - b) ** 2).sum(-1)
    trace = (W @ q_cov @ W.T).diagonal(dim1=-2, dim2=-1).sum(-1)
    return -0.5 * d * (LOG_2PI + 2 * math.log(s)) - (residual + trace) / (2 * s**2)


def linear_gaussian_elbo(model: LinearGaussian, x: Tensor, q_mean: Tensor, q_cov: Tensor) -> Tensor:
    """ELBO = E_q[log p(x | z)] − KL(q(z | x) ‖ p(z)) in closed form (``eq-elbo-recon-kl``) → ``(B,)``."""
    k = model.W.shape[1]
    prior_kl = kl_gaussians_full(
        q_mean, q_cov, torch.zeros_like(q_mean), torch.eye(k, dtype=model.W.dtype)
    )
    return linear_gaussian_expected_log_likelihood(model, x, q_mean, q_cov) - prior_kl


def linear_gaussian_log_weights(
    model: LinearGaussian,
    x: Tensor,
    q_mean: Tensor,
    q_cov: Tensor,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log w = log p(x, z) − log q(z | x) at ``num_samples`` draws z ~ q per example → ``(K, B)``.

    Their mean is a Monte Carlo ELBO (``eq-elbo-jensen``); :func:`~diffusion_lessons.latent.estimators.iwae_bound` turns them into the
    importance-weighted bound.
    """
    W, b, s = model.W, model.b, model.s
    model.check_x(x)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    B, k = q_mean.shape
    chol = torch.linalg.cholesky(q_cov)
    eps = torch.randn(num_samples, B, k, generator=generator, dtype=q_mean.dtype)
    z = q_mean + (chol @ eps.unsqueeze(-1)).squeeze(-1)  # (K, B, k)
    zf = z.reshape(-1, k)
    xf = x.expand(num_samples, B, x.shape[1]).reshape(-1, x.shape[1])
    log_lik = gaussian_log_prob(xf, zf @ W.T + b, torch.full_like(xf, 2 * math.log(s)))
    log_prior = gaussian_log_prob(zf, torch.zeros_like(zf), torch.zeros_like(zf))
    cov = q_cov.expand(num_samples, B, k, k).reshape(-1, k, k) if q_cov.ndim == 3 else q_cov
    log_q = mvn_log_prob(zf, q_mean.expand(num_samples, B, k).reshape(-1, k), cov)
    return (log_lik + log_prior - log_q).reshape(num_samples, B)
