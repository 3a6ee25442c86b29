"""The diffusion ELBO in discrete time, and the simpler losses that train the same model.

Book: chapters "The diffusion ELBO" and "Three equivalent objectives". With T steps and
ᾱ_0 = 1 > ᾱ_1 > … > ᾱ_T (a grid ``alpha_bar: (T + 1,)``, e.g. from
:func:`~diffusion_lessons.noise.schedules.alpha_bar_from_betas`), the negative ELBO is

    −ELBO = prior + reconstruction + Σ_{t=2}^{T} denoising_t                (label ``eq-diffusion-elbo``)

- prior             KL(q(x_T | x_0) ‖ N(0, I))
- reconstruction    −log p_θ(x_0 | x_1)
- denoising_t       KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t))
                    = ½ (SNR(t−1) − SNR(t)) ‖x̂_θ(x_t, t) − x_0‖²             (label ``eq-denoising-snr``)

For checking the regrouping itself, :func:`gaussian_chain_elbo_terms` gives every term of the
Markovian ELBO of a 1-D linear-Gaussian chain in closed form, in the three-variable consistency form
(label ``eq-elbo-consistency``) and in Luo (2022) eq. 45's KL form (``eq-luo-consistency``), which
is not the ELBO.

A model is any callable ``model(x_t, t)`` with ``x_t: (B, ...)`` and continuous time
``t = i / T: (B,)``, whose output means x_0, ε or the score, as ``parameterization`` says.
All terms are per example, shape ``(B,)``, in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_lessons import gaussians
from diffusion_lessons.checks import check_choice, check_step
from diffusion_lessons.denoisers.parameterizations import PARAMETERIZATIONS, convert
from diffusion_lessons.noise.schedules import check_alpha_bar_grid
from diffusion_lessons.noise.time_sampling import uniform_steps
from diffusion_lessons.objectives import nelbo
from diffusion_lessons.process.forward import q_sample
from diffusion_lessons.process.posterior import posterior_mean_var

Model = Callable[[Tensor, Tensor], Tensor]


def predict_x0(
    model: Model, xt: Tensor, i: Tensor, alpha_bar: Tensor, *, parameterization: str
) -> Tensor:
    """x̂_0(x_t, t): the model's output at steps ``i: (B,)`` converted to x_0 (``eq-eps-to-x0``)."""
    check_choice(parameterization, PARAMETERIZATIONS, name="parameterization")
    T = len(alpha_bar) - 1
    i = check_step(i, T)
    t = (i.to(xt.dtype) / T).to(xt.device)
    pred = model(xt, t)
    ab = alpha_bar[i].to(xt)
    return convert(pred, source=parameterization, target="x0", xt=xt, alpha_bar=ab)


def prior_kl(x0: Tensor, alpha_bar_T: Tensor | float) -> Tensor:
    """KL(q(x_T | x_0) ‖ N(0, I)), the prior term of ``eq-diffusion-elbo``: ``x0: (B, ...)`` → ``(B,)``."""
    ab = torch.as_tensor(alpha_bar_T, dtype=torch.float64)
    if ab.numel() and ((ab < 0).any() or (ab >= 1).any()):
        raise ValueError(f"alpha_bar_T must lie in [0, 1), got {ab.min().item():.6g}")
    # The same KL in log-SNR form, computed once (nelbo.prior_kl): its per-dimension constant
    # ½(σ² − 1 − log σ²) is formed without cancellation, even for float32 data.
    return nelbo.prior_kl(x0, torch.log(ab) - torch.log1p(-ab))


def reconstruction_nll(
    x0: Tensor, x0_hat: Tensor, log_scale: Tensor | float, *, bins: int | None = None
) -> Tensor:
    """−log p_θ(x_0 | x_1) for a Gaussian decoder N(x̂_0, e^{2 log_scale}) (a term of ``eq-diffusion-elbo``).

    ``bins=None``: continuous data, a Gaussian density. ``bins=n``: data with n levels scaled to
    [−1, 1], the Gaussian discretized to those levels (Ho et al. 2020, eq. 13; 256 for 8-bit
    images, 17 for scikit-learn's 8×8 digits). ``x0, x0_hat: (B, ...)`` → ``(B,)``, nats.
    """
    if x0.shape != x0_hat.shape:
        raise ValueError(
            f"x0 has shape {tuple(x0.shape)} but x0_hat has shape {tuple(x0_hat.shape)}"
        )
    log_scale = torch.as_tensor(log_scale, dtype=x0.dtype, device=x0.device).expand_as(x0)
    if bins is None:
        return -gaussians.gaussian_log_prob(x0, x0_hat, 2 * log_scale)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be None (continuous data) or an integer >= 2, got {bins!r}")
    return -gaussians.discretized_gaussian_log_prob(x0, x0_hat, log_scale, bins=bins)


