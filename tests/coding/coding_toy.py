"""Small models for the coding tests: the Bayes denoiser of an empirical distribution.

For data drawn from a finite set of prototypes p_j (scaled to [−1, 1]), E[x_0 | x_t] is the
softmax-weighted mean of the prototypes with weights ∝ exp(−‖x_t − √ᾱ p_j‖² / 2σ²): an exact,
cheap, float64 denoiser that every process (the encoder's and a fresh decoder's) rebuilds from the
same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_lessons.coding import bbans
from diffusion_lessons.noise.schedules import get_schedule


class BayesDenoiser(torch.nn.Module):
    """x̂_0 = E[x_0 | x_t] under the uniform distribution on ``prototypes (K, ...)``."""

    def __init__(self, prototypes: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("prototypes", prototypes.double())
        self.scale = scale  # multiplies x̂_0: scale != 1 perturbs the model

    def forward(self, xt: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        ab = torch.sigmoid(log_snr.double()).view(-1, 1)
        var = torch.sigmoid(-log_snr.double()).view(-1, 1)
        flat = xt.double().reshape(len(xt), -1)
        protos = self.prototypes.reshape(len(self.prototypes), -1)
        d2 = ((flat[:, None, :] - ab.sqrt()[:, :, None] * protos[None]) ** 2).sum(-1)
        w = torch.softmax(-d2 / (2 * var), dim=1)
        return (self.scale * (w @ protos)).reshape(xt.shape)


def random_prototypes(k: int = 4, shape=(1, 4, 4), seed: int = 0) -> np.ndarray:
    """``k`` random uint8 images."""
    return np.random.default_rng(seed).integers(0, 256, (k, *shape)).astype(np.uint8)


def jittered(protos: np.ndarray, n: int, seed: int = 1, jitter: int = 2) -> np.ndarray:
    """``n`` images: random prototypes with each pixel moved by up to ±``jitter`` levels."""
    rng = np.random.default_rng(seed)
    base = protos[rng.integers(0, len(protos), n)].astype(np.int64)
    return np.clip(base + rng.integers(-jitter, jitter + 1, base.shape), 0, 255).astype(np.uint8)


def denoiser_for(protos: np.ndarray, bins: int = 256, scale: float = 1.0) -> BayesDenoiser:
    x = 2.0 * torch.from_numpy(protos.astype(np.float64)) / (bins - 1) - 1.0
    return BayesDenoiser(x, scale)


def code(T: int = 10, precision: int = 3, bins: int = 256) -> bbans.ChainCode:
    ab = get_schedule("cosine").ddpm_alpha_bar(T)
    return bbans.ChainCode(tuple(ab.tolist()), bbans.LatentGrid(precision=precision), bins)
