"""The forward SDEs of score-based models and the samplers of their reverse (chapter 8).

A forward SDE dx = f(x, t) dt + g(t) dw on t ∈ [0, 1] (Song et al. 2021) whose marginal given
x_0 is x_t = m(t) x_0 + s(t) ε. Two of them, as small frozen objects on a
:class:`~diffusion_lessons.noise.schedules.Schedule` with log-SNR λ(t) = log(m²/s²):

- :class:`VPSDE`  variance preserving, the continuous limit of the chapter 3 chain:
  f = −½ β(t) x, g = √β(t), β(t) = −d log ᾱ/dt; marginal (√ᾱ, σ) (``eq-forward-marginal``).
- :class:`VESDE`  variance exploding: f = 0, g = √(d s²/dt), marginal (1, e^{−λ/2}); λ falling
  linearly in t is Song et al.'s geometric σ(t) = σ_min (σ_max/σ_min)^t.

Each has ``log_snr(t)``, ``marginal(t) -> (m, s)``, ``drift(x, t)`` and ``diffusion(t)``; time t
is a Python float or a 0-d tensor (one time for the whole batch). :func:`marginal_score` reads
the score ∇ log p_t(x) of the denoiser's model in the SDE's own coordinates.

The reverse-time SDE (Anderson 1982) dx = [f − g² ∇ log p_t(x)] dt + g dw̄ runs from t = 1 to
t ≈ 0: :func:`euler_maruyama` discretizes it, and :func:`predictor_corrector` adds Langevin
corrector steps at each time (Song et al. 2021, Algorithms 2 and 3). Start them from the prior
N(0, s(1)² I) (N(0, I) for VP, N(0, σ_max² I) for VE). Randomness comes from ``generator``;
``callback(step, t, x)`` sees every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_lessons.checks import check_positive_int, check_time
from diffusion_lessons.denoisers.denoiser import Denoiser
from diffusion_lessons.noise.schedules import LogSNRSchedule, log_snr_and_derivative
from diffusion_lessons.sampling.langevin import check_output_shape, check_step_size, langevin_step

Callback = Callable[[int, float, Tensor], None]
"""``callback(step, t, x)``: step k = 1 … N; x is the iterate at time t after the step."""


def _time(t: Tensor | float) -> Tensor:
    return check_time(torch.as_tensor(t, dtype=torch.float64))


@dataclass(frozen=True)
class VPSDE:
    """The variance-preserving SDE dx = −½ β(t) x dt + √β(t) dw on ``schedule`` (Song et al. 2021,
    eq. 11), with β(t) = −d log ᾱ/dt = −σ²(t) λ′(t), so that x_t = √ᾱ x_0 + σ ε exactly."""

    schedule: LogSNRSchedule

    def log_snr(self, t: Tensor | float) -> Tensor:
        """λ(t) = log(ᾱ/σ²), float64."""
        return self.schedule.log_snr(_time(t))

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(m, s) = (√ᾱ(t), σ(t)) = (√sigmoid(λ), √sigmoid(−λ)): x_t = m x_0 + s ε."""
        lam = self.log_snr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def beta(self, t: Tensor | float) -> Tensor:
        """β(t) = −d log ᾱ/dt = −sigmoid(−λ) λ′(t) ≥ 0."""
        return -torch.sigmoid(-self.log_snr(t)) * log_snr_and_derivative(self.schedule, _time(t))[1]

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """f(x, t) = −½ β(t) x, shaped like ``x``."""
        return (-0.5 * self.beta(t)).to(x) * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        """g(t) = √β(t)."""
        return self.beta(t).sqrt()


@dataclass(frozen=True)
class VESDE:
    """The variance-exploding SDE dx = √(d s²/dt) dw with s(t) = e^{−λ(t)/2} (Song et al. 2021,
    eq. 9): x_t = x_0 + s(t) ε, the VP variable x_t/√ᾱ of the same λ."""

    schedule: LogSNRSchedule

    def log_snr(self, t: Tensor | float) -> Tensor:
        """λ(t) = −2 log s(t), float64."""
        return self.schedule.log_snr(_time(t))

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(m, s) = (1, e^{−λ/2}): x_t = x_0 + s ε."""
        lam = self.log_snr(t)
        return torch.ones_like(lam), torch.exp(-0.5 * lam)

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """f = 0."""
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor | float) -> Tensor:
        """g(t) = √(d s²/dt) = √(−λ′(t) e^{−λ(t)})."""
        lam = self.log_snr(t)
        return (-log_snr_and_derivative(self.schedule, _time(t))[1] * torch.exp(-lam)).sqrt()


SDE = VPSDE | VESDE


def marginal_score(sde: SDE, denoiser: Denoiser, x: Tensor, t: Tensor | float) -> Tensor:
    """The model's score ∇ log p_t(x) at ``x: (B, ...)``, time ``t``, in the SDE's coordinates.

    With x_t = m x_0 + s ε, the denoiser sees the VP variable x_t / √(m² + s²) at λ(t) and
    returns x̂_0; Tweedie's formula (``eq-tweedie``) E[m x_0 | x_t] = x_t + s² ∇ log p_t gives
    the score (m x̂_0 − x_t)/s².
    """
    m, s = sde.marginal(t)
    lam = sde.log_snr(t).to(x.device).expand(x.shape[0])
    x0_hat = check_output_shape(
        denoiser(x / torch.sqrt(m**2 + s**2).to(x), lam), x, name="denoiser"
    )
    return (m.to(x) * x0_hat - x) / (s**2).to(x)


def time_grid(n_steps: int, *, t_min: float = 1e-3, t_max: float = 1.0) -> Tensor:
    """``n_steps + 1`` evenly spaced times from ``t_max`` down to ``t_min``: ``(N + 1,)`` float64.

    t_min = 1e-3 is Song et al.'s (2021) end time for the VP SDE, where the score is still
    finite.
    """
    check_positive_int(n_steps, name="n_steps")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min!r}, t_max={t_max!r}")
    return torch.linspace(t_max, t_min, n_steps + 1, dtype=torch.float64)


def check_times(times: Tensor, *, name: str = "times") -> Tensor:
    """Return ``times: (N + 1,)`` as float64 after checking they fall strictly within [0, 1]."""
    ts = check_time(torch.as_tensor(times, dtype=torch.float64), name=name)
    if ts.ndim != 1 or ts.numel() < 2 or (ts[1:] >= ts[:-1]).any():
        raise ValueError(
            f"{name} must have shape (N + 1,) with N >= 1 and decrease strictly "
            f"(from t = 1 towards t = 0), got {ts.tolist()}"
        )
    return ts


def reverse_drift(sde: SDE, denoiser: Denoiser, x: Tensor, t: Tensor | float) -> Tensor:
    """The reverse-time SDE's drift f(x, t) − g(t)² ∇ log p_t(x) (Anderson 1982)."""
    g2 = (sde.diffusion(t) ** 2).to(x)
    return sde.drift(x, t) - g2 * marginal_score(sde, denoiser, x, t)


