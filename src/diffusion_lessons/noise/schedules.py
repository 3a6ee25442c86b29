"""Noise schedules (book: chapter "The forward process", section on schedules).

Notation (book page ``notation``; the same names in code):

- ``beta``      β_t, the variance added at discrete step t; per-step retention α_t = 1 − β_t
- ``alpha_bar`` ᾱ_t = ∏_{s ≤ t} α_s, so that x_t = √ᾱ_t x_0 + σ_t ε     (label ``eq-forward-marginal``)
- ``sigma``     σ_t = √(1 − ᾱ_t), the standard deviation of the noise in x_t
- ``snr``       SNR(t) = ᾱ_t / (1 − ᾱ_t)                                (label ``eq-snr``)
- ``log_snr``   λ_t = log SNR(t)

(VDM writes α_t for our √ᾱ_t; Luo and DDPM write α_t for the per-step 1 − β_t, as we do.)

Every variance-preserving schedule is fixed by its log-SNR, because
ᾱ_t = sigmoid(λ_t) and σ_t² = sigmoid(−λ_t). A :class:`Schedule` therefore holds one
function ``t -> λ_t`` on continuous time t ∈ [0, 1], and discrete time with T steps
reads it at t_i = i / T (:meth:`Schedule.ddpm_alpha_bar` builds the T-step grid with each β
capped at 0.999, as Nichol & Dhariwal do). DDPM's original discrete schedule is defined by its
betas (:func:`betas_linear`), and :func:`alpha_bar_from_betas` turns any betas into ᾱ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from diffusion_lessons.checks import check_choice, check_positive_int, check_time

# ---------------------------------------------------------------------------------------------
# Continuous-time log-SNR functions, one per published schedule.


def log_snr_linear_beta(t: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """λ(t) of DDPM's linear-β schedule in continuous time (Ho et al. 2020; Song et al. 2021).

    β(t) = β_min + (β_max − β_min) t per unit time, so log ᾱ(t) = −∫_0^t β(s) ds
    = −(β_min t + ½ (β_max − β_min) t²). With β_min = 0.1 and β_max = 20 this is the
    limit of DDPM's T = 1000 steps from β_1 = 1e-4 to β_T = 0.02 (T β_1 = 0.1, T β_T = 20).
    λ(0) = +∞ (no noise at t = 0).
    """
    integral = beta_min * t + 0.5 * (beta_max - beta_min) * t**2
    # log SNR = log ᾱ − log(1 − ᾱ) = −integral − log(1 − e^{−integral}) = −log(e^{integral} − 1)
    return -torch.log(torch.expm1(integral))


def log_snr_cosine(t: Tensor, s: float = 0.008) -> Tensor:
    """λ(t) of the cosine schedule (Nichol & Dhariwal 2021): ᾱ(t) = f(t) / f(0).

    f(t) = cos²(π/2 · (t + s) / (1 + s)). λ(0) = +∞ and ᾱ(1) = 0, so λ(1) = −∞; in float64
    cos(π/2) rounds to 6e-17, and the value returned at t = 1 (about −74.7) is that rounding, not a
    property of the schedule. Nichol & Dhariwal cap the discrete β_i at 0.999 to keep the last
    step finite (:meth:`Schedule.ddpm_alpha_bar`).
    """
    u = (t + s) / (1 + s) * (math.pi / 2)
    u0 = s / (1 + s) * (math.pi / 2)
    log_alpha_bar = torch.log(torch.cos(u) ** 2) - 2 * math.log(math.cos(u0))
    log_alpha_bar = torch.clamp(log_alpha_bar, max=0.0)  # exact 0 at t = 0; rounding only
    return log_alpha_bar - torch.log(-torch.expm1(log_alpha_bar))


def log_snr_linear(t: Tensor, log_snr_max: float = 13.3, log_snr_min: float = -5.0) -> Tensor:
    """λ(t) of VDM's linear log-SNR schedule (Kingma et al. 2021): λ falls linearly in t.

    λ(0) = ``log_snr_max`` and λ(1) = ``log_snr_min``; VDM writes γ(t) = −λ(t) with
    γ_min = −13.3 and γ_max = 5.
    """
    return log_snr_max + (log_snr_min - log_snr_max) * t


# ---------------------------------------------------------------------------------------------
# A schedule as one object: λ(t) and everything derived from it.

MAX_BETA = 0.999
"""Nichol & Dhariwal's (2021) cap on a discrete β_i, used by :meth:`Schedule.ddpm_alpha_bar`."""


class LogSNRSchedule(Protocol):
    """A schedule: anything with a decreasing ``log_snr(t)`` on [0, 1] (a :class:`Schedule`, a
    learned :class:`~diffusion_lessons.noise.learned_schedule.MonotoneLogSNR`)."""

    def log_snr(self, t: Tensor) -> Tensor: ...


