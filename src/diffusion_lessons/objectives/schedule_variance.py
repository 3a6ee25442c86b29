"""VDM's objective for a learned noise schedule: the bound for the endpoints, the variance for the
interior (chapter "Learning the noise schedule"; Kingma et al. 2021, VDM, app. I.2).

The continuous-time loss L_∞ depends on a schedule only through its endpoints λ(0), λ(1)
(``eq-vlb-invariance``), so the interior of a learned λ (:class:`~diffusion_lessons.noise.learned_schedule.MonotoneLogSNR`)
cannot change E[L_∞]: the gradient of E[L_∞²] with respect to it is the gradient of the variance
of the per-example estimate. :func:`variance_trained_loss` trains it so; :func:`bound_trained_loss`
trains everything by the bound (the control). :func:`time_variance_decomposition` measures how much
of the variance comes from t at all, which is all that a schedule or a time sampler can change.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from diffusion_lessons.checks import check_choice, check_positive_int
from diffusion_lessons.denoisers.denoiser import Denoiser, FromEps
from diffusion_lessons.noise import time_sampling
from diffusion_lessons.noise.learned_schedule import MonotoneLogSNR
from diffusion_lessons.noise.schedules import LogSNRSchedule
from diffusion_lessons.objectives import continuous_time

LossFn = Callable[["DenoiserWithSchedule", tuple[Tensor, ...], torch.Generator], Tensor]


class DenoiserWithSchedule(nn.Module):
    """An ε-model conditioned on λ together with a learned schedule, trained as one module by fit.

    The denoiser is ``FromEps(eps_model)`` (:class:`~diffusion_lessons.denoisers.denoiser.FromEps`).
    """

    def __init__(self, eps_model: nn.Module, schedule: MonotoneLogSNR):
        super().__init__()
        self.eps_model, self.schedule = eps_model, schedule


def _draw(x0: Tensor, sampler: str, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    t = time_sampling.sample_times(x0.shape[0], sampler=sampler, generator=gen).to(x0.device)
    return t, torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)


def variance_trained_loss(sampler: str = "uniform") -> LossFn:
    """A ``loss_fn`` for :func:`~diffusion_lessons.training.fit.fit` that trains a :class:`DenoiserWithSchedule` as VDM does.

    Returns mean(negative ELBO) with gradients to the ε-model and to the schedule's endpoints,
    plus mean(L_∞²) with gradients only to the schedule's interior: the interior cannot change
    E[L_∞] (``eq-vlb-invariance``), so this minimizes the variance of the per-example estimator.
    Times come from ``sampler`` (:data:`~diffusion_lessons.noise.time_sampling.SAMPLERS`).
    """
    check_choice(sampler, time_sampling.SAMPLERS, name="time sampler")

    def loss_fn(bundle: DenoiserWithSchedule, batch: tuple[Tensor, ...], gen: torch.Generator):
        (x0,) = batch
        sched, den = bundle.schedule, FromEps(bundle.eps_model)
        t, eps = _draw(x0, sampler, gen)
        bound = continuous_time.negative_elbo(x0, den, sched, t, eps, create_graph=True).mean()
        diff = continuous_time.continuous_diffusion_loss(x0, den, sched, t, eps, create_graph=True)
        interior = set(sched.interior_names())
        inside = [p for n, p in sched.named_parameters() if n in interior]
        rest = [p for p in bundle.parameters() if all(p is not q for q in inside)]
        return _routed(bound, rest, (diff**2).mean(), inside)

    return loss_fn


def _routed(loss_a: Tensor, params_a: list, loss_b: Tensor, params_b: list) -> Tensor:
    """A scalar worth loss_a + loss_b whose gradient is ∇loss_a on ``params_a``, ∇loss_b on ``params_b``.

    Two ``autograd.grad`` calls give the two gradients g; the result adds Σ_p ⟨p, g_p⟩ − its own
    value (zero, with gradient g_p), so ``loss.backward()`` puts each gradient on its own
    parameters. Parameters that do not require gradients are left out.
    """
    surrogate = torch.zeros((), dtype=loss_a.dtype, device=loss_a.device)
    for loss, params in ((loss_a, params_a), (loss_b, params_b)):
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                surrogate = surrogate + (p * g).sum()
    return (loss_a + loss_b).detach() + surrogate - surrogate.detach()


def bound_trained_loss(sampler: str = "uniform") -> LossFn:
    """A ``loss_fn`` that trains the ε-model and the whole schedule by mean(negative ELBO) alone.

    The control for :func:`variance_trained_loss`: the gradient it gives the schedule's interior
    is zero in expectation (``eq-vlb-invariance``), pure noise.
    """
    check_choice(sampler, time_sampling.SAMPLERS, name="time sampler")

    def loss_fn(bundle: DenoiserWithSchedule, batch: tuple[Tensor, ...], gen: torch.Generator):
        (x0,) = batch
        t, eps = _draw(x0, sampler, gen)
        return continuous_time.negative_elbo(
            x0, FromEps(bundle.eps_model), bundle.schedule, t, eps, create_graph=True
        ).mean()

    return loss_fn


def _moments_over_t(
    x0: Tensor, denoiser: Denoiser, schedule, eps: Tensor, n_nodes: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """E_t L and E_t L² per pair ``(B,)`` by Gauss–Legendre quadrature on [0, 1], the weights
    ``(n_nodes,)``, and E_{x,ε} L at each node ``(n_nodes,)``, estimated over the B pairs."""
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)  # on [−1, 1]
    nodes = torch.as_tensor((nodes + 1) / 2, dtype=torch.float64)
    weights = torch.as_tensor(weights / 2, dtype=torch.float64)
    first = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    second = torch.zeros_like(first)
    node_means = []
    with torch.no_grad():
        for t_k, w_k in zip(nodes.tolist(), weights.tolist(), strict=True):
            t = torch.full((x0.shape[0],), t_k, dtype=torch.float64, device=x0.device)
            loss = continuous_time.continuous_diffusion_loss(
                x0, denoiser, schedule, t, eps
            ).double()
            first += w_k * loss
            second += w_k * loss**2
            node_means.append(loss.mean().item())
    return first, second, weights, torch.tensor(node_means, dtype=torch.float64)


def time_variance_decomposition(
    x0: Tensor,
    denoiser: Denoiser,
    schedule: LogSNRSchedule,
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
    first, second, weights, g = _moments_over_t(x0, denoiser, schedule, eps, n_nodes)
    var_t = (second - first**2).clamp(min=0.0)  # Var_t L per pair (clamped against rounding)
    n = x0.shape[0]
    centred = first - first.mean()
    from_x_eps = centred.pow(2).sum().item() / (n - 1)
    fourth = centred.pow(4).mean().item()
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
