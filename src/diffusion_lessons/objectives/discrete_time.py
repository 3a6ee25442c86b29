"""The diffusion ELBO in discrete time, on any grid of noise levels (chapter "The diffusion ELBO").

With T steps at log-SNR levels λ_0 = +∞ > λ_1 > … > λ_T (x_0 is the data; from an ᾱ grid with
ᾱ_0 = 1 by :func:`log_snr_grid`) and a denoiser D(x_t, λ) → x̂_0
(:mod:`~diffusion_lessons.denoisers.denoiser`), the negative ELBO is

    −ELBO = prior + reconstruction + Σ_{t=2}^{T} denoising_t                (label ``eq-diffusion-elbo``)

- prior             KL(q(x_T | x_0) ‖ N(0, I))              :func:`~diffusion_lessons.objectives.nelbo.prior_kl`
- reconstruction    −log p_θ(x_0 | x_1), decoder N(x̂_0(x_1, λ_1), σ_1²)
                    :func:`~diffusion_lessons.objectives.nelbo.gaussian_reconstruction_nll` or
                    :func:`~diffusion_lessons.objectives.nelbo.discretized_reconstruction_nll`
- denoising_t       ½ (SNR_{t−1} − SNR_t) ‖x̂_0(x_t, λ_t) − x_0‖²
                    :func:`~diffusion_lessons.objectives.nelbo.denoising_kl` (``eq-denoising-snr``)

This module only says where the terms are evaluated: every step once (:func:`nelbo_terms_exact_sum`),
one random step per example (:func:`nelbo_terms_one_step`), or one random step of 1..T as a training
loss (:func:`elbo_loss`). :func:`ddpm_terms` is DDPM's bound on images (Ho et al. 2020, eq. 5).

For checking the regrouping itself, :func:`gaussian_chain_elbo_terms` gives every term of the
Markovian ELBO of a 1-D linear-Gaussian chain in closed form, in the three-variable consistency form
(label ``eq-elbo-consistency``) and in Luo (2022) eq. 45's KL form (``eq-luo-consistency``), which
is not the ELBO. All terms are per example, shape ``(B,)``, in nats.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_lessons.denoisers.denoiser import Denoiser
from diffusion_lessons.noise.schedules import check_alpha_bar_grid, log_snr_from_alpha_bar
from diffusion_lessons.noise.time_sampling import uniform_steps
from diffusion_lessons.objectives import nelbo
from diffusion_lessons.process.forward import q_sample

DecoderNLL = Callable[[Tensor, Tensor, float], Tensor]
"""``decoder_nll(x0, x0_hat, log_scale) -> (B,)``: :func:`~diffusion_lessons.objectives.nelbo.gaussian_reconstruction_nll`,
or :func:`~diffusion_lessons.objectives.nelbo.discretized_reconstruction_nll` with its ``bins`` bound
(``functools.partial(nelbo.discretized_reconstruction_nll, bins=17)``)."""


def log_snr_grid(alpha_bar: Tensor) -> Tensor:
    """The levels λ_i = log(ᾱ_i / (1 − ᾱ_i)) of a grid ``alpha_bar: (T + 1,)`` with ᾱ_0 = 1: ``(T + 1,)``.

    Float64; λ_0 = +∞ (step 0 is the data itself). E.g. of
    :meth:`~diffusion_lessons.noise.schedules.Schedule.alpha_bar_grid`.
    """
    ab = check_alpha_bar_grid(alpha_bar)
    if ab[0].item() != 1.0:
        raise ValueError(f"alpha_bar[0] must be 1 (x_0 is the data), got {ab[0].item()!r}")
    return log_snr_from_alpha_bar(ab)


def _check_grid(log_snr: Tensor) -> Tensor:
    lam = torch.as_tensor(log_snr, dtype=torch.float64)
    if lam.ndim != 1 or lam.numel() < 3:
        raise ValueError(f"log_snr must have shape (T + 1,) with T >= 2, got {tuple(lam.shape)}")
    if (
        lam[0].item() != math.inf
        or not torch.isfinite(lam[1:]).all()
        or (lam[1:] >= lam[:-1]).any()
    ):
        raise ValueError(
            "log_snr must decrease strictly from λ_0 = +inf (the data) through finite levels "
            "λ_1 > … > λ_T (discrete_time.log_snr_grid makes it from an ᾱ grid)"
        )
    return lam


def _default_log_scale(lam: Tensor, decoder_log_scale: float | None) -> float:
    """log σ_1 = ½ log sigmoid(−λ_1), the decoder's width unless one is given."""
    if decoder_log_scale is not None:
        return decoder_log_scale
    return 0.5 * torch.nn.functional.logsigmoid(-lam[1]).item()


