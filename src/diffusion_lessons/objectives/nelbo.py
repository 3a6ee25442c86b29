"""The negative ELBO of a diffusion model, term by term, each written once in log-SNR form.

Chapters 4–6 and 10: −log p(x_0) ≤ prior + reconstruction + diffusion (``eq-diffusion-elbo``,
``eq-vlb-total``). The terms that discrete and continuous time share live here. Every term is per
example, ``(B,)``, in nats.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lessons.checks import append_dims, as_coefficient, promote_coefficient


def prior_kl(x0: Tensor, log_snr_1: Tensor | float) -> Tensor:
    """KL(q(z_1 | x) ‖ N(0, I)) with q(z_1 | x) = N(√ᾱ_1 x, σ_1² I): ``(B,)`` (a term of ``eq-vlb-total``).

    Per dimension ½ (ᾱ_1 x² + σ_1² − 1 − log σ_1²) = ½ ᾱ_1 x² + ½ (−log σ_1² − ᾱ_1). The
    coefficients come from λ_1 in the promoted dtype of λ_1 and x0 (float64 for a Python float),
    then are cast to x0's dtype once, so σ² − 1 − log σ² does not cancel in float32.
    """
    lam = append_dims(as_coefficient(log_snr_1), x0, name="log_snr_1", x_name="x0")
    lam = promote_coefficient(lam, x0)
    ab = torch.sigmoid(lam)
    per_dim_const = 0.5 * (-torch.nn.functional.logsigmoid(-lam) - ab)  # ½ (σ² − 1 − log σ²)
    sq = (x0**2).reshape(x0.shape[0], -1).sum(1)
    d = x0[0].numel()
    return 0.5 * ab.to(x0).reshape(-1) * sq + (d * per_dim_const).to(x0).reshape(-1)
