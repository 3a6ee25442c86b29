"""Bits-back coding (BB-ANS) of 8-bit images through a diffusion chain (chapter 11).

The negative ELBO of chapter 4 is read as a file format. To encode x_0, in this order
(Townsend et al. 2019), on one ANS stack:

1. pop x_T from q(x_T | x_0), then x_{T-1}, …, x_1 from q(x_{t-1} | x_t, x_0) (bits back),
2. push x_0 under the discretized decoder p_θ(x_0 | x_1),
3. push x_1, …, x_{T-1} under p_θ(x_{t-1} | x_t),
4. push x_T under the prior N(0, I).

The decoder runs the same steps backwards. Latents live on :class:`~.grids.LatentGrid` lattices:
a draw from q is coded around q's own mean within ``window`` standard deviations (so that the
coder's probability floor rarely lands a draw in the far tails), a push under p_θ around the
reference c_t x_t in the wide window that any x̂_0 in [−1, 1] needs;
p_θ(x_{t-1} | x_t) is the posterior with x̂_0 plugged in and the same variance (``eq-reverse-step``),
so step t costs KL(q ‖ p_θ) = ``denoising_kl`` bits on average and the ledger sets them side by side.

The coder's model is the denoiser as :func:`coded_denoiser` evaluates it (x̂_0 clipped to [−1, 1]);
:func:`coder_terms` is the negative ELBO of that model on the code's grid, the bound its files are
measured against (:func:`~diffusion_lessons.likelihood.evaluate_bits_per_dim`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import constriction
import numpy as np
import torch

from diffusion_lessons.coding.grids import LatentGrid, Lattice
from diffusion_lessons.gaussians import discretized_gaussian_log_prob
from diffusion_lessons.likelihood import TermsFn
from diffusion_lessons.objectives import nelbo
from diffusion_lessons.objectives.discrete_time import log_snr_grid, nelbo_terms_exact_sum
from diffusion_lessons.process.posterior import posterior_coefs

X0_GRID = 2.0**-20
"""The denoiser's x̂_0 is rounded to multiples of this before any probability is formed."""

LN2 = math.log(2.0)


@contextlib.contextmanager
def deterministic():
    """Run the model with ``torch.use_deterministic_algorithms(True)`` and without gradients."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.use_deterministic_algorithms(before)


@dataclasses.dataclass(frozen=True)
class ChainCode:
    """A diffusion chain as a code: its grid ᾱ_0 = 1 > ᾱ_1 > … > ᾱ_T, latent grid and data levels.

    Parameters
    ----------
    alpha_bar : sequence of float
        The time grid ``(T + 1,)``, ᾱ_0 = 1, T ≥ 2.
    grid : LatentGrid
        Precision and window of the latents.
    bins : int
        Data levels (256 for 8-bit images).
    """

    alpha_bar: tuple[float, ...]
    grid: LatentGrid = LatentGrid()
    bins: int = 256

    def __post_init__(self) -> None:
        ab = torch.as_tensor(self.alpha_bar, dtype=torch.float64)
        object.__setattr__(self, "alpha_bar", tuple(float(a) for a in ab))
        log_snr_grid(ab)  # validates the grid
        if len(ab) < 3:
            raise ValueError(f"alpha_bar must have T + 1 >= 3 entries, got {len(ab)}")
        if (
            isinstance(self.bins, bool)
            or not isinstance(self.bins, int)
            or not 2 <= self.bins <= 256
        ):
            raise ValueError(f"bins must be an integer in [2, 256], got {self.bins!r}")
        # q's coefficients of every step, computed once (each coded step reads them)
        coefs = {}
        for t in range(2, len(ab)):
            c0, ct, var = posterior_coefs(ab[t], ab[t - 1])
            coefs[t] = (c0.item(), ct.item(), math.sqrt(var.item()))
        object.__setattr__(self, "_coefs", coefs)

    @property
    def T(self) -> int:
        return len(self.alpha_bar) - 1

    @property
    def log_snr(self) -> torch.Tensor:
        return log_snr_grid(torch.tensor(self.alpha_bar, dtype=torch.float64))

    @property
    def decoder_log_scale(self) -> float:
        """log σ_1 = ½ log sigmoid(−λ_1): the width of the discretized decoder p_θ(x_0 | x_1)."""
        return 0.5 * torch.nn.functional.logsigmoid(-self.log_snr[1]).item()

    def coefs(self, t: int) -> tuple[float, float, float]:
        """(c_0, c_t, σ̃_t) of q(x_{t-1} | x_t, x_0), t = 2..T."""
        if t not in self._coefs:
            raise ValueError(f"t must be a step in 2..{self.T}, got {t!r}")
        return self._coefs[t]

    def lattice(self, i: int) -> Lattice:
        """The lattice of the coded latent x_i: std σ̃_{i+1} and reach c_0 for i < T; for i = T
        std √(1 − ᾱ_T) and reach √ᾱ_T (reference 0)."""
        if i == self.T:
            return self.grid.lattice(
                math.sqrt(1 - self.alpha_bar[-1]), math.sqrt(self.alpha_bar[-1])
            )
        c0, _, std = self.coefs(i + 1)
        return self.grid.lattice(std, c0)

    def std(self, i: int) -> float:
        """Standard deviation of q's x_i: σ̃_{i+1} for i < T, √(1 − ᾱ_T) for i = T."""
        return math.sqrt(1 - self.alpha_bar[-1]) if i == self.T else self.coefs(i + 1)[2]

    def leak_bound(self) -> float:
        """The largest leak bound over the T latents' draws from q (their narrow windows,
        :meth:`~.grids.Lattice.around_mean`): the chance that one draw lands in the far tails."""
        return max(
            self.lattice(i).around_mean(self.std(i), self.grid.window).leak_bound()
            for i in range(1, self.T + 1)
        )


