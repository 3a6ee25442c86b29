"""Exact answers for data where they are known: E[x_0 | x_t] for a Gaussian mixture (as a function
of ᾱ and as a denoiser), the optimal denoiser of Gaussian data, and its losses in closed form (the
bound in discrete and continuous time, L_simple in continuous time).

The data modules never import this one; tests and chapters hold learned objects against it."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_lessons.checks import (
    append_dims,
    promote_coefficient,
)
from diffusion_lessons.data.toy import GaussianMixture
from diffusion_lessons.denoisers.denoiser import Denoiser


def gaussian_optimal_x0(data_var: float) -> Denoiser:
    """The exact denoiser E[x_0 | x_t] for data x_0 ∼ N(0, v I): x̂_0 = √ᾱ v x_t / (ᾱ v + σ²).

    A :data:`~diffusion_lessons.denoisers.denoiser.Denoiser`: ``(x_t (B, ...), log_snr (B,)) →
    (B, ...)``, with ᾱ = sigmoid(λ), σ² = sigmoid(−λ) (``eq-alpha-from-log-snr``). ``data_var``
    v > 0.
    """
    v = float(data_var)
    if not v > 0:
        raise ValueError(f"data_var must be > 0, got {data_var!r}")

    def x0_hat(xt: Tensor, log_snr: Tensor) -> Tensor:
        lam = promote_coefficient(append_dims(log_snr, xt, name="log_snr", x_name="xt"), xt)
        ab, var = torch.sigmoid(lam), torch.sigmoid(-lam)
        return (ab.sqrt() * v / (ab * v + var)).to(xt) * xt

    return x0_hat


def mixture_denoiser(mixture: GaussianMixture) -> Denoiser:
    """The exact denoiser E[x_0 | x_t] of a Gaussian mixture, at a noise level per example.

    A :data:`~diffusion_lessons.denoisers.denoiser.Denoiser`: ``(x_t (B, D), log_snr (B,)) →
    (B, D)`` in x_t's dtype; row b is :func:`mixture_posterior_mean` at ᾱ_b = sigmoid(λ_b)
    (computed once per distinct λ, in float64). The target of ``eq-score-eps``.
    """
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a data.GaussianMixture, got {type(mixture).__name__}")

    def x0_hat(xt: Tensor, log_snr: Tensor) -> Tensor:
        lam = torch.as_tensor(log_snr, dtype=torch.float64, device=xt.device)
        if lam.shape != (xt.shape[0],):
            raise ValueError(
                f"log_snr must have shape (B,) = ({xt.shape[0]},), got {tuple(lam.shape)}"
            )
        levels, which = torch.unique(lam, return_inverse=True)
        out = torch.empty(xt.shape, dtype=torch.float64, device=xt.device)
        for k, ab in enumerate(torch.sigmoid(levels.cpu()).tolist()):
            rows = slice(None) if len(levels) == 1 else which == k  # one level: every sampler step
            out[rows] = mixture_posterior_mean(mixture, xt[rows], ab).to(out.device)
        return out.to(xt.dtype)

    return x0_hat


def gaussian_eps_loss_exact(
    data_var: float, dim: int, log_snr_max: float, log_snr_min: float
) -> float:
    """E_t E‖ε − ε̂*‖² of the optimal denoiser for x_0 ∼ N(0, v I_D), t ∼ U(0, 1), λ linear in t.

    L_simple in continuous time (:func:`~diffusion_lessons.objectives.simple.eps_loss_continuous`)
    at its minimum: the error of E[ε | x_t] is D v SNR/(1 + v SNR) at SNR = e^λ, and with λ
    falling linearly from λ_max to λ_min its mean over t is
    D (log(1 + v SNR_max) − log(1 + v SNR_min)) / (λ_max − λ_min)
    = 2 L_∞ / (λ_max − λ_min) (:func:`gaussian_continuous_loss_exact`).
    """
    if not log_snr_max > log_snr_min:
        raise ValueError(f"need log_snr_max > log_snr_min, got {log_snr_max} and {log_snr_min}")
    exact_l_inf = gaussian_continuous_loss_exact(data_var, dim, log_snr_max, log_snr_min)
    return 2.0 * exact_l_inf / (log_snr_max - log_snr_min)


def gaussian_continuous_loss_exact(
    data_var: float, dim: int, log_snr_max: float, log_snr_min: float
) -> float:
    """L_∞ of the optimal denoiser for x ∼ N(0, v I_D): (D/2) log((1 + v SNR_max)/(1 + v SNR_min)).

    Its error E‖x − x̂‖² at SNR u is D v/(1 + v u), and L_∞ = ½ ∫_{SNR_min}^{SNR_max} of it du.
    """
    return (
        0.5
        * dim
        * (
            math.log1p(data_var * math.exp(log_snr_max))
            - math.log1p(data_var * math.exp(log_snr_min))
        )
    )


def gaussian_discrete_loss_exact(data_var: float, dim: int, log_snr: Tensor) -> float:
    """L_T of the optimal denoiser for x ∼ N(0, v I_D), given λ at the T + 1 grid points ``(T + 1,)``.

    L_T = ½ Σ_i (SNR_{i−1} − SNR_i) · D v/(1 + v SNR_i): an upper Riemann sum of L_∞'s integral.
    """
    snr = torch.exp(log_snr.double())
    return float(0.5 * ((snr[:-1] - snr[1:]) * dim * data_var / (1 + data_var * snr[1:])).sum())


def mixture_posterior_mean(mixture: GaussianMixture, xt: Tensor, alpha_bar: float) -> Tensor:
    """E[x_0 | x_t] exactly, when x_0 follows a Gaussian mixture (the target in ``eq-score-eps``).

    With x_t = √ᾱ x_0 + σ ε and component k = N(μ_k, Σ_k), (x_0, x_t) is jointly Gaussian within
    a component, so E[x_0 | x_t, k] = μ_k + √ᾱ Σ_k (ᾱ Σ_k + σ² I)⁻¹ (x_t − √ᾱ μ_k); averaging
    with the responsibilities p(k | x_t) of the noised mixture (:meth:`.GaussianMixture.noised`)
    gives E[x_0 | x_t] = Σ_k p(k | x_t) E[x_0 | x_t, k]. ``xt: (N, D)``, ``alpha_bar``: a float
    in [0, 1]. Returns ``(N, D)``, float64.
    """
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a data.GaussianMixture, got {type(mixture).__name__}")
    xt = torch.as_tensor(xt)
    if xt.ndim != 2 or xt.shape[1] != mixture.dim:
        raise ValueError(f"xt must have shape (N, {mixture.dim}), got {tuple(xt.shape)}")
    if isinstance(alpha_bar, Tensor):
        if alpha_bar.numel() != 1:
            raise ValueError(
                f"alpha_bar must be a single number, got shape {tuple(alpha_bar.shape)}"
            )
        alpha_bar = alpha_bar.item()
    a = float(alpha_bar)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha_bar must lie in [0, 1], got {alpha_bar!r}")
    xt = xt.to(torch.float64)
    noised = mixture.noised(a)
    resp = noised.responsibilities(xt)  # (N, K)
    gain = a**0.5 * mixture.covs @ noised.precisions  # (K, D, D)
    diff = xt[:, None, :] - a**0.5 * mixture.means[None]  # (N, K, D)
    per_component = mixture.means[None] + torch.einsum("kij,nkj->nki", gain, diff)
    return torch.einsum("nk,nkd->nd", resp, per_component)
