"""The variational autoencoder: one latent level (chapter 1); the hierarchy is in ``hvae``.

Images are flattened, ``x: (B, D)``, with values on the grid of ``bins`` levels in [−1, 1]. The
decoder's likelihood p(x | z) is a Gaussian *discretized* to those levels
(:func:`~diffusion_lessons.gaussians.discretized_gaussian_log_prob`), so it is a probability
mass function on the data's own values: log-likelihoods and bounds are in nats of a discrete
distribution, and bits per dimension compare directly with log2(bins) (a uniform guess).
Every ELBO term is returned per example, ``(B,)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffusion_lessons.checks import check_positive_int
from diffusion_lessons.gaussians import (
    LOG_2PI,
    discretized_gaussian_log_prob,
    gaussian_log_prob,
    kl_standard_normal,
)


def to_levels(x: Tensor, bins: int) -> Tensor:
    """Integer levels 0..bins−1 of values on the grid k ↦ 2k/(bins − 1) − 1."""
    return torch.round((x + 1) / 2 * (bins - 1)).long()


def factorized_categorical_log_prob(
    train: Tensor, test: Tensor, bins: int, *, pseudocount: float = 1.0
) -> Tensor:
    """log P(x) under independent per-pixel categoricals fitted to ``train`` frequencies → ``(M,)``.

    P(pixel i = k) = (count_ik + pseudocount) / (N + bins · pseudocount). The best model that
    ignores every dependence between pixels: a baseline any latent-variable model should beat.
    """
    lt, lx = to_levels(train, bins), to_levels(test, bins)
    counts = torch.zeros(train.shape[1], bins, dtype=torch.float64)
    counts.scatter_add_(1, lt.T, torch.ones_like(lt.T, dtype=torch.float64))
    log_p = torch.log(counts + pseudocount) - math.log(train.shape[0] + bins * pseudocount)
    return log_p.gather(1, lx.T).sum(0)


class GaussianMLP(nn.Module):
    """An MLP ``(B, n_in) → (mean, log_var)``, each ``(B, n_out)``: a diagonal Gaussian layer."""

    def __init__(self, n_in: int, n_out: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * n_out),
        )

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.net(h).chunk(2, dim=-1)
        return mean, log_var.clamp(-12.0, 8.0)


class DiscretizedGaussianDecoder(nn.Module):
    """p(x | z): an MLP for the mean, one learned log-scale per pixel, discretized to ``bins`` levels."""

    def __init__(self, latent_dim: int, data_dim: int, hidden: int, bins: int):
        super().__init__()
        self.bins = bins
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, data_dim),
        )
        self.log_scale = nn.Parameter(torch.full((data_dim,), -1.0))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.net(z)
        return mean, self.log_scale.clamp(min=-6.0).expand_as(mean)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) in nats → ``(B,)``."""
        mean, log_scale = self(z)
        return discretized_gaussian_log_prob(x, mean, log_scale, bins=self.bins)


def reparameterize(
    mean: Tensor, log_var: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """z = μ + σ ε with ε ~ N(0, I) (``eq-reparam``): differentiable in μ and log σ²."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + (0.5 * log_var).exp() * eps


class VAE(nn.Module):
    """Encoder q(z | x) = N(μ(x), diag σ²(x)), prior p(z) = N(0, I), decoder p(x | z) discretized Gaussian."""

    def __init__(self, data_dim: int, latent_dim: int = 8, hidden: int = 128, bins: int = 17):
        super().__init__()
        check_positive_int(latent_dim, name="latent_dim")
        self.latent_dim = latent_dim
        self.encoder = GaussianMLP(data_dim, latent_dim, hidden)
        self.decoder = DiscretizedGaussianDecoder(latent_dim, data_dim, hidden, bins)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Decoder means at n draws from the prior → ``(n, D)``."""
        dev = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=dev)
        return self.decoder(z)[0]


def reconstruction_term(model: VAE, x: Tensor, z: Tensor) -> Tensor:
    """log p(x | z) at a sample z ~ q(z | x): a one-sample estimate of E_q[log p(x | z)] (``eq-elbo-recon-kl``)."""
    return model.decoder.log_prob(x, z)


def kl_term(mean: Tensor, log_var: Tensor) -> Tensor:
    """KL(q(z | x) ‖ N(0, I)) in closed form (``eq-elbo-recon-kl``) → ``(B,)``."""
    return kl_standard_normal(mean, log_var)