class _Coder:
    """An ANS stack with a per-operation ledger of valid bits pushed (+) or popped (−)."""

    def __init__(self, words: np.ndarray, code: ChainCode, *, seal: bool):
        self.ans = constriction.stream.stack.AnsCoder(np.asarray(words, np.uint32), seal=seal)
        self.code = code
        self.models: dict[int, object] = {}
        self.categorical = constriction.stream.model.Categorical(perfect=False)

    def _bits(self) -> int:
        return self.ans.num_valid_bits()

    def _model(self, lat: Lattice):
        W = lat.half_width
        if W not in self.models:
            self.models[W] = constriction.stream.model.QuantizedGaussian(-W, W)
        return self.models[W]

    def pop_gauss(self, lat: Lattice, mean, std: float, *, ref=None) -> tuple[np.ndarray, int]:
        """Pop n ~ N(mean, std²) on ``lat`` around ``ref`` (default: the mean); returns
        (lattice points, bits)."""
        anchor = lat.anchor(mean if ref is None else ref).ravel()
        frac = lat.units(mean).ravel() - anchor
        before = self._bits()
        off = self.ans.decode(self._model(lat), frac, np.full(frac.shape, std / lat.step))
        return (anchor + off).reshape(np.shape(mean)), self._bits() - before

    def push_gauss(self, lat: Lattice, n: np.ndarray, mean, std: float, *, ref=None) -> int:
        """Push lattice points ``n`` under N(mean, std²) around ``ref`` (default: the mean);
        returns bits added."""
        anchor = lat.anchor(mean if ref is None else ref).ravel()
        off = n.ravel() - anchor
        if np.abs(off).max(initial=0) > lat.half_width:
            raise ValueError(
                "a latent lies outside its coded window (it was not made by this code)"
            )
        frac = lat.units(mean).ravel() - anchor
        before = self._bits()
        self.ans.encode_reverse(
            off.astype(np.int32), self._model(lat), frac, np.full(frac.shape, std / lat.step)
        )
        return self._bits() - before

    def push_pixels(self, k: np.ndarray, probs: np.ndarray) -> int:
        before = self._bits()
        self.ans.encode_reverse(k.ravel().astype(np.int32), self.categorical, probs)
        return self._bits() - before

    def pop_pixels(self, probs: np.ndarray) -> tuple[np.ndarray, int]:
        before = self._bits()
        k = self.ans.decode(self.categorical, probs)
        return k, self._bits() - before


