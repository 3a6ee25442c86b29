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
the variance. :func:`schedule_training_loss` builds that objective for :func:`~diffusion_lessons.training.fit.fit`, and
:func:`time_variance_decomposition` measures how much of that variance comes from t at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from diffusion_lessons.checks import check_choice, check_positive_int, check_time
from diffusion_lessons.noise import time_sampling
from diffusion_lessons.noise.schedules import FromLogSNR
from diffusion_lessons.objectives import continuous_time


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


class _Detached(nn.Module):
    """``module`` with the named parameters detached (no gradient reaches them); same interface."""

    def __init__(self, module: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.m = module
        self.detached = {n: (p.detach() if n in names else p) for n, p in module.named_parameters()}

    def _call(self, method: str, *args: Tensor) -> Tensor:
        params = {f"m.{k}": v for k, v in self.detached.items()}
        return functional_call(_MethodWrapper(self.m, method), params, args)

    def forward(self, *args: Tensor) -> Tensor:
        return self._call("forward", *args)

    def log_snr(self, t: Tensor) -> Tensor:
        return self._call("log_snr", t)


class _MethodWrapper(nn.Module):
    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.m, self.method = module, method

    def forward(self, *args: Tensor) -> Tensor:
        return getattr(self.m, self.method)(*args)


class DenoiserWithSchedule(nn.Module):
    """An ε-model conditioned on λ together with a learned schedule, trained as one module by fit."""

    def __init__(self, eps_model: nn.Module, schedule: MonotoneLogSNR):
        super().__init__()
        self.eps_model, self.schedule = eps_model, schedule


def schedule_training_loss(
    sampler: str = "uniform", *, interior: str = "variance"
) -> Callable[[DenoiserWithSchedule, tuple[Tensor, ...], torch.Generator], Tensor]:
    """A ``loss_fn`` for :func:`~diffusion_lessons.training.fit.fit` that trains a :class:`DenoiserWithSchedule` as VDM does.

    Returns mean(negative ELBO) with gradients to the ε-model and to the schedule's endpoints,
    plus (when ``interior="variance"``) mean(L_∞²) with gradients only to the schedule's interior:
    the interior cannot change E[L_∞] (``eq-vlb-invariance``), so this minimizes the variance of
    the per-example estimator. ``interior="bound"`` trains the interior by the bound instead (a
    gradient that is zero in expectation: pure noise).
    """
    check_choice(sampler, time_sampling.SAMPLERS, name="time sampler")
    check_choice(interior, ("variance", "bound"), name="interior objective")

    def loss_fn(bundle: DenoiserWithSchedule, batch: tuple[Tensor, ...], gen: torch.Generator):
        (x0,) = batch
        sched = bundle.schedule
        t = time_sampling.sample_times(x0.shape[0], sampler=sampler, generator=gen).to(x0.device)
        eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)
        if interior == "bound":
            x0_hat = continuous_time.x0_from_eps_model(bundle.eps_model)
            return continuous_time.negative_elbo(
                x0, x0_hat, sched, t, eps, create_graph=True
            ).mean()
        frozen_inside = _Detached(sched, sched.interior_names())
        x0_hat = continuous_time.x0_from_eps_model(bundle.eps_model)
        bound = continuous_time.negative_elbo(
            x0, x0_hat, frozen_inside, t, eps, create_graph=True
        ).mean()
        frozen_ends = _Detached(sched, sched.endpoint_names())
        model_names = tuple(n for n, _ in bundle.eps_model.named_parameters())
        x0_hat_frozen = continuous_time.x0_from_eps_model(_Detached(bundle.eps_model, model_names))
        diff = continuous_time.continuous_diffusion_loss(
            x0, x0_hat_frozen, frozen_ends, t, eps, create_graph=True
        )
        return bound + (diff**2).mean()

    return loss_fn