def kl_per_dimension(mean: Tensor, log_var: Tensor) -> Tensor:
    """The same KL, dimension by dimension → ``(B, k)``; an unused ("collapsed") dimension has ≈ 0."""
    return kl_standard_normal(mean.reshape(-1, 1), log_var.reshape(-1, 1)).reshape(mean.shape)


def _log_q_pairs(z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(z_r; mean_n, diag e^{log_var_n}) for every pair: ``z: (R, k)``, ``mean: (M, k)`` → ``(R, M)``."""
    diff = z[:, None] - mean[None]  # (R, M, k)
    return -0.5 * (LOG_2PI + log_var[None] + diff**2 / log_var.exp()[None]).sum(-1)


@torch.no_grad()
def rate_decomposition(
    mean: Tensor,
    log_var: Tensor,
    *,
    num_samples: int = 20,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Split the rate of a diagonal-Gaussian encoder on M data points into information and mismatch.

    ``mean``, ``log_var``: ``(M, k)``, the encoder's q(z | x_m) for data points x_1..x_M. With x
    uniform on those points and the aggregate posterior q(z) = (1/M) Σ_m q(z | x_m),

        rate = E_x KL(q(z | x) ‖ N(0, I)) = I_q(x; z) + KL(q(z) ‖ N(0, I))

    (Hoffman & Johnson 2016), so the rate is an upper bound on the mutual information, which is
    itself at most log M. Returns 0-dim tensors: ``rate`` (closed form), Monte Carlo estimates
    ``mutual_information`` and ``marginal_kl`` from ``num_samples`` draws z ~ q(z | x_m) per point,
    and their standard errors ``mutual_information_se``, ``marginal_kl_se``.
    """
    check_positive_int(num_samples, name="num_samples")
    if mean.ndim != 2 or mean.shape != log_var.shape:
        raise ValueError(
            "mean and log_var must both have shape (M, k), got "
            f"{tuple(mean.shape)} and {tuple(log_var.shape)}"
        )
    m = mean.shape[0]
    info, mismatch = [], []
    for _ in range(num_samples):
        z = reparameterize(mean, log_var, generator)  # (M, k): one z per data point
        log_q_cond = gaussian_log_prob(z, mean, log_var)  # log q(z_m | x_m): (M,)
        # log q(z_m) = log (1/M) Σ_n q(z_m | x_n), a block of rows at a time to bound memory
        rows = max(1, 2**22 // (m * mean.shape[1]))
        blocks = [_log_q_pairs(zb, mean, log_var) for zb in z.split(rows)]
        log_q_agg = torch.logsumexp(torch.cat(blocks), 1) - math.log(m)
        log_prior = -0.5 * (LOG_2PI + z**2).sum(-1)
        info.append(log_q_cond - log_q_agg)
        mismatch.append(log_q_agg - log_prior)
    info, mismatch = torch.cat(info), torch.cat(mismatch)
    n = info.numel()
    return {
        "rate": kl_standard_normal(mean, log_var).mean(),
        "mutual_information": info.mean(),
        "mutual_information_se": info.std() / math.sqrt(n),
        "marginal_kl": mismatch.mean(),
        "marginal_kl_se": mismatch.std() / math.sqrt(n),
    }


def elbo_terms(
    model: VAE, x: Tensor, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Reconstruction, KL and ELBO = reconstruction − KL (``eq-elbo-recon-kl``), each ``(B,)``, in nats."""
    mean, log_var = model.encoder(x)
    z = reparameterize(mean, log_var, generator)
    rec, kl = reconstruction_term(model, x, z), kl_term(mean, log_var)
    return {"reconstruction": rec, "kl": kl, "elbo": rec - kl, "mean": mean, "log_var": log_var}


def vae_loss(model: VAE, batch: tuple[Tensor, ...], generator: torch.Generator) -> Tensor:
    """Negative ELBO per example, averaged over the minibatch (for :func:`~diffusion_lessons.training.fit.fit`)."""
    return -elbo_terms(model, batch[0], generator)["elbo"].mean()


def vae_log_weights(
    model: VAE, x: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """log p(x | z) + log p(z) − log q(z | x) at ``num_samples`` draws z ~ q(z | x) → ``(K, B)``."""
    mean, log_var = model.encoder(x)
    out = []
    for _ in range(num_samples):
        z = reparameterize(mean, log_var, generator)
        log_prior = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        out.append(model.decoder.log_prob(x, z) + log_prior - gaussian_log_prob(z, mean, log_var))
    return torch.stack(out)
