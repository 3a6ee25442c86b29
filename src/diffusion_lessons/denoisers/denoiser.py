"""The denoiser: the one interface that samplers, losses and estimators take (chapters 4–10).

A *denoiser* is any callable

    D(x_t, log_snr) -> x̂_0,        x_t: (B, ...),  log_snr: (B,),  x̂_0: (B, ...)

its estimate of x_0 from x_t = √ᾱ x_0 + σ ε (``eq-forward-marginal``) at the noise level
λ = log SNR = log(ᾱ / σ²), so that ᾱ = sigmoid(λ) and σ² = sigmoid(−λ)
(``eq-alpha-from-log-snr``). Conditioning on λ rather than on a time t or a step i makes one
denoiser usable under every schedule, in discrete and in continuous time (Kingma et al. 2021;
k-diffusion's ``Denoiser`` conditions on σ for the same reason).

A network predicts x_0, ε or the score (chapter "Three equivalent objectives"). These wrap it:

- :class:`FromX0`     x̂_0 = net(x_t, c)
- :class:`FromEps`    x̂_0 = (x_t − σ ε̂(x_t, c)) / √ᾱ                 (``eq-eps-to-x0``)
- :class:`FromScore`  x̂_0 = (x_t + σ² ŝ(x_t, c)) / √ᾱ                 (``eq-tweedie``)
- :class:`SkipX0`     x̂_0 = √ᾱ x_t + σ F(x_t, c)

and :func:`eps_from` and :func:`score_from` read any denoiser back as ε̂ or a score. ``c`` is the
network's noise input, ``cond(λ)``: λ itself by default, or the time the network was trained at,
:func:`grid_time` (t = i/T on a grid of T steps) or :func:`schedule_time` (t ∈ [0, 1] of a
schedule). The wrappers are modules, so a wrapped network trains and saves like any other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffusion_lessons.checks import append_dims, as_coefficient, promote_coefficient

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``D(x_t (B, ...), log_snr (B,)) -> x̂_0 (B, ...)``."""

Cond = Callable[[Tensor], Tensor]
"""Maps ``log_snr: (B,)`` to the noise input ``(B,)`` a network was trained with."""


def alpha_sigma(log_snr: Tensor | float, xt: Tensor) -> tuple[Tensor, Tensor]:
    """(√ᾱ, σ) = (√sigmoid(λ), √sigmoid(−λ)), shaped to broadcast against ``xt``.

    Both come from λ directly, so neither loses precision at either end of the noise range
    (1 − sigmoid(λ) would cancel for large λ). They are formed in the wider of λ's and x_t's
    dtype and cast to x_t's once.
    """
    lam = promote_coefficient(append_dims(as_coefficient(log_snr), xt, name="log_snr"), xt)
    return torch.sigmoid(lam).sqrt().to(xt), torch.sigmoid(-lam).sqrt().to(xt)


def _identity(log_snr: Tensor) -> Tensor:
    return log_snr


class WrappedNetwork(nn.Module):
    """A network ``net(x_t, c)`` with its noise input c = ``cond(λ)``; the four wrappers below
    differ only in what the network's output means."""

    def __init__(self, net: nn.Module, cond: Cond | None = None):
        super().__init__()
        self.net = net
        self.cond = cond if cond is not None else _identity

    def predict(self, xt: Tensor, log_snr: Tensor) -> Tensor:
        """The network's raw output at x_t, fed the noise input ``cond(log_snr)``, in x_t's dtype.

        The network runs in the dtype of its parameters (float64 data meets a float32 network
        as float32), and its output is cast back, so the wrapper's algebra is done in x_t's dtype.
        """
        p = next(self.net.parameters(), None) if isinstance(self.net, nn.Module) else None
        dtype = xt.dtype if p is None else p.dtype
        return self.net(xt.to(dtype), self.cond(log_snr).to(dtype)).to(xt.dtype)


class FromX0(WrappedNetwork):
    """A network that predicts x_0, as a denoiser: x̂_0 = net(x_t, cond(λ))."""

    def forward(self, xt: Tensor, log_snr: Tensor) -> Tensor:
        return self.predict(xt, log_snr)


class FromEps(WrappedNetwork):
    """A network that predicts ε, as a denoiser: x̂_0 = (x_t − σ ε̂) / √ᾱ (``eq-eps-to-x0``)."""

    def forward(self, xt: Tensor, log_snr: Tensor) -> Tensor:
        a, s = alpha_sigma(log_snr, xt)
        return (xt - s * self.predict(xt, log_snr)) / a


class FromScore(WrappedNetwork):
    """A network that predicts the score ∇ log q(x_t), as a denoiser (``eq-tweedie``).

    x̂_0 = (x_t + σ² ŝ) / √ᾱ: Tweedie's formula with the model's score in place of the true one.
    """

    def forward(self, xt: Tensor, log_snr: Tensor) -> Tensor:
        a, s = alpha_sigma(log_snr, xt)
        return (xt + s**2 * self.predict(xt, log_snr)) / a


