"""The divergence ∇·f = tr ∂f/∂x of a vector field (chapter 8): exactly, or by Hutchinson's estimator.

Implicit score matching (Hyvärinen 2005) needs the divergence of a score model, and the
probability-flow ODE's log-likelihood (the instantaneous change of variables) integrates the
divergence of its velocity. :func:`exact_divergence` takes D backward passes (small D);
:func:`hutchinson_divergence` one per probe v, unbiased since E[vᵀ J v] = tr J for probes with
E[v vᵀ] = I (:func:`rademacher_probe`, :func:`gaussian_probe`; Hutchinson 1989).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_lessons.checks import check_same_shape, sum_except_batch

VectorField = Callable[[Tensor], Tensor]
"""``f(x (B, ...)) -> (B, ...)``: a score s(x), or a velocity at a fixed time."""


def exact_divergence(f: VectorField, x: Tensor, *, create_graph: bool = False) -> Tensor:
    """∇·f(x) = Σ_i ∂f_i/∂x_i for each example of ``x: (B, ...)``: ``(B,)``.

    One backward pass per data dimension D = x[0].numel() (the Jacobian's diagonal, read row by
    row), so use it for small D (2-D toy data); examples must not interact in ``f``.
    ``create_graph=True`` keeps the graph, so the result can be differentiated (training).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        fx = f(x)
        check_same_shape(fx, x, "f(x)", "x")
        flat = fx.reshape(fx.shape[0], -1)
        div = torch.zeros(x.shape[0], dtype=fx.dtype, device=x.device)
        for i in range(flat.shape[1]):
            (grad,) = torch.autograd.grad(
                flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True
            )
            div = div + grad.reshape(x.shape[0], -1)[:, i]
    return div


def hutchinson_divergence(
    f: VectorField, x: Tensor, probe: Tensor, *, create_graph: bool = False
) -> Tensor:
    """Hutchinson's estimate vᵀ (∂f/∂x) v of ∇·f(x) with one ``probe`` v per example: ``(B,)``.

    ``probe`` has the shape of ``x``; when E[v vᵀ] = I (:func:`rademacher_probe`,
    :func:`gaussian_probe`) the estimate is unbiased, E_v[vᵀ J v] = tr J (Hutchinson 1989).
    One vector–Jacobian product, whatever the dimension.
    """
    check_same_shape(probe, x, "probe", "x")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        fx = f(x)
        check_same_shape(fx, x, "f(x)", "x")
        (vjp,) = torch.autograd.grad((fx * probe).sum(), x, create_graph=create_graph)
    return sum_except_batch(vjp * probe)


def rademacher_probe(like: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """A probe of ±1 entries with equal probability, shaped like ``like``: E[v vᵀ] = I."""
    bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def gaussian_probe(like: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """A probe v ~ N(0, I) shaped like ``like``: E[v vᵀ] = I (more variance than Rademacher)."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
