"""The three equivalent things a denoiser can predict: x_0, ε, or the score ∇ log q(x_t).

All conversions use x_t = √ᾱ x_0 + σ ε with σ = √(1 − ᾱ) (``eq-forward-marginal``) and, for the
score of q(x_t | x_0), ∇ log q = −ε / σ. Shapes: ``xt, pred: (B, ...)``, ``alpha_bar``: scalar or
``(B,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lessons.checks import append_dims, as_coefficient, check_choice, promote_coefficient

PARAMETERIZATIONS = ("x0", "eps", "score")


def _coefs(alpha_bar: Tensor | float, xt: Tensor, name: str = "alpha_bar") -> tuple[Tensor, Tensor]:
    # Square roots in the wider of the coefficient's and the data's dtype, cast once at the end:
    # float64 data never gets float32-rounded coefficients (a Python float stays a double).
    ab = append_dims(as_coefficient(alpha_bar), xt, name=name, x_name="xt")
    ab = promote_coefficient(ab, xt)
    return ab.sqrt().to(xt), (1.0 - ab).sqrt().to(xt)


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


def implied_x0_weight(parameterization: str, alpha_bar: Tensor | float) -> Tensor:
    """w(ᾱ) with ‖pred − target‖² = w(ᾱ) ‖x̂_0 − x_0‖² in the given parameterization (``eq-implied-weights``).

    From x_t = √ᾱ x_0 + σ ε: an error δ in x_0 is an error −(√ᾱ/σ) δ in ε and (√ᾱ/σ²) δ in the
    score, so w = 1 for ``"x0"``, SNR = ᾱ/σ² for ``"eps"`` and ᾱ/σ⁴ for ``"score"``.
    ``alpha_bar`` in (0, 1); returns a tensor of its shape.
    """
    check_choice(parameterization, PARAMETERIZATIONS, name="parameterization")
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    if ab.numel() and ((ab <= 0).any() or (ab >= 1).any()):
        raise ValueError(
            f"alpha_bar must lie in (0, 1), got values from {ab.min():.6g} to {ab.max():.6g}"
        )
    var = 1.0 - ab
    return {"x0": torch.ones_like(ab), "eps": ab / var, "score": ab / var**2}[parameterization]
