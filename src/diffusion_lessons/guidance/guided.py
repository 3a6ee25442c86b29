"""Conditional denoisers and the two guidances, built on the one denoiser interface (chapter 9).

A conditional network takes a label besides x_t and its noise input, ``net(x_t, c, y)``; the
label C (for C classes) is the *null label*, "no class", so that one network is both the
conditional model and the unconditional one (Ho & Salimans 2022). :class:`Labelled` fixes the
labels, which turns it back into a two-argument network that the wrappers of
:mod:`~diffusion_lessons.denoisers.denoiser` take: ``FromEps(Labelled(net, y), cond)`` is a plain
denoiser ``D(x_t, λ) → x̂_0`` of class y.

Both guidances return plain denoisers too, so every sampler of chapter 8 takes them unchanged:

- :func:`classifier_free`: ε̃ = (1 + w) ε̂(x_t, y) − w ε̂(x_t) (Ho & Salimans 2022);
- :func:`classifier_guided`: score ŝ(x_t) + s ∇ log p(y | x_t) (Dhariwal & Nichol 2021), with the
  log-probability from a noise-aware classifier (:class:`NoiseAwareClassifier`, trained by
  :func:`classifier_loss`) or from the exact oracle
  (:func:`~diffusion_lessons.guidance.labelled.exact_classifier`).

Training the classifier-free model is the ε loss of chapter 5 with labels dropped to the null
label at rate p (:func:`drop_labels`): the loss never changes, only the labels do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lessons.checks import check_labels
from diffusion_lessons.denoisers.denoiser import Cond, Denoiser, alpha_sigma
from diffusion_lessons.nets.embedding import embed_noise

LogProbY = Callable[[Tensor, Tensor], Tensor]
"""``log p(y | x_t)``: ``(x_t (B, ...), log_snr (B,)) → (B,)``, for labels fixed beforehand."""


def null_label(num_classes: int) -> int:
    """The null label of a C-class model: C, the label that stands for "no class"."""
    return int(num_classes)


def _check_weight(value: float, name: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def drop_labels(
    y: Tensor, p: float, num_classes: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Label dropout: each label replaced by the null label C independently with probability p.

    ``y: (B,)`` labels 0..C−1 → ``(B,)``. Training on these makes one network both p(x | y) and,
    under the null label, p(x) (Ho & Salimans 2022 use p = 0.1–0.2). ``p`` in [0, 1].
    """
    y = check_labels(y, num_classes, allow_null=False)
    p = _check_weight(p, "p")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    device = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape, generator=generator, device=device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null_label(num_classes)), y)


