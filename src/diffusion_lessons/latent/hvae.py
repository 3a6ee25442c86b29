"""The Markovian hierarchical VAE (chapter 2): latents z_1 … z_T, each conditioned on the one before.

Built from the one-level pieces of :mod:`~diffusion_lessons.latent.vae` (the Gaussian layer, the
discretized decoder, the reparameterization); data ``x: (B, D)`` flattened as there, every ELBO
term per example, ``(B,)``. :func:`diffusion_top_term` is the top term when the encoder is the
forward process of a diffusion model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusion_lessons.gaussians import gaussian_log_prob
from diffusion_lessons.latent.vae import (
    DiscretizedGaussianDecoder,
    GaussianMLP,
    kl_per_dimension,
    reparameterize,
)
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, check_betas


class FixedLinearGaussian(nn.Module):
    """A fixed conditional N(scale · h + shift, e^{log_var} I) with the interface of :class:`~diffusion_lessons.latent.vae.GaussianMLP`.

    ``h: (B, k) → (mean, log_var)``, each ``(B, k)``. No parameters are learned: it builds toy
    hierarchies whose ELBO terms are known in closed form (chapter 2's counterexample).
    """

    def __init__(self, scale: float, log_var: float, shift: float = 0.0):
        super().__init__()
        self.scale, self.log_var, self.shift = float(scale), float(log_var), float(shift)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.scale * h + self.shift, torch.full_like(h, self.log_var)


class HierarchicalVAE(nn.Module):
    """Markovian HVAE (``eq-hvae-joint``, ``eq-hvae-posterior``) with latents z_1 … z_T of sizes ``latent_dims``.

    p(x, z_{1:T}) = p(z_T) p(x | z_1) Π_{t≥2} p(z_{t−1} | z_t) with p(z_T) = N(0, I);
    q(z_{1:T} | x) = q(z_1 | x) Π_{t≥2} q(z_t | z_{t−1}). All conditionals but p(x | z_1) are
    diagonal Gaussians with MLP means and log-variances.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dims: tuple[int, ...] = (8, 4),
        hidden: int = 128,
        bins: int = 17,
    ):
        super().__init__()
        if len(latent_dims) < 1 or any(not isinstance(k, int) or k < 1 for k in latent_dims):
            raise ValueError(
                f"latent_dims must be a non-empty tuple of ints >= 1, got {latent_dims!r}"
            )
        self.latent_dims = tuple(latent_dims)
        ins = (data_dim, *latent_dims[:-1])
        self.encoders = nn.ModuleList(
            GaussianMLP(a, k, hidden) for a, k in zip(ins, latent_dims, strict=True)
        )
        # priors[t] is p(z_{t+1} | z_{t+2}) for t = 0 .. T-2 (0-based levels)
        self.priors = nn.ModuleList(
            GaussianMLP(latent_dims[t + 1], latent_dims[t], hidden)
            for t in range(len(latent_dims) - 1)
        )
        self.decoder = DiscretizedGaussianDecoder(latent_dims[0], data_dim, hidden, bins)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling z_T → … → z_1, then the decoder mean → ``(n, D)``."""
        dev = next(self.parameters()).device
        z = torch.randn(n, self.latent_dims[-1], generator=generator, device=dev)
        for prior in reversed(self.priors):
            z = reparameterize(*prior(z), generator)
        return self.decoder(z)[0]


def hvae_elbo_terms(
    model: HierarchicalVAE, x: Tensor, generator: torch.Generator | None = None
) -> dict:
    """One-sample ELBO of the Markovian HVAE split into terms (``eq-hvae-elbo``).

    Returns ``reconstruction`` log p(x | z_1) ``(B,)``; ``level_terms``, a list over levels
    t = 1..T of ``(B,)``; ``level_terms_per_dim``, the same split by dimension, ``(B, k_t)``; and
    ``elbo`` = reconstruction − Σ_t level_terms.

    For t = T the level term is the closed-form KL(q(z_T | z_{T−1}) ‖ N(0, I)) at the sampled
    z_{T−1}, an unbiased estimate of an expected KL. For t < T it is the sampled
    log q(z_t | z_{t−1}) − log p(z_t | z_{t+1}), whose expectation is *not* a KL divergence: z_{t+1}
    is drawn from z_t, so it can be negative. Only the top term and the sum of all level terms,
    KL(q(z_{1:T} | x) ‖ p(z_{1:T})), are KL divergences.
    """
    params, zs, h = [], [], x
    for enc in model.encoders:
        mean, log_var = enc(h)
        h = reparameterize(mean, log_var, generator)
        params.append((mean, log_var))
        zs.append(h)
    per_dim = []
    for t in range(len(zs) - 1):
        p_mean, p_log_var = model.priors[t](zs[t + 1])
        q_mean, q_log_var = params[t]
        flat = (zs[t].reshape(-1, 1), zs[t].shape)
        log_q = gaussian_log_prob(flat[0], q_mean.reshape(-1, 1), q_log_var.reshape(-1, 1))
        log_p = gaussian_log_prob(flat[0], p_mean.reshape(-1, 1), p_log_var.reshape(-1, 1))
        per_dim.append((log_q - log_p).reshape(flat[1]))
    per_dim.append(kl_per_dimension(*params[-1]))
    level_terms = [d.sum(1) for d in per_dim]
    rec = model.decoder.log_prob(x, zs[0])
    return {
        "reconstruction": rec,
        "level_terms": level_terms,
        "level_terms_per_dim": per_dim,
        "elbo": rec - sum(level_terms),
    }


def hvae_loss(
    model: HierarchicalVAE, batch: tuple[Tensor, ...], generator: torch.Generator
) -> Tensor:
    """Negative HVAE ELBO, averaged over the minibatch (for :func:`~diffusion_lessons.training.fit.fit`)."""
    return -hvae_elbo_terms(model, batch[0], generator)["elbo"].mean()


def diffusion_top_term(x0: Tensor, betas: Tensor) -> Tensor:
    """Top-level term of ``eq-hvae-elbo`` when the encoder is the forward process → ``(B,)``.

    E_{q(x_{T−1} | x_0)} KL(q(x_T | x_{T−1}) ‖ N(0, I)) with q(x_t | x_{t−1}) =
    N(√α_t x_{t−1}, β_t I), in closed form: per dimension
    ½ [β_T + α_T E[x_{T−1}² | x_0] − 1 − log β_T] with E[x_{T−1}² | x_0] = ᾱ_{T−1} x_0² + 1 − ᾱ_{T−1}.
    ``x0: (B, ...)``, ``betas``: β_1..β_T, shape ``(T,)``. This one-step term stays large (about
    −½ log β_T per dimension); it is *not* the prior term KL(q(x_T | x_0) ‖ N(0, I)) of the
    re-conditioned ELBO (:func:`diffusion_lessons.objectives.nelbo.prior_kl`), which the schedule makes small.
    """
    betas = check_betas(betas).double()
    if x0.ndim < 1:
        raise ValueError("x0 must have shape (B, ...), got a 0-dim tensor")
    abar_prev = alpha_bar_from_betas(betas)[-2]  # ᾱ_{T−1} (ᾱ_0 = 1 when T = 1)
    beta_t = betas[-1]
    ex2 = abar_prev * x0.double() ** 2 + (1.0 - abar_prev)  # E[x_{T−1}² | x_0]
    per_dim = 0.5 * (beta_t + (1.0 - beta_t) * ex2 - 1.0 - torch.log(beta_t))
    return per_dim.flatten(1).sum(1).to(x0.dtype) if x0.ndim > 1 else per_dim.to(x0.dtype)


def hvae_log_weights(
    model: HierarchicalVAE, x: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """log p(x, z_{1:T}) − log q(z_{1:T} | x) at ``num_samples`` draws from q → ``(K, B)``.

    Up to the analytic top-level KL this is the ELBO integrand; here every term is sampled,
    log p(z_T) included, so that :func:`~diffusion_lessons.latent.estimators.iwae_bound` applies.
    """
    out = []
    for _ in range(num_samples):
        h, log_q, zs = x, 0.0, []
        for enc in model.encoders:
            mean, log_var = enc(h)
            h = reparameterize(mean, log_var, generator)
            log_q = log_q + gaussian_log_prob(h, mean, log_var)
            zs.append(h)
        log_p = gaussian_log_prob(zs[-1], torch.zeros_like(zs[-1]), torch.zeros_like(zs[-1]))
        for t in range(len(zs) - 1):
            log_p = log_p + gaussian_log_prob(zs[t], *model.priors[t](zs[t + 1]))
        out.append(model.decoder.log_prob(x, zs[0]) + log_p - log_q)
    return torch.stack(out)