def log_snr_and_derivative(
    schedule: LogSNRSchedule, t: Tensor, *, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """λ(t) and λ′(t) = dλ/dt by autograd, for ``t: (B,)``; both ``(B,)``.

    With ``create_graph=True`` both stay differentiable, so gradients reach a learned schedule;
    without it they are returned detached (enough to train the denoiser under a fixed schedule).
    """
    t = t.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        lam = schedule.log_snr(t)
        (dlam,) = torch.autograd.grad(
            lam.sum(), t, create_graph=create_graph, retain_graph=create_graph
        )
    if not create_graph:  # evaluation: no graph kept (gradients reach the model through z only)
        return lam.detach(), dlam
    return lam, dlam


class FromLogSNR:
    """ᾱ_t, σ_t and SNR(t) for any class that defines ``log_snr(t)`` (label ``eq-alpha-from-log-snr``).

    Shared by the fixed :class:`Schedule` and the learned schedule of chapter 6.
    """

    def log_snr(self, t: Tensor | float) -> Tensor:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def alpha_bar(self, t: Tensor | float) -> Tensor:
        """ᾱ_t = sigmoid(λ_t): the signal variance kept in x_t."""
        return torch.sigmoid(self.log_snr(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        """σ_t = √(1 − ᾱ_t) = √sigmoid(−λ_t): the noise standard deviation in x_t."""
        return torch.sigmoid(-self.log_snr(t)).sqrt()

    def snr(self, t: Tensor | float) -> Tensor:
        """SNR(t) = ᾱ_t / σ_t² = exp(λ_t)."""
        return torch.exp(self.log_snr(t))


@dataclass(frozen=True)
class Schedule(FromLogSNR):
    """A variance-preserving noise schedule on t ∈ [0, 1], given by its log-SNR λ(t).

    All methods take ``t`` of any shape (a float, or a tensor such as ``(B,)``) with values in
    [0, 1], and return a tensor of the same shape.
    """

    name: str
    log_snr_fn: Callable[[Tensor], Tensor]

    def log_snr(self, t: Tensor | float) -> Tensor:
        """λ_t = log SNR(t), computed in float64 and returned in the dtype of ``t``."""
        t = check_time(t)
        return self.log_snr_fn(t.double()).to(t.dtype)

    def discrete_alpha_bar(self, T: int) -> Tensor:
        """ᾱ at the T + 1 grid points t_i = i / T, i = 0..T, in float64: shape ``(T + 1,)``."""
        check_positive_int(T, name="T")
        grid = torch.arange(T + 1, dtype=torch.float64) / T
        return self.alpha_bar(grid)

    def alpha_bar_grid(self, T: int) -> Tensor:
        """The grid of a T-step chain: ᾱ_0 = 1 (x_0 is the data itself), ᾱ_i = ᾱ(i/T) for i = 1..T.

        Shape ``(T + 1,)``, float64. This is :meth:`discrete_alpha_bar` with its first entry set to 1,
        which the discrete bound needs even when the schedule's own ᾱ(0) is below 1; use
        :meth:`ddpm_alpha_bar` for a schedule whose last step must be capped (cosine).
        """
        ab = self.discrete_alpha_bar(T).clone()
        ab[0] = 1.0
        return ab

    def discrete_betas(self, T: int, max_beta: float = MAX_BETA) -> Tensor:
        """β_i = min(1 − ᾱ(i/T) / ᾱ((i−1)/T), ``max_beta``) for i = 1..T: shape ``(T,)``, float64.

        The cap (default 0.999, Nichol & Dhariwal 2021) only acts where ᾱ nearly vanishes in one
        step, as at the cosine schedule's last step (β_T = 1 to double precision); it keeps every
        β_i < 1, so the result passes :func:`check_betas`. ``max_beta=1`` turns it off.
        """
        return _capped_betas(self.discrete_alpha_bar(T), max_beta)

    def ddpm_alpha_bar(self, T: int, max_beta: float = MAX_BETA) -> Tensor:
        """ᾱ_0..ᾱ_T of a T-step discrete chain read off this schedule: ``(T + 1,)``, float64.

        ᾱ_0 = 1 (step 0 is the data itself), β_i = min(1 − ᾱ(t_i)/ᾱ(t_{i−1}), ``max_beta``) with
        t_i = i/T and ᾱ(t_0) replaced by 1, and ᾱ_i = ∏_{s≤i} (1 − β_s). Without a cap this is
        ᾱ_i = ᾱ(i/T) up to rounding. The default cap 0.999 is Nichol & Dhariwal's (2021, §3.2;
        diffusers' ``betas_for_alpha_bar`` does the same): for the cosine schedule, whose
        ᾱ(1) is 0, it gives ᾱ_T = 0.001 ᾱ_{T−1} (2.4e-9 for T = 1000) instead of a ᾱ_T that
        is only rounding (3.7e-33), through which x̂_0 = (x_T − σ_T ε̂)/√ᾱ_T would blow up any
        error in ε̂. This is the grid
        :func:`~diffusion_lessons.objectives.discrete_time.ddpm_terms` uses.
        """
        ab = self.discrete_alpha_bar(T).clone()
        ab[0] = 1.0
        betas = _capped_betas(ab, max_beta)
        return torch.cat([ab[:1], torch.cumprod(1.0 - betas, dim=0)])


def _capped_betas(alpha_bar: Tensor, max_beta: float) -> Tensor:
    """β_i = min(1 − ᾱ_i / ᾱ_{i−1}, max_beta) from ᾱ on a grid ``(T + 1,)``: ``(T,)``."""
    if isinstance(max_beta, bool) or not isinstance(max_beta, (int, float)):
        raise ValueError(f"max_beta must be a number in (0, 1], got {max_beta!r}")
    if not 0.0 < max_beta <= 1.0:
        raise ValueError(f"max_beta must lie in (0, 1], got {max_beta!r}")
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return torch.clamp(betas, max=max_beta) if max_beta < 1.0 else betas


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear_beta": log_snr_linear_beta,
    "cosine": log_snr_cosine,
    "linear_log_snr": log_snr_linear,
}
"""The book's named schedules: DDPM's linear β, the cosine schedule, VDM's linear log-SNR."""


def get_schedule(name: str, **params: float) -> Schedule:
    """The :class:`Schedule` called ``name`` (one of :data:`SCHEDULES`), with optional parameters.

    >>> get_schedule("linear_log_snr", log_snr_min=-6.0).log_snr(1.0)
    tensor(-6.)
    """
    check_choice(name, tuple(SCHEDULES), name="schedule name")
    fn = SCHEDULES[name]
    if params:
        base = fn
        return Schedule(name, lambda t: base(t, **params))
    return Schedule(name, fn)


def from_endpoints(
    shape: Callable[[Tensor], Tensor], log_snr_max: float = 13.3, log_snr_min: float = -5.0
) -> Schedule:
    """The schedule λ(t) = λ_max + (λ_min − λ_max) g(t) with the given endpoints and shape g.

    ``shape`` is an increasing g on [0, 1] with g(0) = 0 and g(1) = 1 (g(t) = t is VDM's linear
    log-SNR). The continuous-time bound depends on a schedule only through its endpoints
    (``eq-vlb-continuous``), so schedules made here with the same endpoints have the same L_∞.
    """
    ends = shape(torch.tensor([0.0, 1.0], dtype=torch.float64))
    if not torch.allclose(ends, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-9):
        raise ValueError(f"shape must map 0 to 0 and 1 to 1, got g(0), g(1) = {ends.tolist()}")
    if not log_snr_max > log_snr_min:
        raise ValueError(f"need log_snr_max > log_snr_min, got {log_snr_max} and {log_snr_min}")
    return Schedule("custom", lambda t: log_snr_max + (log_snr_min - log_snr_max) * shape(t))


# ---------------------------------------------------------------------------------------------
# Discrete time, defined by betas.


def betas_linear(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> Tensor:
    """DDPM's linear schedule (Ho et al. 2020, sec. 4): β_1..β_T evenly spaced, float64 ``(T,)``."""
    check_positive_int(T, name="T")
    betas = torch.linspace(beta_1, beta_T, T, dtype=torch.float64)
    return check_betas(betas)


def check_betas(betas: Tensor) -> Tensor:
    """Return ``betas`` (shape ``(T,)``, as a floating tensor) after checking 0 < β_i < 1.

    That is all the forward process needs. Published schedules have β_1 ≤ β_2 ≤ … ≤ β_T, but
    that is a convention, not a requirement (the discretized betas of a learned schedule need not
    be monotone), so it is not checked.
    """
    betas = torch.as_tensor(betas)
    if betas.ndim != 1 or betas.numel() == 0:
        raise ValueError(f"betas must have shape (T,) with T >= 1, got shape {tuple(betas.shape)}")
    if not torch.is_floating_point(betas):
        betas = betas.double()
    if not ((betas > 0) & (betas < 1)).all():  # also catches NaN
        raise ValueError(
            "betas must lie in the open interval (0, 1), got values from "
            f"{betas.min().item():.6g} to {betas.max().item():.6g}"
        )
    return betas


def alpha_bar_from_betas(betas: Tensor) -> Tensor:
    """ᾱ_i = ∏_{s=1}^{i} (1 − β_s) for i = 0..T, with ᾱ_0 = 1: shape ``(T + 1,)``."""
    betas = check_betas(betas)
    ones = torch.ones(1, dtype=betas.dtype)
    return torch.cat([ones, torch.cumprod(1.0 - betas, dim=0)])


def snr_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """SNR = ᾱ / (1 − ᾱ) (label ``eq-snr``)."""
    return alpha_bar / (1.0 - alpha_bar)


def log_snr_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """λ = log ᾱ − log(1 − ᾱ), the inverse of ᾱ = sigmoid(λ)."""
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def check_alpha_bar_grid(alpha_bar: Tensor) -> Tensor:
    """Return ``alpha_bar: (T + 1,)`` as float64 after checking 1 ≥ ᾱ_0 > ᾱ_1 > … > ᾱ_T ≥ 0."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    if ab.ndim != 1 or ab.numel() < 2:
        raise ValueError(f"alpha_bar must have shape (T + 1,) with T >= 1, got {tuple(ab.shape)}")
    if (ab > 1).any() or (ab < 0).any() or (ab[1:] >= ab[:-1]).any():
        raise ValueError("alpha_bar must decrease strictly from ᾱ_0 <= 1 to ᾱ_T >= 0")
    return ab