def _em_step(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    t: Tensor,
    t_next: Tensor,
    generator: torch.Generator | None,
    *,
    last: bool,
) -> Tensor:
    """x − h [f − g² ∇ log p_t](x, t) + g(t) √h z with h = t − t′; no noise on the ``last`` step."""
    h = (t - t_next).item()
    x = x - h * reverse_drift(sde, denoiser, x, t)
    if last:
        return x
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + (sde.diffusion(t) * math.sqrt(h)).to(x) * z


@torch.no_grad()
def euler_maruyama(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    times: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler–Maruyama on the reverse-time SDE from ``x: (B, ...)`` at ``times[0]``: ``(B, ...)``.

    For each step t → t′ = t − h of ``times`` (decreasing), x ← x − h [f − g² ∇ log p_t](x, t)
    + g(t) √h z, one denoiser call per step. The last step adds no noise (it returns the mean,
    as Song et al.'s samplers do), so N steps make N denoiser calls and N − 1 noise draws.
    """
    ts = check_times(times)
    n = len(ts) - 1
    for k in range(n):
        x = _em_step(sde, denoiser, x, ts[k], ts[k + 1], generator, last=k == n - 1)
        if callback is not None:
            callback(k + 1, ts[k + 1].item(), x)
    return x


def _corrector_step_size(score: Tensor, noise: Tensor, snr: float, alpha: float) -> float:
    """Song et al.'s (2021, Algorithm 3) ε = 2 α (r ‖z‖ / ‖ŝ‖)², with the norms per example
    averaged over the batch, as in their code (per-example norms blow up in low dimension, where
    ‖ŝ‖ can be near 0 at a mode)."""
    score_norm = score.reshape(score.shape[0], -1).norm(dim=1).mean()
    noise_norm = noise.reshape(noise.shape[0], -1).norm(dim=1).mean()
    return 2 * alpha * (snr * noise_norm / score_norm).item() ** 2


def langevin_corrector(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    t: Tensor | float,
    *,
    snr: float,
    alpha: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One corrector step at time t: Langevin with ε = 2 α (r ‖z‖/‖ŝ‖)² (Song et al. 2021,
    Algorithm 3, r = ``snr``), x + ε ŝ + √(2ε) z, a :func:`~diffusion_lessons.sampling.langevin.langevin_step`
    of size 2ε."""
    score = marginal_score(sde, denoiser, x, t)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return langevin_step(x, score, 2 * _corrector_step_size(score, z, snr, alpha), z)


@torch.no_grad()
def predictor_corrector(
    sde: SDE,
    denoiser: Denoiser,
    x: Tensor,
    times: Tensor,
    *,
    snr: float = 0.16,
    n_corrector: int = 1,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Algorithms 2 (VE) and 3 (VP)).

    Each step t → t′ of ``times`` is one Euler–Maruyama predictor step of the reverse SDE, then
    ``n_corrector`` :func:`langevin_corrector` steps at t′ with r = ``snr`` and α = m(t′)²/m(t)²
    (1 for VE, 1 − β_i for VP). The last predictor step adds no noise and the last time gets no
    corrector, so N steps cost N + (N − 1) · ``n_corrector`` denoiser calls. The norms are averaged over
    the batch, as in Song et al.'s code, so a draw depends on the rest of its batch. Song et
    al. use r = 0.16 for VE and 0.01 for VP on images.
    """
    snr = check_step_size(snr, name="snr")
    check_positive_int(n_corrector, name="n_corrector")
    ts = check_times(times)
    n = len(ts) - 1
    for k in range(n):
        t, t_next = ts[k], ts[k + 1]
        x = _em_step(sde, denoiser, x, t, t_next, generator, last=k == n - 1)
        if k < n - 1:
            alpha = (sde.marginal(t_next)[0] / sde.marginal(t)[0]).item() ** 2
            for _ in range(n_corrector):
                x = langevin_corrector(
                    sde, denoiser, x, t_next, snr=snr, alpha=alpha, generator=generator
                )
        if callback is not None:
            callback(k + 1, t_next.item(), x)
    return x