def pixel_probabilities(x0_hat: torch.Tensor, log_scale: float, bins: int) -> np.ndarray:
    """Per-pixel probabilities ``(n_pixels, bins)`` of the discretized decoder N(x̂_0, e^{2 log_scale})
    (:func:`~diffusion_lessons.gaussians.discretized_gaussian_log_prob`), float64."""
    mean = x0_hat.reshape(-1, 1).double()
    levels = torch.linspace(-1.0, 1.0, bins, dtype=torch.float64)
    n = mean.shape[0]
    x = levels.expand(n, bins).reshape(-1, 1)
    m = mean.expand(n, bins).reshape(-1, 1)
    lp = discretized_gaussian_log_prob(x, m, torch.full_like(m, log_scale), bins=bins)
    return lp.reshape(n, bins).exp().numpy()


def coded_denoiser(denoiser):
    """The denoiser as the coder evaluates it: ``D(x_t, log_snr)`` in float64, x̂_0 clipped to
    the data range [−1, 1] (a prediction outside it can only be wrong), rounded to :data:`X0_GRID`.
    """

    def coded(x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        out = denoiser(x, log_snr).double()
        return torch.round(out.clamp(-1.0, 1.0) / X0_GRID) * X0_GRID

    return coded


def coder_terms(denoiser, code: ChainCode) -> TermsFn:
    """The negative ELBO of the model that :func:`encode` codes with, the bound of its net rate.

    The model is :func:`coded_denoiser` (x̂_0 clipped to [−1, 1]) on the code's levels
    ``code.log_snr``, with the coder's discretized decoder (``code.bins`` levels, log-scale
    ``code.decoder_log_scale``); every step of the chain is evaluated
    (:func:`~diffusion_lessons.objectives.discrete_time.nelbo_terms_exact_sum`). Its latents are
    continuous, where the coder's lie on lattices (:class:`~.grids.LatentGrid`).

    Parameters
    ----------
    denoiser : callable
        ``D(x_t, log_snr) -> x̂_0``, as passed to :func:`encode`.
    code : ChainCode
        The chain: time grid and pixel levels.

    Returns
    -------
    terms_fn : callable
        ``terms_fn(x0, generator=None) -> {"prior", "reconstruction", "diffusion", "total"}``,
        each ``(B,)`` in nats, for ``x0: (B, ...)`` scaled to [−1, 1] (evaluated in float64); pass
        it to :func:`~diffusion_lessons.likelihood.evaluate_bits_per_dim`.
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable D(x_t, log_snr), got {type(denoiser).__name__}")
    if not isinstance(code, ChainCode):
        raise TypeError(f"code must be a ChainCode, got {type(code).__name__}")
    coded, lam, log_scale = coded_denoiser(denoiser), code.log_snr, code.decoder_log_scale
    decoder_nll = functools.partial(nelbo.discretized_reconstruction_nll, bins=code.bins)

    def terms_fn(x0: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        return nelbo_terms_exact_sum(
            coded,
            x0.double(),
            lam,
            decoder_nll=decoder_nll,
            decoder_log_scale=log_scale,
            generator=generator,
        )

    return terms_fn


class _Chain:
    """Shared pieces of encoding and decoding one batch x_0: (b, ...) through the chain."""

    def __init__(self, denoiser, code: ChainCode):
        self.denoiser, self.code = coded_denoiser(denoiser), code
        self.lam = code.log_snr
        self.lat = {i: code.lattice(i) for i in range(1, code.T + 1)}
        self.log_scale = code.decoder_log_scale

    def x0_hat(self, n: np.ndarray, t: int) -> torch.Tensor:
        """x̂_0(x_t, λ_t) of :func:`coded_denoiser` (clipped to [−1, 1], on :data:`X0_GRID`)."""
        x = torch.from_numpy(self.lat[t].value(n)).double()
        lam = torch.full((x.shape[0],), self.lam[t].item(), dtype=torch.float64)
        out = self.denoiser(x, lam)
        if out.shape != x.shape:
            raise ValueError(f"the denoiser returned {tuple(out.shape)}, expected {tuple(x.shape)}")
        return out

    def step(self, n_t: np.ndarray, x0, t: int):
        """(reference c_t x_t, mean c_0 x0 + c_t x_t, σ̃_t) of the Gaussian over x_{t-1}:
        p_θ's with x0 = x̂_0, coded in the wide window around the reference."""
        c0, ct, std = self.code.coefs(t)
        ref = ct * self.lat[t].value(n_t)
        return ref, c0 * np.asarray(x0) + ref, std

    def posterior(self, n_t: np.ndarray, x0: np.ndarray, t: int):
        """(lattice, mean, std) of q(x_{t-1} | x_t, x_0): coded around its own mean in the narrow
        window (:meth:`~.grids.Lattice.around_mean`)."""
        _, mean, std = self.step(n_t, x0, t)
        return self.narrow(t - 1, std), mean, std

    def top(self, x0: np.ndarray):
        """(lattice, mean, std) of q(x_T | x_0), coded like :meth:`posterior`."""
        T = self.code.T
        mean, std = math.sqrt(self.code.alpha_bar[-1]) * x0, self.code.std(T)
        return self.narrow(T, std), mean, std

    def narrow(self, i: int, std: float) -> Lattice:
        return self.lat[i].around_mean(std, self.code.grid.window)

    def decoder_probs(self, x0_hat: torch.Tensor) -> np.ndarray:
        return pixel_probabilities(x0_hat, self.log_scale, self.code.bins)


def _to_x0(k: np.ndarray, bins: int) -> np.ndarray:
    return 2.0 * k.astype(np.float64) / (bins - 1) - 1.0


def _encode_batch(coder: _Coder, ch: _Chain, k: np.ndarray, ledger: list) -> None:
    code, T, lat = ch.code, ch.code.T, ch.lat
    x0 = _to_x0(k, code.bins)
    x0t = torch.from_numpy(x0)
    n, popped = {}, {}
    n[T], popped[T] = coder.pop_gauss(*ch.top(x0))
    for t in range(T, 1, -1):
        n[t - 1], popped[t - 1] = coder.pop_gauss(*ch.posterior(n[t], x0, t))
    x0_hat = ch.x0_hat(n[1], 1)
    pushed = coder.push_pixels(k, ch.decoder_probs(x0_hat))
    bound = nelbo.discretized_reconstruction_nll(x0t, x0_hat, ch.log_scale, code.bins).sum()
    ledger.append({"step": 1, "popped": 0, "pushed": pushed, "bound": bound.item() / LN2})
    for t in range(2, T + 1):
        x0_hat = ch.x0_hat(n[t], t)
        ref, mean, std = ch.step(n[t], x0_hat.numpy(), t)
        pushed = coder.push_gauss(lat[t - 1], n[t - 1], mean, std, ref=ref)
        kl = nelbo.denoising_kl(x0t, x0_hat, ch.lam[t - 1], ch.lam[t]).sum().item()
        ledger.append({"step": t, "popped": -popped[t - 1], "pushed": pushed, "bound": kl / LN2})
    zero = np.zeros_like(x0)
    pushed = coder.push_gauss(lat[T], n[T], zero, 1.0)
    kl = nelbo.prior_kl(x0t, ch.lam[T]).sum().item()
    ledger.append({"step": T + 1, "popped": -popped[T], "pushed": pushed, "bound": kl / LN2})


def _decode_batch(coder: _Coder, ch: _Chain, shape: tuple[int, ...]) -> np.ndarray:
    code, T, lat = ch.code, ch.code.T, ch.lat
    zero = np.zeros(shape)
    n = {}
    n[T], _ = coder.pop_gauss(lat[T], zero, 1.0)
    for t in range(T, 1, -1):
        ref, mean, std = ch.step(n[t], ch.x0_hat(n[t], t).numpy(), t)
        n[t - 1], _ = coder.pop_gauss(lat[t - 1], mean, std, ref=ref)
    k, _ = coder.pop_pixels(ch.decoder_probs(ch.x0_hat(n[1], 1)))
    k = np.asarray(k).reshape(shape).astype(np.int64)
    x0 = _to_x0(k, code.bins)
    for t in range(2, T + 1):
        narrow, mean, std = ch.posterior(n[t], x0, t)
        coder.push_gauss(narrow, n[t - 1], mean, std)
    narrow, mean, std = ch.top(x0)
    coder.push_gauss(narrow, n[T], mean, std)
    return k


def initial_words(count: int, seed: int) -> np.ndarray:
    """The "clean" initial bits: ``count`` pseudo-random 32-bit words from ``seed``."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return np.random.default_rng(seed).integers(0, 2**32, count, dtype=np.uint32)


def _batches(n: int, batch: int) -> list[slice]:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


def check_images(images, bins: int = 256) -> np.ndarray:
    """Validate images: a uint8 array ``(N, ...)`` with values < ``bins``; returns int64."""
    arr = np.asarray(images) if not isinstance(images, torch.Tensor) else images.numpy()
    if arr.dtype != np.uint8:
        raise TypeError(f"images must be 8-bit (dtype uint8), got dtype {arr.dtype}")
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise ValueError(f"images must have shape (N, ...) with N >= 1, got {arr.shape}")
    if arr.max() >= bins:
        raise ValueError(f"images must have values in [0, {bins - 1}], got up to {arr.max()}")
    return arr.astype(np.int64)


def encode(denoiser, images, code: ChainCode, *, batch: int = 16, init: np.ndarray):
    """Bits-back encode ``images`` (uint8 ``(N, ...)``) on top of the initial words ``init``.

    Parameters
    ----------
    denoiser : callable
        ``D(x_t, log_snr) -> x̂_0`` evaluated in float64 (e.g. a ``model.double()`` wrapper).
    images : array of uint8, shape (N, ...)
        The images, each pixel in 0..bins−1.
    code : ChainCode
        The chain: time grid, latent grid and pixel levels.
    batch : int
        Images coded jointly per model call; the decoder must use the same value.
    init : array of uint32
        The initial bits (:func:`initial_words`).

    Returns
    -------
    words : numpy.ndarray of uint32
        The compressed stack (sealed).
    ledger : list of dict
        One row per batch and step: ``batch``, ``step`` (1 = pixels, T + 1 = prior), bits
        ``popped`` and ``pushed``, and ``bound`` (that step's term of the negative ELBO, bits).
    """
    k = check_images(images, code.bins)
    coder, ch, ledger = _Coder(init, code, seal=True), _Chain(denoiser, code), []
    with deterministic():
        for j, sl in enumerate(_batches(len(k), batch)):
            rows = []
            _encode_batch(coder, ch, k[sl], rows)
            ledger += [{"batch": j, **r} for r in rows]
    return coder.ans.get_compressed(), ledger


def decode(denoiser, words: np.ndarray, code: ChainCode, shape, *, batch: int = 16):
    """Invert :func:`encode`: returns ``(images uint8 (N, ...), initial words recovered)``."""
    shape = tuple(int(s) for s in shape)
    coder, ch = _Coder(words, code, seal=False), _Chain(denoiser, code)
    parts = []
    with deterministic():
        for sl in reversed(_batches(shape[0], batch)):
            parts.append(_decode_batch(coder, ch, (sl.stop - sl.start, *shape[1:])))
    images = np.concatenate(parts[::-1]).astype(np.uint8)
    try:
        init = coder.ans.get_compressed(unseal=True)
    except (AssertionError, RuntimeError) as err:
        raise ValueError(f"decoding did not end in the sealed initial bits ({err})") from None
    return images, init


def net_bits(words: np.ndarray, init: np.ndarray) -> int:
    """Bits the images added to the stack: 32 · (len(words) − len(init))."""
    return 32 * (len(words) - len(init))