def _denoised(denoiser: Denoiser, x0: Tensor, lam: Tensor, generator) -> Tensor:
    """x̂_0 = D(x_t, λ) at a fresh x_t ~ q(x_t | x_0) (``eq-forward-marginal``); ``lam: (B,)``."""
    xt, _ = q_sample(x0, torch.sigmoid(lam).to(x0), generator=generator)
    x0_hat = denoiser(xt, lam)
    if x0_hat.shape != x0.shape:
        raise ValueError(f"the denoiser returned {tuple(x0_hat.shape)}, expected {tuple(x0.shape)}")
    return x0_hat


def _prior_and_reconstruction(
    denoiser: Denoiser,
    x0: Tensor,
    lam: Tensor,
    decoder_nll: DecoderNLL,
    log_scale: float,
    generator,
) -> tuple[Tensor, Tensor]:
    at_1 = torch.full((x0.shape[0],), lam[1].item(), dtype=torch.float64, device=x0.device)
    prior = nelbo.prior_kl(x0, lam[-1])
    return prior, decoder_nll(x0, _denoised(denoiser, x0, at_1, generator), log_scale)


def _terms(prior: Tensor, recon: Tensor, diffusion: Tensor) -> dict[str, Tensor]:
    return {
        "prior": prior,
        "reconstruction": recon,
        "diffusion": diffusion,
        "total": prior + recon + diffusion,
    }


@torch.no_grad()
def nelbo_terms_exact_sum(
    denoiser: Denoiser,
    x0: Tensor,
    log_snr: Tensor,
    *,
    decoder_nll: DecoderNLL = nelbo.gaussian_reconstruction_nll,
    decoder_log_scale: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The negative ELBO of ``x0: (B, ...)`` split into its terms (``eq-diffusion-elbo``), in nats.

    Every step t = 2..T is evaluated (one draw of x_t each), so the diffusion term is the exact sum
    over steps, estimated with one x_t per step. ``log_snr: (T + 1,)`` the levels, λ_0 = +∞; the
    decoder's scale defaults to σ_1. Returns ``{"prior", "reconstruction", "diffusion", "total"}``,
    each ``(B,)``.
    """
    lam = _check_grid(log_snr).to(x0.device)
    log_scale = _default_log_scale(lam, decoder_log_scale)
    prior, recon = _prior_and_reconstruction(denoiser, x0, lam, decoder_nll, log_scale, generator)
    diffusion = torch.zeros_like(prior)
    ones = torch.ones(x0.shape[0], dtype=torch.float64, device=x0.device)
    for i in range(2, len(lam)):
        x0_hat = _denoised(denoiser, x0, ones * lam[i], generator)
        diffusion += nelbo.denoising_kl(x0, x0_hat, lam[i - 1], lam[i])
    return _terms(prior, recon, diffusion)


@torch.no_grad()
def nelbo_terms_one_step(
    denoiser: Denoiser,
    x0: Tensor,
    log_snr: Tensor,
    *,
    decoder_nll: DecoderNLL = nelbo.gaussian_reconstruction_nll,
    decoder_log_scale: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """As :func:`nelbo_terms_exact_sum`, with the diffusion term estimated from one step per example.

    For each example a step i ∼ U{2..T} is drawn and the diffusion term is (T − 1) · denoising_i:
    an unbiased estimate of the sum, T − 1 times cheaper and noisier. The step is drawn first, then
    the noise of that step, then the noise of x_1.
    """
    lam = _check_grid(log_snr).to(x0.device)
    T = len(lam) - 1
    log_scale = _default_log_scale(lam, decoder_log_scale)
    i = 1 + uniform_steps(x0.shape[0], T - 1, generator=generator, device=x0.device)
    x0_hat = _denoised(denoiser, x0, lam[i], generator)
    diffusion = (T - 1) * nelbo.denoising_kl(x0, x0_hat, lam[i - 1], lam[i])
    prior, recon = _prior_and_reconstruction(denoiser, x0, lam, decoder_nll, log_scale, generator)
    return _terms(prior, recon, diffusion)


def elbo_loss(
    denoiser: Denoiser,
    x0: Tensor,
    generator: torch.Generator | None,
    *,
    log_snr: Tensor,
    decoder_nll: DecoderNLL = nelbo.gaussian_reconstruction_nll,
    decoder_log_scale: float | None = None,
) -> Tensor:
    """An unbiased one-step estimate of the batch-mean negative ELBO, to train with (``eq-diffusion-elbo``).

    For each example a step i is drawn uniformly from 1..T; the estimate is
    prior + T · (reconstruction if i = 1 else denoising_i). Returns a scalar, nats per example.
    """
    lam = _check_grid(log_snr).to(x0.device)
    T = len(lam) - 1
    log_scale = _default_log_scale(lam, decoder_log_scale)
    i = uniform_steps(x0.shape[0], T, generator=generator, device=x0.device)
    x0_hat = _denoised(denoiser, x0, lam[i], generator)
    recon = decoder_nll(x0, x0_hat, log_scale)
    j = i.clamp_min(2)  # the i = 1 entries take the reconstruction term (SNR_0 = ∞)
    step_term = torch.where(i == 1, recon, nelbo.denoising_kl(x0, x0_hat, lam[j - 1], lam[j]))
    return (nelbo.prior_kl(x0, lam[-1]) + T * step_term).mean()


def ddpm_terms(
    denoiser: Denoiser,
    x0: Tensor,
    alpha_bar: Tensor,
    *,
    bins: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """DDPM's negative ELBO of images (Ho et al. 2020, eq. 5), one sampled step: each ``(B,)``, nats.

    :func:`nelbo_terms_one_step` on the grid ``alpha_bar: (T + 1,)`` (ᾱ_0 = 1, e.g.
    :meth:`~diffusion_lessons.noise.schedules.Schedule.ddpm_alpha_bar`) with the decoder
    discretized to ``bins`` levels. Its scale σ_1 = √β_1 and mean x̂_0(x_1, λ_1) are DDPM's
    N(μ_θ(x_1, 1), β_1) (:func:`~diffusion_lessons.objectives.nelbo.discretized_reconstruction_nll`
    says why). ``x0: (B, C, H, W)`` in [−1, 1].
    """
    decoder = functools.partial(nelbo.discretized_reconstruction_nll, bins=bins)
    return nelbo_terms_one_step(
        denoiser, x0, log_snr_grid(alpha_bar), decoder_nll=decoder, generator=generator
    )


# ---------------------------------------------------------------------------------------------
# The Markovian ELBO of a linear-Gaussian chain, exactly (checks the regrouping of the bound)


def _check_chain(x0: float, alpha_bar: Tensor, reverse) -> tuple[float, Tensor, Tensor]:
    ab = check_alpha_bar_grid(alpha_bar)
    T = len(ab) - 1
    if T < 2:
        raise ValueError(f"alpha_bar must have shape (T + 1,) with T >= 2, got {tuple(ab.shape)}")
    if ab[0].item() != 1.0:
        raise ValueError(f"alpha_bar[0] must be 1 (x_0 is the data), got {ab[0].item()!r}")
    x0 = float(x0)
    if not math.isfinite(x0):
        raise ValueError(f"x0 must be a finite number, got {x0!r}")
    rev = torch.as_tensor(reverse, dtype=torch.float64)
    if rev.shape != (T, 3):
        raise ValueError(
            f"reverse must have shape (T, 3) = ({T}, 3), rows (k_t, m_t, s_t²), "
            f"got {tuple(rev.shape)}"
        )
    if not torch.isfinite(rev).all() or (rev[:, 2] <= 0).any():
        raise ValueError("reverse must be finite, with variances s_t² = reverse[:, 2] > 0")
    return x0, ab, rev


def _expected_log_normal(residual_sq: Tensor, variance: Tensor) -> Tensor:
    """E log N(r; 0, v) given E r² = ``residual_sq``."""
    return -0.5 * (math.log(2 * math.pi) + variance.log()) - residual_sq / (2 * variance)


class _ChainMoments:
    """E x_t = √ᾱ_t x_0 and Cov(x_s, x_t) = √(ᾱ_t / ᾱ_s)(1 − ᾱ_s), s ≤ t, of q(x_{1:T} | x_0)."""

    def __init__(self, x0: float, ab: Tensor):
        T = len(ab) - 1
        self.mu = ab.sqrt() * x0  # (T + 1,)
        idx = torch.arange(T + 1)
        lo, hi = torch.minimum(idx[:, None], idx[None]), torch.maximum(idx[:, None], idx[None])
        self.cov = (ab[hi] / ab[lo]).sqrt() * (1 - ab)[lo]  # row and column 0 are zero
        self.eye = torch.eye(T + 1, dtype=torch.float64)

    def second(self, w: Tensor, c: Tensor | float) -> Tensor:
        """E[(w · x_{0:T} + c)²] under q(x_{1:T} | x_0)."""
        return (w @ self.mu + c) ** 2 + w @ self.cov @ w


def _consistency_terms(q: _ChainMoments, alpha: Tensor, rev: Tensor) -> tuple[Tensor, Tensor]:
    """The three-variable terms C_t and Luo's KL terms C_t^KL, t = 1..T−1: two ``(T − 1,)``."""
    k, m, s2 = rev.unbind(1)  # k[t - 1] = k_t, ...
    consistency, consistency_kl = [], []
    for t in range(1, len(alpha)):
        beta_t = 1 - alpha[t - 1]
        kk, mm, vv = k[t], m[t], s2[t]  # the step p_θ(x_t | x_{t+1})
        # E log q(x_t | x_{t-1}) = −½ log(2πe β_t): the mean residual² of a step is its variance
        log_q = _expected_log_normal(beta_t, beta_t)
        log_p = _expected_log_normal(q.second(q.eye[t] - kk * q.eye[t + 1], -mm), vv)
        consistency.append(log_q - log_p)
        mean_gap_sq = q.second(alpha[t - 1].sqrt() * q.eye[t - 1] - kk * q.eye[t + 1], -mm)
        consistency_kl.append(0.5 * ((vv / beta_t).log() + (beta_t + mean_gap_sq) / vv - 1))
    return torch.stack(consistency), torch.stack(consistency_kl)


def gaussian_chain_elbo_terms(
    x0: float, alpha_bar: Tensor, reverse: Tensor | list[list[float]]
) -> dict[str, Tensor]:
    """Exact terms of the Markovian ELBO of one 1-D data point, in both regroupings (``eq-elbo-consistency``).

    The encoder is the forward chain q(x_t | x_{t-1}) = N(√α_t x_{t-1}, 1 − α_t) on the grid
    ``alpha_bar: (T + 1,)`` with ᾱ_0 = 1 (T ≥ 2); the decoder is p(x_T) = N(0, 1) and linear
    Gaussian steps p_θ(x_{t-1} | x_t) = N(k_t x_t + m_t, s_t²), given as the rows
    ``reverse[t - 1] = (k_t, m_t, s_t²)`` of ``reverse: (T, 3)``. Given x_0 the chain is jointly
    Gaussian with E x_t = √ᾱ_t x_0 and Cov(x_s, x_t) = √(ᾱ_t / ᾱ_s) (1 − ᾱ_s) for s ≤ t, so
    every term is a second moment. Returns float64 scalars, in nats:

    - ``reconstruction``  E_{q(x_1 | x_0)} log p_θ(x_0 | x_1)
    - ``prior``           E_{q(x_{T-1} | x_0)} KL(q(x_T | x_{T-1}) ‖ p(x_T))
    - ``consistency``     ``(T − 1,)``, t = 1..T−1: the three-variable terms
                          E_{q(x_{t-1}, x_t, x_{t+1} | x_0)}[log q(x_t | x_{t-1}) − log p_θ(x_t | x_{t+1})]
    - ``consistency_kl``  ``(T − 1,)``: Luo (2022) eq. 45's form of the same terms,
                          E_{q(x_{t-1}, x_{t+1} | x_0)} KL(q(x_t | x_{t-1}) ‖ p_θ(x_t | x_{t+1}))
    - ``elbo``            reconstruction − prior − Σ consistency: the ELBO (``eq-diffusion-elbo-raw``)
    - ``elbo_kl_form``    reconstruction − prior − Σ consistency_kl: Luo's right-hand side

    The KL form draws x_t from q(x_t | x_{t-1}) independently of x_{t+1}; under q, x_{t+1} is drawn
    from x_t, so the two forms differ by the dropped covariance:
    consistency_kl − consistency = k_{t+1} √α_{t+1} (1 − α_t) / s_{t+1}² (label ``eq-luo-gap``).
    """
    x0, ab, rev = _check_chain(x0, alpha_bar, reverse)
    T = len(ab) - 1
    q = _ChainMoments(x0, ab)
    alpha = ab[1:] / ab[:-1]  # alpha[t - 1] = α_t
    k, m, s2 = rev.unbind(1)
    recon = _expected_log_normal(q.second(-k[0] * q.eye[1], x0 - m[0]), s2[0])
    beta_T = 1 - alpha[T - 1]
    log_q_T = _expected_log_normal(beta_T, beta_T)
    prior = log_q_T + 0.5 * math.log(2 * math.pi) + 0.5 * (q.mu[T] ** 2 + (1 - ab[T]))
    consistency, consistency_kl = _consistency_terms(q, alpha, rev)
    return {
        "reconstruction": recon,
        "prior": prior,
        "consistency": consistency,
        "consistency_kl": consistency_kl,
        "elbo": recon - prior - consistency.sum(),
        "elbo_kl_form": recon - prior - consistency_kl.sum(),
    }
