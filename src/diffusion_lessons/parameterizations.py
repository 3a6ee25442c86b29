"""The three equivalent things a denoiser can predict: x_0, ε, or the score ∇ log q(x_t).

All conversions use x_t = √ᾱ x_0 + σ ε with σ = √(1 − ᾱ) (``eq-forward-marginal``) and, for the
score of q(x_t | x_0), ∇ log q = −ε / σ. Shapes: ``xt, pred: (B, ...)``, ``alpha_bar``: scalar or
``(B,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import append_dims, check_choice

PARAMETERIZATIONS = ("x0", "eps", "score")


def _coefs(alpha_bar: Tensor | float, xt: Tensor) -> tuple[Tensor, Tensor]:
    ab = append_dims(torch.as_tensor(alpha_bar), xt, name="alpha_bar", x_name="xt").to(xt)
    return ab.sqrt(), (1.0 - ab).sqrt()


def eps_to_x0(xt: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """x_0 = (x_t − σ ε) / √ᾱ."""
    a, s = _coefs(alpha_bar, xt)
    return (xt - s * eps) / a


def x0_to_eps(xt: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """ε = (x_t − √ᾱ x_0) / σ."""
    a, s = _coefs(alpha_bar, xt)
    return (xt - a * x0) / s


def eps_to_score(xt: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """score = −ε / σ."""
    _, s = _coefs(alpha_bar, xt)
    return -eps / s


def score_to_eps(xt: Tensor, score: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """ε = −σ · score."""
    _, s = _coefs(alpha_bar, xt)
    return -s * score


def convert(
    pred: Tensor, *, source: str, target: str, xt: Tensor, alpha_bar: Tensor | float
) -> Tensor:
    """Convert a prediction between ``"x0"``, ``"eps"`` and ``"score"`` (through ε)."""
    check_choice(source, PARAMETERIZATIONS, name="source parameterization")
    check_choice(target, PARAMETERIZATIONS, name="target parameterization")
    if pred.shape != xt.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but xt has shape {tuple(xt.shape)}")
    if source == target:
        return pred
    eps = {
        "eps": lambda: pred,
        "x0": lambda: x0_to_eps(xt, pred, alpha_bar),
        "score": lambda: score_to_eps(xt, pred, alpha_bar),
    }[source]()
    return {
        "eps": lambda: eps,
        "x0": lambda: eps_to_x0(xt, eps, alpha_bar),
        "score": lambda: eps_to_score(xt, eps, alpha_bar),
    }[target]()