def denoising_kl(
    x0: Tensor,
    x0_hat: Tensor,
    xt: Tensor,
    alpha_bar: Tensor | float,
    alpha_bar_prev: Tensor | float,
) -> Tensor:
    """KL(q(x_{t-1} | x_t, x_0) ‖ p_θ(x_{t-1} | x_t)) between the two Gaussians (``eq-diffusion-elbo``).

    p_θ(x_{t-1} | x_t) = q(x_{t-1} | x_t, x̂_0) (``eq-reverse-step``): the posterior with x̂_0 in place of x_0, and the
    same variance. Computed with :func:`.gaussians.kl_diag_gaussians`. ``x0, x0_hat, xt:
    (B, ...)``; ``alpha_bar, alpha_bar_prev``: scalars or ``(B,)``. Returns ``(B,)``.
    """
    mean_q, var = posterior_mean_var(x0, xt, alpha_bar, alpha_bar_prev)
    mean_p, _ = posterior_mean_var(x0_hat, xt, alpha_bar, alpha_bar_prev)
    log_var = torch.log(var).expand_as(mean_q)
    return gaussians.kl_diag_gaussians(mean_q, log_var, mean_p, log_var)


def snr_weighted_mse(
    x0: Tensor, x0_hat: Tensor, alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float
) -> Tensor:
    """½ (SNR(t−1) − SNR(t)) ‖x̂_0 − x_0‖² (label ``eq-denoising-snr``): ``(B, ...)`` → ``(B,)``."""
    if x0.shape != x0_hat.shape:
        raise ValueError(
            f"x0 has shape {tuple(x0.shape)} but x0_hat has shape {tuple(x0_hat.shape)}"
        )
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    ab_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    if (ab >= ab_prev).any() or (ab_prev >= 1).any():
        raise ValueError("need alpha_bar < alpha_bar_prev < 1 (SNR(t-1) is infinite at ᾱ = 1)")
    weight = 0.5 * (ab_prev / (1 - ab_prev) - ab / (1 - ab))
    sq = ((x0_hat - x0) ** 2).reshape(x0.shape[0], -1).sum(1)
    return weight.to(sq) * sq


def nelbo_terms(
    model: Model,
    x0: Tensor,
    alpha_bar: Tensor,
    *,
    parameterization: str,
    generator: torch.Generator | None = None,
    bins: int | None = None,
    decoder_log_scale: float | None = None,
) -> dict[str, Tensor]:
    """The negative ELBO of ``x0: (B, ...)`` split into its terms (``eq-diffusion-elbo``), in nats.

    Every step t = 2..T is evaluated (one draw of x_t each), so the diffusion term is the exact sum
    over steps, estimated with one x_t per step. The decoder's scale defaults to
    σ_1 = √(1 − ᾱ_1). Returns ``{"prior", "reconstruction", "diffusion", "total"}``, each ``(B,)``.
    """
    ab = check_alpha_bar_grid(alpha_bar).to(x0.device)
    T = len(ab) - 1
    B = x0.shape[0]
    if decoder_log_scale is None:
        decoder_log_scale = 0.5 * math.log1p(-ab[1].item())
    with torch.no_grad():
        prior = prior_kl(x0, ab[T])
        x1, _ = q_sample(x0, ab[1].to(x0), generator=generator)
        ones = torch.ones(B, dtype=torch.long, device=x0.device)
        x0_hat = predict_x0(model, x1, ones, ab, parameterization=parameterization)
        recon = reconstruction_nll(x0, x0_hat, decoder_log_scale, bins=bins)
        diffusion = torch.zeros_like(prior)
        for i in range(2, T + 1):
            xt, _ = q_sample(x0, ab[i].to(x0), generator=generator)
            x0_hat = predict_x0(model, xt, ones * i, ab, parameterization=parameterization)
            diffusion += snr_weighted_mse(x0, x0_hat, ab[i], ab[i - 1])
    return {
        "prior": prior,
        "reconstruction": recon,
        "diffusion": diffusion,
        "total": prior + recon + diffusion,
    }


