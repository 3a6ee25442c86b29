"""Plotting helpers, so that a chapter's hidden plotting cells stay a few lines long."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

SCHEDULE_LABELS = {
    "linear_beta": "linear β (DDPM)",
    "cosine": "cosine (Nichol & Dhariwal)",
    "linear_log_snr": "linear log-SNR (VDM)",
}
"""The legend label of each schedule name that :func:`plot_schedule_curves` knows."""


def image_grid(images: Tensor, nrow: int, *, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile ``images: (N, 1, H, W)`` with values in [−1, 1] into one array ``(rows·(H+pad)−pad, …)`` in [0, 1].

    Values outside [−1, 1] (noisy images) are shown clipped: this only affects the picture.
    """
    images = torch.as_tensor(images).detach().cpu().float()
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, _, h, w = images.shape
    ncol = -(-n // nrow)
    grid = np.full((nrow * (h + pad) - pad, ncol * (w + pad) - pad), pad_value, dtype=np.float32)
    pixels = ((images[:, 0] + 1) / 2).clamp(0, 1).numpy()
    for k in range(n):
        r, c = divmod(k, ncol)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = pixels[k]
    return grid


def array_to_png(image: np.ndarray, *, scale: int = 1, cmap: str = "gray") -> bytes:
    """Encode a 2-D array with values in [0, 1] as PNG bytes, each pixel repeated ``scale`` times."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {image.shape}")
    if scale > 1:
        image = np.kron(image, np.ones((scale, scale), dtype=image.dtype))
    buf = io.BytesIO()
    plt.imsave(buf, image, cmap=cmap, vmin=0.0, vmax=1.0, format="png")
    return buf.getvalue()


def figure_to_png(fig: matplotlib.figure.Figure, *, dpi: int = 72, close: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes (and close it, so it is not shown twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        plt.close(fig)
    return buf.getvalue()


def plot_schedule_curves(
    t: Tensor,
    curves: dict[str, Tensor],
    *,
    ax: matplotlib.axes.Axes,
    ylabel: str,
    log: bool = False,
) -> None:
    """Plot one curve per schedule name against t, labelled with :data:`SCHEDULE_LABELS`."""
    for name, values in curves.items():
        ax.plot(t.numpy(), values.detach().numpy(), label=SCHEDULE_LABELS.get(name, name))
    ax.set_xlabel("t")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def scatter_panels(
    points: Sequence[Tensor],
    titles: Sequence[str],
    *,
    lim: float = 3.5,
    size: float = 2.6,
    suptitle: str | None = None,
) -> matplotlib.figure.Figure:
    """One 2-D scatter panel per tensor ``(N, 2)``, on equal, fixed axes."""
    fig, axes = plt.subplots(1, len(points), figsize=(size * len(points), size), squeeze=False)
    for ax, pts, title in zip(axes[0], points, titles, strict=True):
        p = torch.as_tensor(pts).detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1.5, alpha=0.5, color="C0", rasterized=True)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig
