"""Score matching: fitting a score s_θ(x) ≈ ∇_x log p(x) without knowing p (chapter 8).

Three objectives, each per example (shape ``(B,)``, summed over the data dimensions):

- :func:`explicit_score_matching`  ½ ‖s_θ(x) − ∇ log p(x)‖², which needs the true score
  (Vincent 2011 calls it J_ESM; its mean is the Fisher divergence).
- :func:`implicit_score_matching`  tr ∇_x s_θ(x) + ½ ‖s_θ(x)‖², Hyvärinen's (2005) objective,
  equal to J_ESM minus a constant that does not depend on θ, by integration by parts.
- :func:`denoising_score_matching`  ½ ‖s_θ(x_t, λ) + ε / σ‖² at x_t = √ᾱ x_0 + σ ε
  (Vincent 2011), whose target −ε/σ = ∇ log q(x_t | x_0) is known; J_DSM = J_ESM + a constant
  (:func:`~diffusion_lessons.symbolic.score_matching.dsm_minus_esm`), and its minimizer is
  E[−ε/σ | x_t] = ∇ log q(x_t), the score of the noised data: Tweedie's posterior mean
  (``eq-tweedie``).

The trace in the implicit objective is a divergence, from :mod:`~diffusion_lessons.divergence`
(exactly, or by Hutchinson's estimator), the module the probability-flow likelihood of
:mod:`~diffusion_lessons.sampling.ode` uses too.

Denoising score matching takes the book's one denoiser interface ``D(x_t, log_snr) -> x̂_0``
(:mod:`~diffusion_lessons.denoisers.denoiser`); a network that outputs a score enters it through
:class:`~diffusion_lessons.denoisers.denoiser.FromScore`.
"""

from __future__ import annotations

from torch import Tensor

from diffusion_lessons.checks import as_coefficient, check_same_shape, sum_except_batch
from diffusion_lessons.denoisers.denoiser import Denoiser, alpha_sigma, score_from
from diffusion_lessons.divergence import VectorField, exact_divergence

# ---------------------------------------------------------------------------------------------
# The three objectives


def explicit_score_matching(score: VectorField, true_score: VectorField, x: Tensor) -> Tensor:
    """J_ESM per example: ½ ‖s_θ(x) − ∇ log p(x)‖² for ``x: (B, ...)`` drawn from p: ``(B,)``.

    Its mean over x ~ p is the Fisher divergence between p and the model; it needs the true
    score ``true_score``, which is why nobody can train with it (Vincent 2011).
    """
    s, s_true = score(x), true_score(x)
    check_same_shape(s, x, "score(x)", "x")
    check_same_shape(s_true, x, "true_score(x)", "x")
    return 0.5 * sum_except_batch((s - s_true) ** 2)


def implicit_score_matching(score: VectorField, x: Tensor, *, create_graph: bool = False) -> Tensor:
    """Hyvärinen's objective per example: tr ∇_x s_θ(x) + ½ ‖s_θ(x)‖² for ``x: (B, ...)``: ``(B,)``.

    Integration by parts turns J_ESM into this minus ½ E‖∇ log p‖², a constant (Hyvärinen
    2005, theorem 1), so it needs samples only; the trace is :func:`~diffusion_lessons.divergence.exact_divergence`, D
    backward passes, which is what makes it impractical in high dimension.
    """
    s = score(x)
    check_same_shape(s, x, "score(x)", "x")
    trace = exact_divergence(score, x, create_graph=create_graph)
    return trace + 0.5 * sum_except_batch(s**2)


def denoising_score_matching(
    denoiser: Denoiser, x0: Tensor, log_snr: Tensor, eps: Tensor
) -> Tensor:
    """J_DSM per example: ½ ‖ŝ(x_t, λ) + ε/σ‖² with x_t = √ᾱ x_0 + σ ε: ``(B,)``.

    ``x0, eps: (B, ...)``, ``log_snr: (B,)`` (or a scalar); ŝ = ``score_from(denoiser, x_t, λ)``
    is the denoiser's score (``eq-tweedie``), and −ε/σ = ∇_{x_t} log q(x_t | x_0) the target
    (Vincent 2011). Its minimizer over ŝ is E[−ε/σ | x_t] = ∇ log q(x_t), Tweedie's
    posterior mean read as a score. In terms of x̂_0 this is ½ (ᾱ/σ⁴) ‖x̂_0 − x_0‖², the
    x_0-error weighted by SNR/σ².
    """
    check_same_shape(eps, x0, "eps", "x0")
    lam = as_coefficient(log_snr).to(x0.device)
    if lam.ndim == 0:
        lam = lam.expand(x0.shape[0])
    a, s = alpha_sigma(lam, x0)
    xt = a * x0 + s * eps
    return 0.5 * sum_except_batch((score_from(denoiser, xt, lam) + eps / s) ** 2)