def elbo_loss(
    model: Model,
    x0: Tensor,
    generator: torch.Generator | None,
    *,
    alpha_bar: Tensor,
    parameterization: str = "x0",
    bins: int | None = None,
    decoder_log_scale: float | None = None,
) -> Tensor:
    """An unbiased one-step estimate of the batch-mean negative ELBO, to train with (``eq-diffusion-elbo``).

    For each example a step i is drawn uniformly from 1..T; the estimate is
    prior + T · (reconstruction if i = 1 else denoising_i). Returns a scalar, nats per example.
    """
    ab = check_alpha_bar_grid(alpha_bar).to(x0.device)
    T = len(ab) - 1
    if T < 2:
        raise ValueError(f"elbo_loss needs T >= 2 steps, got alpha_bar of shape {tuple(ab.shape)}")
    if decoder_log_scale is None:
        decoder_log_scale = 0.5 * math.log1p(-ab[1].item())
    i = uniform_steps(x0.shape[0], T, generator=generator, device=x0.device)
    xt, _ = q_sample(x0, ab[i].to(x0), generator=generator)
    x0_hat = predict_x0(model, xt, i, ab, parameterization=parameterization)
    recon = reconstruction_nll(x0, x0_hat, decoder_log_scale, bins=bins)
    # ½ (SNR(i − 1) − SNR(i)) for i >= 2; the i = 1 entries are not used (SNR(0) = ∞ when ᾱ_0 = 1)
    j = i.clamp_min(2)
    weight = 0.5 * (ab[j - 1] / (1 - ab[j - 1]) - ab[j] / (1 - ab[j]))
    sq = ((x0_hat - x0) ** 2).reshape(x0.shape[0], -1).sum(1)
    step_term = torch.where(i == 1, recon, weight.to(sq) * sq)
    return (prior_kl(x0, ab[T]) + T * step_term).mean()


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
    k, m, s2 = rev.unbind(1)  # k[t - 1] = k_t, ...
    alpha = ab[1:] / ab[:-1]  # alpha[t - 1] = α_t
    mu = ab.sqrt() * x0  # (T + 1,)
    var = 1 - ab
    idx = torch.arange(T + 1)
    lo, hi = torch.minimum(idx[:, None], idx[None]), torch.maximum(idx[:, None], idx[None])
    cov = (ab[hi] / ab[lo]).sqrt() * var[lo]  # (T + 1, T + 1); row and column 0 are zero

    def second_moment(w: Tensor, c: Tensor | float) -> Tensor:
        """E[(w · x_{0:T} + c)²] under q(x_{1:T} | x_0)."""
        return (w @ mu + c) ** 2 + w @ cov @ w

    def unit(t: int) -> Tensor:
        return torch.eye(T + 1, dtype=torch.float64)[t]

    def expected_log_normal(residual_sq: Tensor, variance: Tensor) -> Tensor:
        return -0.5 * (math.log(2 * math.pi) + variance.log()) - residual_sq / (2 * variance)

    recon = expected_log_normal(second_moment(-k[0] * unit(1), x0 - m[0]), s2[0])
    # E log q(x_t | x_{t-1}) = −½ log(2πe β_t): the mean residual² of a step is its variance β_t
    beta_T = 1 - alpha[T - 1]
    log_q_T = expected_log_normal(beta_T, beta_T)
    prior = log_q_T + 0.5 * math.log(2 * math.pi) + 0.5 * (mu[T] ** 2 + var[T])
    consistency, consistency_kl = [], []
    for t in range(1, T):
        beta_t = 1 - alpha[t - 1]
        kk, mm, vv = k[t], m[t], s2[t]  # the step p_θ(x_t | x_{t+1})
        log_q = expected_log_normal(beta_t, beta_t)
        log_p = expected_log_normal(second_moment(unit(t) - kk * unit(t + 1), -mm), vv)
        consistency.append(log_q - log_p)
        mean_gap_sq = second_moment(alpha[t - 1].sqrt() * unit(t - 1) - kk * unit(t + 1), -mm)
        consistency_kl.append(0.5 * ((vv / beta_t).log() + (beta_t + mean_gap_sq) / vv - 1))
    consistency, consistency_kl = torch.stack(consistency), torch.stack(consistency_kl)
    return {
        "reconstruction": recon,
        "prior": prior,
        "consistency": consistency,
        "consistency_kl": consistency_kl,
        "elbo": recon - prior - consistency.sum(),
        "elbo_kl_form": recon - prior - consistency_kl.sum(),
    }
