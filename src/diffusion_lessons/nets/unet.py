"""The U-Net denoiser for images (Ronneberger et al. 2015, as adapted by Ho et al. 2020).

ε̂_θ(x_t, λ) for images ``x: (B, C, H, W)`` and the log-SNR ``λ: (B,)`` of x_t, so that
``denoiser.FromEps(unet)`` is a denoiser under any schedule (:mod:`~diffusion_lessons.denoisers.denoiser`;
DDPM conditioned on the step t instead). The architecture is
DDPM's (Ho et al. 2020, appendix B; the PixelCNN++ backbone): a stack of residual blocks with
GroupNorm at each resolution, halving the resolution between levels on the way down and doubling
it on the way up, with skip connections between the two paths, self-attention at the resolutions
listed in ``attn_resolutions``, and the sinusoidal embedding of λ × ``noise_scale``
(:func:`~diffusion_lessons.nets.embedding.time_embedding`) added inside every residual block.

:func:`ddpm_cifar10_config` gives the published 35.7M-parameter CIFAR-10 model and
:func:`mnist_config` the book's small MNIST model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_lessons.checks import check_labels, check_positive_int
from diffusion_lessons.nets.embedding import time_embedding


def _groups(channels: int, max_groups: int = 32) -> int:
    """Number of GroupNorm groups: the largest power of two ≤ ``max_groups`` dividing ``channels``
    that leaves at least 4 channels per group (DDPM's 32 groups for 128 channels and more).

    One channel per group would make every per-channel bias just before the norm useless (its
    gradient is exactly zero), and Adam would then turn rounding noise into steps.
    """
    groups = math.gcd(channels, max_groups)
    while groups > 1 and channels // groups < 4:
        groups //= 2
    return groups


class ResBlock(nn.Module):
    """h ↦ h + F(h, emb): GroupNorm, SiLU, 3×3 conv, + projected embedding, GroupNorm, SiLU,
    dropout, 3×3 conv (zero-initialised, so the block starts as the identity); a 1×1 conv matches
    the channels of the skip path when they change. ``x: (B, in_ch, H, W)``, ``emb: (B, emb_dim)``
    → ``(B, out_ch, H, W)``.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions: ``(B, C, H, W) → (B, C, H, W)``.

    h ↦ h + W_o softmax(QKᵀ/√C) V with Q, K, V 1×1 convolutions of GroupNorm(h) (Ho et al. 2020).
    """

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


@dataclass(frozen=True)
class UNetConfig:
    """The hyperparameters of a :class:`UNet` (all of them; saved in checkpoints).

    ``image_size``: side of the square input; ``ch``: channels at full resolution; level i has
    ``ch * ch_mult[i]`` channels and the resolution halves between levels; ``num_res_blocks``
    residual blocks per level (one more on the way up); self-attention wherever the side length
    is in ``attn_resolutions``. ``noise_scale`` multiplies the noise input λ before its embedding:
    50 makes the book's log-SNR range (about [−5, 13.3], 18 units) span as many periods of the
    embedding as DDPM's t × 1000 on t ∈ [0, 1] did. ``num_classes``: None for an unconditional
    model; C for a class-conditional one, whose learned embedding of the label y ∈ 0..C (C the
    null label of classifier-free guidance, :func:`~diffusion_lessons.guidance.guided.null_label`)
    is added to the noise embedding (as in the guided U-Nets of Dhariwal & Nichol 2021).
    """

    image_size: int = 28
    in_channels: int = 1
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (7,)
    dropout: float = 0.1
    noise_scale: float = 50.0
    num_classes: int | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.image_size, name="image_size")
        check_positive_int(self.in_channels, name="in_channels")
        check_positive_int(self.ch, name="ch")
        check_positive_int(self.num_res_blocks, name="num_res_blocks")
        if not self.ch_mult or any(
            isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.ch_mult
        ):
            raise ValueError(f"ch_mult must be a non-empty tuple of ints >= 1, got {self.ch_mult}")
        if any(not isinstance(r, int) or r < 1 for r in self.attn_resolutions):
            raise ValueError(f"attn_resolutions must hold ints >= 1, got {self.attn_resolutions}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if not self.noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {self.noise_scale!r}")
        if self.num_classes is not None:
            check_positive_int(self.num_classes, name="num_classes")
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size must be divisible by 2^(len(ch_mult) - 1) = {factor}, "
                f"got {self.image_size} with ch_mult {self.ch_mult}"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        for key in ("ch_mult", "attn_resolutions"):
            d[key] = tuple(d[key])
        return cls(**d)


def ddpm_cifar10_config() -> UNetConfig:
    """DDPM's CIFAR-10 model (Ho et al. 2020, appendix B): 35.7M parameters.

    ch = 128, ch_mult = (1, 2, 2, 2) (32², 16², 8², 4²), 2 residual blocks per level,
    self-attention at 16×16, dropout 0.1, 3 input channels.
    """
    return UNetConfig(
        image_size=32,
        in_channels=3,
        ch=128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.1,
    )


def mnist_config(small: bool = False) -> UNetConfig:
    """The book's MNIST model: 28² → 14² → 7², attention at 7×7.

    ``small=False``: ch = 64, 2 residual blocks per level (about 6.5M parameters, for a GPU);
    ``small=True``: ch = 32, 1 residual block per level (about 1.1M parameters).
    """
    if small:
        return UNetConfig(image_size=28, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)
    return UNetConfig(image_size=28, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2)


def _attn_or_identity(cfg: UNetConfig, channels: int, res: int) -> nn.Module:
    """Attention (or an identity, without parameters) after a residual block, decided by the
    side length ``res`` of its level."""
    return AttnBlock(channels) if res in cfg.attn_resolutions else nn.Identity()


def _build_encoder(net: nn.Module, cfg: UNetConfig) -> tuple[list[int], int, int]:
    """Give ``net`` the U-Net's noise embedding (``t_mlp``, and ``label_emb`` with
    ``cfg.num_classes``), its way down (``conv_in``, ``down``) and its middle (``mid1``,
    ``mid_attn``, ``mid2``), created in this order; returns the channels of the skip
    connections, the channels and the side length at the bottom. :class:`UNet` and
    :class:`UNetClassifier` share it."""
    ch, emb_dim = cfg.ch, 4 * cfg.ch
    net.t_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
    if cfg.num_classes is not None:  # C classes and the null label C
        net.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim)
    net.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
    net.down = nn.ModuleList()
    skip_chs, cur, res = [ch], ch, cfg.image_size
    for level, mult in enumerate(cfg.ch_mult):
        blocks = nn.ModuleList()
        for _ in range(cfg.num_res_blocks):
            blocks.append(ResBlock(cur, ch * mult, emb_dim, cfg.dropout))
            cur = ch * mult
            skip_chs.append(cur)
        attn = nn.ModuleList(_attn_or_identity(cfg, cur, res) for _ in range(cfg.num_res_blocks))
        net.down.append(nn.ModuleDict({"res": blocks, "attn": attn}))
        if level < len(cfg.ch_mult) - 1:
            net.down[-1]["downsample"] = nn.Conv2d(cur, cur, 3, stride=2, padding=1)
            skip_chs.append(cur)
            res //= 2
    net.mid1 = ResBlock(cur, cur, emb_dim, cfg.dropout)
    net.mid_attn = AttnBlock(cur)
    net.mid2 = ResBlock(cur, cur, emb_dim, cfg.dropout)
    return skip_chs, cur, res


def _noise_embedding(net: nn.Module, cfg: UNetConfig, x: Tensor, log_snr: Tensor) -> Tensor:
    """``net.t_mlp`` of the embedding of λ × ``noise_scale``, after checking the inputs' shapes."""
    c, s = cfg.in_channels, cfg.image_size
    if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
        raise ValueError(f"x must have shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")
    if log_snr.shape != (x.shape[0],):
        raise ValueError(
            f"log_snr must have shape (B,) = ({x.shape[0]},), got {tuple(log_snr.shape)}"
        )
    return net.t_mlp(time_embedding(log_snr * cfg.noise_scale, cfg.ch).to(x.dtype))