class SkipX0(WrappedNetwork):
    """An x_0-predictor with the linear part built in: x̂_0 = √ᾱ x_t + σ F(x_t, cond(λ)).

    √ᾱ x_t is E[x_0 | x_t] when x_0 ~ N(0, I), so the network F only learns the correction,
    scaled by σ: near λ = +∞ (no noise) the output is close to x_t without F having to learn the
    identity map (chapter "The diffusion ELBO").
    """

    def forward(self, xt: Tensor, log_snr: Tensor) -> Tensor:
        a, s = alpha_sigma(log_snr, xt)
        return a * xt + s * self.predict(xt, log_snr)


def eps_from(denoiser: Denoiser, xt: Tensor, log_snr: Tensor) -> Tensor:
    """ε̂ = (x_t − √ᾱ x̂_0) / σ: the noise a denoiser implies (``eq-eps-to-x0`` solved for ε).

    ``xt: (B, ...)``, ``log_snr: (B,)`` → ``(B, ...)``. For a :class:`FromEps` it is the network's
    own output, exactly: the round trip ε̂ → x̂_0 → ε̂ would give the same value up to rounding
    that grows like 1/σ where σ is small, so a loss in ε units reads the network directly.
    """
    if isinstance(denoiser, FromEps):
        return denoiser.predict(xt, log_snr)
    a, s = alpha_sigma(log_snr, xt)
    return (xt - a * denoiser(xt, log_snr)) / s


def score_from(denoiser: Denoiser, xt: Tensor, log_snr: Tensor) -> Tensor:
    """ŝ = (√ᾱ x̂_0 − x_t) / σ²: the score a denoiser implies (Tweedie, ``eq-tweedie``).

    ``xt: (B, ...)``, ``log_snr: (B,)`` → ``(B, ...)``. For a :class:`FromScore` it is the
    network's own output, exactly (no round trip through x̂_0, whose rounding grows like 1/σ²).
    """
    if isinstance(denoiser, FromScore):
        return denoiser.predict(xt, log_snr)
    a, s = alpha_sigma(log_snr, xt)
    return (a * denoiser(xt, log_snr) - xt) / s**2


def _check_log_snr(log_snr: Tensor, low: float, high: float, where: str) -> None:
    if log_snr.numel() and not ((log_snr >= low) & (log_snr <= high)).all():
        raise ValueError(
            f"log_snr must lie in [{low:.6g}, {high:.6g}], the range {where}, got values from "
            f"{log_snr.min().item():.6g} to {log_snr.max().item():.6g}"
        )


def grid_time(alpha_bar: Tensor) -> Cond:
    """λ → t for a network trained at t = i/T on the grid ``alpha_bar: (T + 1,)`` (ᾱ_0 = 1).

    At a grid level λ_i the time is exactly i/T; between two levels it is interpolated linearly
    in λ (as k-diffusion's ``DiscreteSchedule.sigma_to_t`` does in log σ). Levels outside
    [λ_T, λ_1] are an error: the network never saw them.
    """
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    if ab.ndim != 1 or ab.numel() < 2 or not (ab[1:] < ab[:-1]).all() or (ab[1:] <= 0).any():
        raise ValueError(
            "alpha_bar must be a grid (T + 1,) decreasing from ᾱ_0 = 1 to ᾱ_T > 0, "
            f"got shape {tuple(ab.shape)}"
        )
    T = len(ab) - 1
    # λ_1 > λ_2 > … > λ_T, flipped to increase for searchsorted: rising[k] = λ_{T-k}
    rising = (torch.log(ab[1:]) - torch.log1p(-ab[1:])).flip(0)

    def cond(log_snr: Tensor) -> Tensor:
        lam = torch.as_tensor(log_snr).double()
        _check_log_snr(lam, rising[0].item(), rising[-1].item(), f"of the {T}-step grid")
        hi = torch.searchsorted(rising.to(lam.device), lam).clamp(1, T - 1) if T > 1 else None
        if hi is None:
            return torch.ones_like(lam)
        lo_lam, hi_lam = rising.to(lam.device)[hi - 1], rising.to(lam.device)[hi]
        frac = (lam - lo_lam) / (hi_lam - lo_lam)  # 0 at rising[hi - 1], 1 at rising[hi]
        steps = (T - (hi - 1)) - frac  # rising[k] is step T - k
        return steps / T

    return cond


def schedule_time(schedule, *, iterations: int = 60) -> Cond:
    """λ → t ∈ [0, 1] with ``schedule.log_snr(t) = λ``, for a network trained on t.

    ``schedule`` is anything with a decreasing ``log_snr(t)``. The inverse is found by bisection
    in float64 (``iterations`` halvings of [0, 1]: 60 reach double precision in t).
    """

    def cond(log_snr: Tensor) -> Tensor:
        lam = torch.as_tensor(log_snr).double()
        ends = schedule.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64, device=lam.device))
        _check_log_snr(lam, ends[1].item(), ends[0].item(), "of the schedule")
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            above = schedule.log_snr(mid).double() > lam  # still less noisy than λ: go later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    return cond