class ConditionalMLP(nn.Module):
    """f_θ(x_t, c, y) for flat data ``x: (B, D)``, a noise input ``c: (B,)`` and labels
    ``y: (B,)`` in 0..C (C the null label); returns ``(B, D)``.

    The MLP of :class:`~diffusion_lessons.nets.mlp.MLPDenoiser` with a learned embedding of the
    label added to the noise embedding of every hidden layer (as the class embedding of the
    guided U-Nets, Dhariwal & Nichol 2021). ``noise_scale`` as in
    :mod:`~diffusion_lessons.nets.embedding` (4 for c = λ).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        noise_scale: float = 4.0,
    ):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.emb_dim, self.noise_scale = emb_dim, noise_scale
        self.t_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label_emb = nn.Embedding(num_classes + 1, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c: Tensor, y: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if c.shape != (x.shape[0],) or torch.as_tensor(y).shape != (x.shape[0],):
            raise ValueError(
                f"c and y must have shape (B,) = ({x.shape[0]},), got {tuple(c.shape)} and "
                f"{tuple(torch.as_tensor(y).shape)}"
            )
        y = check_labels(y, self.num_classes, allow_null=True).to(x.device)
        emb = embed_noise(self.t_mlp, c * self.noise_scale, self.emb_dim, x.dtype)
        emb = emb + self.label_emb(y)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


class Labelled(nn.Module):
    """A conditional network with its labels fixed: ``forward(x, c) = net(x, c, y)``.

    ``y``: one label (every row) or ``(B,)`` labels, 0..C with C = ``net.num_classes`` the null
    label. ``FromEps(Labelled(net, y), cond)`` is then the denoiser of class y, and
    ``Labelled(net, null_label(C))`` the unconditional one; the parameters are the network's.
    """

    def __init__(self, net: nn.Module, y: Tensor | int):
        super().__init__()
        self.net = net
        self.register_buffer("y", check_labels(y, net.num_classes, allow_null=True), False)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        y = self.y.expand(x.shape[0]) if self.y.ndim == 0 else self.y
        if y.shape != (x.shape[0],):
            raise ValueError(
                f"the fixed labels y have shape {tuple(y.shape)} but x has {x.shape[0]} rows"
            )
        return self.net(x, c, y.to(x.device))


def classifier_free(cond_denoiser: Denoiser, uncond_denoiser: Denoiser, w: float) -> Denoiser:
    """Classifier-free guidance with weight w (Ho & Salimans 2022), as a plain denoiser.

    ε̃ = (1 + w) ε̂(x_t, y) − w ε̂(x_t). Since ε̂ = (x_t − √ᾱ x̂_0)/σ and the score
    (√ᾱ x̂_0 − x_t)/σ² are affine in x̂_0 with weights (1 + w) − w = 1, the same guidance is
    x̃_0 = (1 + w) x̂_0(x_t, y) − w x̂_0(x_t) and s̃ = (1 + w) ŝ(x_t, y) − w ŝ(x_t)
    (``eq-score-eps``): the score of p(x_t | y)^{1+w} p(x_t)^{−w} at each noise level. w = 0 is
    the conditional denoiser, exactly; ``w`` any finite number (w > 0 guides).
    """
    w = _check_weight(w, "w")

    def x0_hat(xt: Tensor, log_snr: Tensor) -> Tensor:
        cond, uncond = cond_denoiser(xt, log_snr), uncond_denoiser(xt, log_snr)
        if cond.shape != xt.shape or uncond.shape != xt.shape:
            raise ValueError(
                f"cond_denoiser and uncond_denoiser must return x_t's shape {tuple(xt.shape)}, "
                f"got {tuple(cond.shape)} and {tuple(uncond.shape)}"
            )
        return (1 + w) * cond - w * uncond

    return x0_hat


def classifier_guided(denoiser: Denoiser, log_prob_y_given_xt: LogProbY, s: float) -> Denoiser:
    """Classifier guidance with scale s (Dhariwal & Nichol 2021), as a plain denoiser.

    Its score is the model's plus s ∇_{x_t} log p(y | x_t); by Tweedie (``eq-tweedie``) that is
    x̃_0 = x̂_0 + s (σ² / √ᾱ) ∇ log p(y | x_t), and in ε units ε̃ = ε̂ − s σ ∇ log p(y | x_t)
    (their Algorithm 2). With s = 1 and the exact p(y | x_t) it is the exact conditional score
    ∇ log p(x_t | y) = ∇ log p(x_t) + ∇ log p(y | x_t) (Bayes). The gradient is taken by
    autograd (also under ``torch.no_grad``). ``log_prob_y_given_xt(x_t, λ) → (B,)``, e.g.
    :func:`classifier_log_prob`; ``s`` a finite number.
    """
    s = _check_weight(s, "s")

    def x0_hat(xt: Tensor, log_snr: Tensor) -> Tensor:
        with torch.enable_grad():
            x = xt.detach().requires_grad_(True)
            log_p = log_prob_y_given_xt(x, log_snr)
            if log_p.shape != (xt.shape[0],):
                raise ValueError(
                    f"log_prob_y_given_xt must return shape (B,) = ({xt.shape[0]},), got "
                    f"{tuple(log_p.shape)}"
                )
            (grad,) = torch.autograd.grad(log_p.sum(), x)
        a, sigma = alpha_sigma(log_snr, xt)
        return denoiser(xt, log_snr) + s * sigma**2 / a * grad.to(xt.dtype)

    return x0_hat


class NoiseAwareClassifier(nn.Module):
    """A classifier of noisy data: ``(x_t (B, ...), c (B,)) → logits (B, C)``.

    x_t is flattened to ``(B, dim)``; the noise input c (λ, or a time, with its ``noise_scale``)
    is embedded as in :class:`~diffusion_lessons.nets.mlp.MLPDenoiser` and added to every hidden
    layer (Dhariwal & Nichol 2021 train such a classifier on x_t at random noise levels).
    :meth:`features` is its penultimate layer, the feature map of
    :mod:`~diffusion_lessons.guidance.metrics`.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        hidden: int = 128,
        depth: int = 2,
        emb_dim: int = 64,
        noise_scale: float = 4.0,
    ):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.emb_dim, self.noise_scale = emb_dim, noise_scale
        self.t_mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(hidden, num_classes))

    def features(self, x: Tensor, c: Tensor) -> Tensor:
        """The penultimate layer: ``(B, hidden)``."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.dim or c.shape != (x.shape[0],):
            raise ValueError(
                f"need x with {self.dim} values per row and c: (B,) = ({x.shape[0]},), got "
                f"{x.shape[1]} values and c of shape {tuple(c.shape)}"
            )
        emb = embed_noise(self.t_mlp, c * self.noise_scale, self.emb_dim, x.dtype)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return h

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.head(self.features(x, c))


def _noise_input(cond: Cond | None, log_snr: Tensor) -> Tensor:
    return log_snr if cond is None else cond(log_snr)


def _logits(classifier, xt: Tensor, log_snr: Tensor, cond: Cond | None) -> Tensor:
    """The classifier's logits, run in its parameters' dtype (as the denoiser wrappers do)."""
    p = next(classifier.parameters(), None) if isinstance(classifier, nn.Module) else None
    dtype = xt.dtype if p is None else p.dtype
    c = torch.as_tensor(_noise_input(cond, log_snr)).to(dtype=dtype, device=xt.device)
    return classifier(xt.to(dtype), c)


def classifier_log_prob(
    classifier, y: Tensor | int, num_classes: int, *, cond: Cond | None = None
) -> LogProbY:
    """log p(y | x_t) of a noise-aware classifier for fixed labels, ``(x_t, λ) → (B,)``.

    ``classifier(x_t, c) → logits (B, C)`` with c = ``cond(λ)`` (λ itself by default): a
    :class:`NoiseAwareClassifier` or :func:`~diffusion_lessons.guidance.labelled.exact_classifier`.
    ``y``: one label or ``(B,)`` labels in 0..C−1 (the null label has no class probability);
    a classifier whose logits do not have ``num_classes`` columns is an error.
    """
    y = check_labels(y, num_classes, allow_null=False)

    def log_prob(xt: Tensor, log_snr: Tensor) -> Tensor:
        logits = _logits(classifier, xt, log_snr, cond)
        if logits.ndim != 2 or logits.shape != (xt.shape[0], num_classes):
            raise ValueError(
                f"classifier must return logits (B, num_classes) = ({xt.shape[0]}, "
                f"{num_classes}), got {tuple(logits.shape)}"
            )
        labels = y.expand(xt.shape[0]) if y.ndim == 0 else y
        if labels.shape != (xt.shape[0],):
            raise ValueError(f"y has shape {tuple(labels.shape)} but x_t has {xt.shape[0]} rows")
        log_p = torch.log_softmax(logits, dim=1)
        return log_p.gather(1, labels.to(logits.device)[:, None])[:, 0]

    return log_prob


def classifier_loss(
    classifier: nn.Module,
    x0: Tensor,
    y: Tensor,
    log_snr: Tensor,
    eps: Tensor,
    *,
    cond: Cond | None = None,
) -> Tensor:
    """The noise-aware classifier's loss: cross-entropy of y given x_t = √ᾱ x_0 + σ ε
    (``eq-forward-marginal``) at the levels ``log_snr: (B,)``, averaged over the batch.

    ``x0, eps: (B, ...)``, ``y: (B,)`` in 0..C−1 with C = ``classifier.num_classes``. Drawing λ
    afresh each step (e.g. from a schedule at t ∼ U(0, 1)) trains p(y | x_t) at every noise
    level, the p(y | x_t) that classifier guidance needs (Dhariwal & Nichol 2021).
    """
    if eps.shape != x0.shape:
        raise ValueError(f"eps has shape {tuple(eps.shape)} but x0 has shape {tuple(x0.shape)}")
    y = check_labels(y, classifier.num_classes, allow_null=False)
    if y.shape != (x0.shape[0],) or torch.as_tensor(log_snr).shape != (x0.shape[0],):
        raise ValueError(
            f"y and log_snr must have shape (B,) = ({x0.shape[0]},), got {tuple(y.shape)} and "
            f"{tuple(torch.as_tensor(log_snr).shape)}"
        )
    a, sigma = alpha_sigma(log_snr, x0)
    logits = _logits(classifier, a * x0 + sigma * eps, log_snr, cond)
    return F.cross_entropy(logits, y.to(logits.device))