def _encode(net: nn.Module, x: Tensor, emb: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The way down and the middle of :func:`_build_encoder`'s modules: the bottom features and
    the skip connections, from the first (``conv_in``'s output) to the last."""
    h = net.conv_in(x)
    hs = [h]
    for level in net.down:
        for res, attn in zip(level["res"], level["attn"], strict=True):
            h = attn(res(h, emb))
            hs.append(h)
        if "downsample" in level:
            h = level["downsample"](h)
            hs.append(h)
    return net.mid2(net.mid_attn(net.mid1(h, emb)), emb), hs


class UNet(nn.Module):
    """ε̂_θ(x_t, λ): ``x: (B, C, H, W)``, ``log_snr: (B,)`` finite → ``(B, C, H, W)``.

    H = W = ``config.image_size``. Built from a :class:`UNetConfig`
    (``UNet(cfg)``) or from keyword arguments (``UNet(ch=64, ch_mult=(1, 2))``). With
    ``config.num_classes`` set it is ε̂_θ(x_t, λ, y) and ``forward`` takes the labels ``y: (B,)``
    in 0..C (C the null label), so that
    :class:`~diffusion_lessons.guidance.guided.Labelled` fixes them as for the 2-D
    :class:`~diffusion_lessons.guidance.guided.ConditionalMLP`.
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError("pass either a UNetConfig or keyword arguments, not both")
        cfg = config if config is not None else UNetConfig(**kwargs)
        self.config = cfg
        ch, emb_dim = cfg.ch, 4 * cfg.ch
        skip_chs, cur, res = _build_encoder(self, cfg)
        n_levels = len(cfg.ch_mult)
        self.up = nn.ModuleList()
        for level in reversed(range(n_levels)):
            out = ch * cfg.ch_mult[level]
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(cur + skip_chs.pop(), out, emb_dim, cfg.dropout))
                cur = out
            attn = nn.ModuleList(
                _attn_or_identity(cfg, cur, res) for _ in range(cfg.num_res_blocks + 1)
            )
            self.up.append(nn.ModuleDict({"res": blocks, "attn": attn}))
            if level > 0:
                self.up[-1]["upsample"] = nn.Conv2d(cur, cur, 3, padding=1)
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.conv_out = nn.Conv2d(cur, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def num_classes(self) -> int | None:
        """C of a class-conditional model (labels 0..C, C the null label), or None."""
        return self.config.num_classes

    def _label_embedding(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y given to an unconditional UNet (config.num_classes is None)")
            return None
        if y is None:
            raise ValueError(
                f"this UNet is class-conditional: pass labels y (B,) in 0..{self.num_classes}, "
                f"{self.num_classes} being the null label (unconditional)"
            )
        y = torch.as_tensor(y)
        if y.shape != (batch,):
            raise ValueError(f"y must have shape (B,) = ({batch},), got {tuple(y.shape)}")
        if not torch.compiler.is_compiling():  # a compiled training step has checked labels
            y = check_labels(y, self.num_classes, allow_null=True)
        return self.label_emb(y.to(device))

    def forward(self, x: Tensor, log_snr: Tensor, y: Tensor | None = None) -> Tensor:
        cfg = self.config
        emb = _noise_embedding(self, cfg, x, log_snr)
        label = self._label_embedding(y, x.shape[0], x.device)
        if label is not None:
            emb = emb + label.to(emb.dtype)
        h, hs = _encode(self, x, emb)
        for level in self.up:
            for res, attn in zip(level["res"], level["attn"], strict=True):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb))
            if "upsample" in level:
                h = level["upsample"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class UNetClassifier(nn.Module):
    """A noise-aware classifier of images: ``(x_t (B, C, H, W), λ (B,)) → logits (B, K)``.

    The U-Net's way down and middle (:class:`UNet`'s modules, built from the same
    :class:`UNetConfig`, which must be unconditional) on x_t and the embedding of λ, then
    GroupNorm, SiLU, the mean over positions and a linear layer to ``num_classes`` logits: the
    classifier of guided diffusion (Dhariwal & Nichol 2021), the encoder half of their U-Net,
    pooled by a plain average rather than their attention pooling. It takes λ as its noise
    input, as :class:`~diffusion_lessons.guidance.guided.NoiseAwareClassifier` does by default,
    so :func:`~diffusion_lessons.guidance.guided.classifier_log_prob` and
    :func:`~diffusion_lessons.guidance.guided.classifier_loss` apply to it unchanged.
    """

    def __init__(self, config: UNetConfig, num_classes: int):
        super().__init__()
        if config.num_classes is not None:
            raise ValueError(
                "a UNetClassifier takes no labels: pass a config with num_classes=None "
                f"(got {config.num_classes}), and the number of classes as num_classes"
            )
        check_positive_int(num_classes, name="num_classes")
        self.config, self.num_classes = config, num_classes
        _, cur, _ = _build_encoder(self, config)
        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.head = nn.Linear(cur, num_classes)

    def features(self, x: Tensor, log_snr: Tensor) -> Tensor:
        """The pooled features before the last layer: ``(B, channels at the bottom)``."""
        cfg = self.config
        emb = _noise_embedding(self, cfg, x, log_snr)
        h, _ = _encode(self, x, emb)
        return F.silu(self.norm_out(h)).mean(dim=(2, 3))

    def forward(self, x: Tensor, log_snr: Tensor) -> Tensor:
        return self.head(self.features(x, log_snr))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