def time_variance_decomposition(
    x0: Tensor,
    x0_hat: continuous_time.Denoiser,
    schedule: continuous_time.LogSNRSchedule,
    eps: Tensor,
    *,
    n_nodes: int = 64,
) -> dict[str, float | Tensor]:
    """Split the variance of the per-example L_∞ estimate into the part from t and from (x, ε).

    The estimate is L(x, ε, t) = −½ SNR′(t) ‖x − x̂_θ(z_t; λ_t)‖² (``eq-vlb-continuous``) with
    t ∼ U(0, 1). By the law of total variance,

        Var L = E_{x,ε}[Var_t L] + Var_{x,ε}[E_t L]   ("from_t" + "from_x_eps").

    For every given pair (x_b, ε_b) (``x0, eps: (B, D)``, drawn from the data and N(0, I)) the two
    moments over t are integrated by Gauss–Legendre quadrature with ``n_nodes`` nodes on [0, 1];
    the outer mean and variance are over the B pairs. By ``eq-vlb-invariance``, E_t L for a fixed
    pair depends on the schedule only through its endpoints, and so does "from_x_eps". A minibatch
    of B examples has variance at least from_x_eps / B with *any* time sampler whose times are each
    U(0, 1) and independent of (x, ε) (uniform, low-discrepancy): only "from_t" can be reduced.

    "from_t_main" is the part of "from_t" that is a main effect of t, Var_t[g(t)] with
    g(t) = E_{x,ε} L (estimated from the same B pairs, biased up by about
    (from_t − from_t_main)/B); the rest of "from_t" is an interaction of t with (x, ε). Uniform
    times give a minibatch variance total / B. Low-discrepancy times t_b = (u + b/B) mod 1 give
    (from_t − from_t_main + from_x_eps) / B plus the variance of the stratified average of g,
    which is small for a smooth g: they can remove the main effect only.

    Returns floats ``mean`` (E L), ``total``, ``from_t``, ``from_t_main``, ``from_x_eps``, the
    Monte Carlo standard errors ``total_se``, ``from_t_se`` and ``from_x_eps_se`` (over the B
    pairs), and the
    tensor ``pair_means`` ``(B,)`` of E_t L per pair.
    """
    check_positive_int(n_nodes, name="n_nodes")
    if x0.ndim < 2 or eps.shape != x0.shape:
        raise ValueError(
            f"x0 and eps must have the same shape (B, ...), got {tuple(x0.shape)} and "
            f"{tuple(eps.shape)}"
        )
    if x0.shape[0] < 2:
        raise ValueError(f"need at least 2 pairs (x, ε) for a variance, got {x0.shape[0]}")
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)  # on [−1, 1]
    nodes = torch.as_tensor((nodes + 1) / 2, dtype=torch.float64)
    weights = torch.as_tensor(weights / 2, dtype=torch.float64)
    first = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    second = torch.zeros_like(first)
    node_means = []  # E_{x,ε} L at each node, estimated over the B pairs
    with torch.no_grad():
        for t_k, w_k in zip(nodes.tolist(), weights.tolist(), strict=True):
            t = torch.full((x0.shape[0],), t_k, dtype=torch.float64, device=x0.device)
            loss = continuous_time.continuous_diffusion_loss(x0, x0_hat, schedule, t, eps).double()
            first += w_k * loss
            second += w_k * loss**2
            node_means.append(loss.mean().item())
    var_t = (second - first**2).clamp(min=0.0)  # Var_t L per pair (clamped against rounding)
    n = x0.shape[0]
    centred = first - first.mean()
    from_x_eps = centred.pow(2).sum().item() / (n - 1)
    fourth = centred.pow(4).mean().item()
    g = torch.tensor(node_means, dtype=torch.float64)
    t_main = max((weights * g**2).sum().item() - (weights * g).sum().item() ** 2, 0.0)
    return {
        "mean": first.mean().item(),
        "total": var_t.mean().item() + from_x_eps,
        # the total is (nearly) the mean over pairs of Var_t L + (E_t L − mean)²: its error
        "total_se": (var_t + centred**2).std().item() / math.sqrt(n),
        "from_t": var_t.mean().item(),
        "from_t_se": var_t.std().item() / math.sqrt(n),
        "from_t_main": t_main,
        "from_x_eps": from_x_eps,
        "from_x_eps_se": math.sqrt(max(fourth - from_x_eps**2, 0.0) / n),
        "pair_means": first,
    }
