"""Variational autoencoders: one latent level (chapter 1) and a Markovian hierarchy (chapter 2).

Images are flattened, ``x: (B, D)``, with values on the grid of ``bins`` levels in [−1, 1]. The
decoder's likelihood p(x | z) is a Gaussian *discretized* to those levels
(:func:`~diffusion_lessons.gaussians.discretized_gaussian_log_prob`), so it is a probability
mass function on the data's own values: log-likelihoods and bounds are in nats of a discrete
distribution, and bits per dimension compare directly with log2(bins) (a uniform guess).
Every ELBO term is returned per example, ``(B,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffusion_lessons.checks import check_choice, check_positive_int
from diffusion_lessons.data import datasets
from diffusion_lessons.gaussians import (
    LOG_2PI,
    discretized_gaussian_log_prob,
    gaussian_log_prob,
    kl_standard_normal,
)
from diffusion_lessons.latent.estimators import iwae_bound
from diffusion_lessons.noise.schedules import alpha_bar_from_betas, check_betas

SETTINGS = {
    "small": {
        "dataset": "digits",
        "latent_dim": 16,
        "latent_dims": (16, 8),
        "hidden": 128,
        "steps": 1500,
        "batch_size": 128,
        "lr": 2e-3,
    },
    "full": {
        "dataset": "mnist",
        "latent_dim": 32,
        "latent_dims": (32, 16),
        "hidden": 512,
        "steps": 20_000,
        "batch_size": 256,
        "lr": 1e-3,
    },
}
"""Model and training sizes per :func:`diffusion_lessons.book.pages.scale`: CPU-sized 8×8 digits, or MNIST."""


@dataclass
class ImageData:
    """Flattened images on a grid of ``bins`` levels in [−1, 1]: ``train: (N, D)``, ``test: (M, D)``."""

    name: str
    train: Tensor
    test: Tensor
    bins: int
    shape: tuple[int, int]

    @property
    def dim(self) -> int:
        return self.train.shape[1]


def load_image_data(name: str, *, limit: int | None = None) -> ImageData:
    """``"digits"`` (8×8, 17 levels, scikit-learn) or ``"mnist"`` (28×28, 256 levels), flattened.

    ``limit`` keeps the first ``limit`` images of each split (for quick tests).
    """
    check_choice(name, ("digits", "mnist"), name="dataset")
    if name == "digits":
        train, test = datasets.load_digits("train")[0], datasets.load_digits("test")[0]
        bins, shape = 17, (8, 8)
    else:
        train = datasets.scale_images(datasets.load_mnist("train")[0][:limit])
        test = datasets.scale_images(datasets.load_mnist("test")[0][:limit])
        bins, shape = 256, (28, 28)
    train, test = train[:limit].flatten(1), test[:limit].flatten(1)
    return ImageData(name, train.float(), test.float(), bins, shape)


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


# --- the Markovian hierarchical VAE ---


class LinearGaussian(nn.Module):
    """A fixed conditional N(scale · h + shift, e^{log_var} I) with the interface of :class:`GaussianMLP`.

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


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, *, num_samples: int = 100, seed: int = 0, batch_size: int = 512
) -> dict[str, Tensor]:
    """Held-out ELBO (one sample per image) and IWAE bound with ``num_samples`` samples, each ``(M,)`` in nats."""
    check_positive_int(num_samples, name="num_samples")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    hier = isinstance(model, HierarchicalVAE)
    elbos, iwaes = [], []
    for chunk in x.split(batch_size):
        terms = (hvae_elbo_terms if hier else elbo_terms)(model, chunk, gen)
        elbos.append(terms["elbo"])
        lw = (hvae_log_weights if hier else vae_log_weights)(model, chunk, num_samples, gen)
        iwaes.append(iwae_bound(lw))
    return {"elbo": torch.cat(elbos), "iwae": torch.cat(iwaes)}
