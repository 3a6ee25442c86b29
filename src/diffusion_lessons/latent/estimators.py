"""Estimators built on the ELBO: the importance-weighted bound (IWAE), held-out ELBO and IWAE of
a model, and two gradient estimators (REINFORCE and the reparameterization trick), chapters 1–2.

:func:`evaluate` takes the model's own ELBO and log-weight functions as arguments, so it serves
the VAE and the hierarchical VAE alike without knowing either."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffusion_lessons.checks import check_positive_int


def iwae_bound(log_weights: Tensor) -> Tensor:
    """Importance-weighted bound log (1/K) Σ_k w_k (``eq-iwae``): ``log_weights: (K, B)`` → ``(B,)``.

    K = 1 gives the ELBO and every L_K ≤ log p(x) (Jensen). In expectation L_K does not decrease
    with K (Burda et al. 2016, Theorem 1: average over random subsets, then Jensen), and it tends
    to log p(x) as K → ∞ when the weights p(x, z)/q(z | x) are bounded.
    """
    if log_weights.ndim != 2:
        raise ValueError(f"log_weights must have shape (K, B), got {tuple(log_weights.shape)}")
    return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    *,
    elbo_terms: Callable[[nn.Module, Tensor, torch.Generator], dict],
    log_weights: Callable[[nn.Module, Tensor, int, torch.Generator], Tensor],
    num_samples: int = 100,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, Tensor]:
    """Held-out ELBO (one sample per image) and IWAE bound (``eq-iwae``) of ``model`` on ``x: (M, D)``.

    ``elbo_terms(model, x, generator)["elbo"]`` is the model's one-sample ELBO and
    ``log_weights(model, x, K, generator)`` its log-weights ``(K, B)``, e.g.
    :func:`~diffusion_lessons.latent.vae.elbo_terms` and
    :func:`~diffusion_lessons.latent.vae.vae_log_weights`, or the hierarchy's
    :func:`~diffusion_lessons.latent.hvae.hvae_elbo_terms` and
    :func:`~diffusion_lessons.latent.hvae.hvae_log_weights`. Returns ``elbo`` and ``iwae``
    (with ``num_samples`` samples), each ``(M,)`` in nats; one generator seeded by ``seed``
    draws everything, batch by batch.
    """
    check_positive_int(num_samples, name="num_samples")
    check_positive_int(batch_size, name="batch_size")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    elbos, iwaes = [], []
    for chunk in x.split(batch_size):
        elbos.append(elbo_terms(model, chunk, gen)["elbo"])
        iwaes.append(iwae_bound(log_weights(model, chunk, num_samples, gen)))
    return {"elbo": torch.cat(elbos), "iwae": torch.cat(iwaes)}


# --- gradient estimators for ∇_μ E_{N(z; μ, σ² I)}[f(z)] ---


def reinforce_gradient_samples(
    f: Callable[[Tensor], Tensor],
    mean: Tensor,
    std: Tensor | float,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    baseline: float = 0.0,
) -> Tensor:
    """Per-sample score-function (REINFORCE) estimates of ∇_μ E_q[f(z)] (``eq-reinforce``): ``(n, D)``.

    (f(z) − baseline) ∇_μ log q(z) = (f(z) − baseline) (z − μ) / σ² with z ~ N(μ, σ² I); their mean
    is the estimator. ``mean: (D,)``, ``f: (n, D) → (n,)``. A constant baseline keeps it unbiased.
    """
    std = torch.as_tensor(std, dtype=mean.dtype)
    eps = torch.randn(num_samples, mean.shape[0], generator=generator, dtype=mean.dtype)
    z = mean + std * eps
    with torch.no_grad():
        fz = f(z)
    return (fz - baseline)[:, None] * (z - mean) / std**2


def reparam_gradient_samples(
    f: Callable[[Tensor], Tensor],
    mean: Tensor,
    std: Tensor | float,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample reparameterized estimates of ∇_μ E_q[f(z)] (``eq-reparam``): ``(n, D)``.

    z = μ + σ ε with ε ~ N(0, I), so ∇_μ f(μ + σ ε) = ∇f(z), computed by autograd.
    """
    std = torch.as_tensor(std, dtype=mean.dtype)
    eps = torch.randn(num_samples, mean.shape[0], generator=generator, dtype=mean.dtype)
    mu = mean.detach().expand(num_samples, -1).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(mu + std * eps).sum(), mu)
    return grad
