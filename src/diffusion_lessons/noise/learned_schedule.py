"""A learned noise schedule: a monotone network for the log-SNR (Kingma et al. 2021, VDM, app. H).

VDM writes γ(t) = −λ(t), which must increase in t (noise grows). Here

    γ(t) = γ_0 + (γ_1 − γ_0) · (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0))         (label ``eq-monotone-gamma``)
    γ̃(t) = l_1(t) + l_3(sigmoid(l_2(l_1(t))))

where l_1, l_2, l_3 are linear layers whose weights are softplus of free parameters, hence positive:
γ̃ is a composition and sum of increasing functions, so γ is increasing for *any* parameter values.
The endpoints γ_0 = −λ_max and γ_1 = γ_0 + softplus(δ) > γ_0 are parameters of their own. VDM trains
the endpoints by the bound and the interior (l_1, l_2, l_3) by the *variance* of the bound's
estimator: the expected continuous-time loss does not depend on the interior at all
(``eq-vlb-invariance``), so the gradient of E[L²] with respect to the interior is the gradient of
the variance. That objective, and the measurement of how much of the variance comes from t at
all, are in :mod:`~diffusion_lessons.objectives.schedule_variance`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lessons.checks import check_time
from diffusion_lessons.noise.schedules import FromLogSNR


class PositiveLinear(nn.Module):
    """y = x Wᵀ + b with W = softplus(V) > 0 entrywise: an increasing map of each input."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.raw_weight = nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return x @ F.softplus(self.raw_weight).T + self.bias


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class MonotoneLogSNR(FromLogSNR, nn.Module):
    """λ(t) = −γ(t) with γ from ``eq-monotone-gamma``: decreasing in t, λ(0) = λ_max, λ(1) = λ_min.

    Used like a :class:`~diffusion_lessons.noise.schedules.Schedule`: :meth:`log_snr`,
    :meth:`~.FromLogSNR.alpha_bar`, :meth:`~.FromLogSNR.sigma`, :meth:`~.FromLogSNR.snr` take
    ``t`` of any shape in [0, 1] and return the same shape.
    """

    def __init__(
        self,
        log_snr_max: float = 13.3,
        log_snr_min: float = -5.0,
        hidden: int = 64,
        learn_endpoints: bool = True,
    ):
        super().__init__()
        if not log_snr_max > log_snr_min:
            raise ValueError(
                f"log_snr_max must exceed log_snr_min, got {log_snr_max} and {log_snr_min}"
            )
        self.gamma_0 = nn.Parameter(
            torch.tensor(-float(log_snr_max)), requires_grad=learn_endpoints
        )
        gap = _inverse_softplus(float(log_snr_max - log_snr_min))
        self.raw_gap = nn.Parameter(torch.tensor(gap), requires_grad=learn_endpoints)
        self.l1 = PositiveLinear(1, 1)
        self.l2 = PositiveLinear(1, hidden)
        self.l3 = PositiveLinear(hidden, 1)

    def endpoint_names(self) -> tuple[str, ...]:
        """Names of the endpoint parameters (trained by the bound)."""
        return ("gamma_0", "raw_gap")

    def interior_names(self) -> tuple[str, ...]:
        """Names of the interior parameters (trained by the estimator's variance)."""
        return tuple(n for n, _ in self.named_parameters() if n not in self.endpoint_names())

    def gamma_tilde(self, t: Tensor) -> Tensor:
        """The unnormalized increasing network γ̃(t) for ``t`` of any shape."""
        h = self.l1(t.reshape(-1, 1))
        return (h + self.l3(torch.sigmoid(self.l2(h)))).reshape(t.shape)

    def gamma(self, t: Tensor | float) -> Tensor:
        """γ(t) = −λ(t) (``eq-monotone-gamma``), computed in the network's dtype, returned in t's."""
        t = check_time(t)
        p = self.gamma_0
        tt = t.to(device=p.device, dtype=p.dtype)
        ends = self.gamma_tilde(torch.tensor([0.0, 1.0], dtype=p.dtype, device=p.device))
        unit = (self.gamma_tilde(tt) - ends[0]) / (ends[1] - ends[0])
        gamma_1 = self.gamma_0 + F.softplus(self.raw_gap)
        return (self.gamma_0 + (gamma_1 - self.gamma_0) * unit).to(t.dtype)

    def log_snr(self, t: Tensor | float) -> Tensor:
        """λ(t) = −γ(t)."""
        return -self.gamma(t)
