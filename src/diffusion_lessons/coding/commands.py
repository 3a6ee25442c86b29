"""``diffusion-lessons compress`` and ``decompress``: the chapter 11 compressor on the command line.

::

    diffusion-lessons compress images.npy out.dlbb --model mnist --steps 20
    diffusion-lessons decompress out.dlbb back.npy --model mnist

Images are a ``.npy`` array of uint8, ``(N, H, W)`` or ``(N, C, H, W)``. ``--model`` is a shipped
checkpoint name (:func:`~diffusion_lessons.training.pretrained.load_pretrained`) or the path of a
weights file. The model runs in float64 on the CPU with deterministic algorithms; the file records
the model's checksum, so decompressing with another model is an error.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from diffusion_lessons.cli import positive_int
from diffusion_lessons.coding import bbans, container
from diffusion_lessons.coding.grids import LatentGrid


def load_model(name: str):
    """(denoiser in float64, model checksum, schedule, image shape) of a shipped name or a file."""
    from diffusion_lessons.training import pretrained

    if os.path.exists(name):
        pre = pretrained.read_weights(name)
    else:
        pre = pretrained.load_pretrained(name)
    model = pre.model.double().eval()
    cfg = pre.config.unet_config()
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    return pre.denoiser, container.model_sha256(model), pre.schedule, shape


def _as_nchw(images: np.ndarray) -> np.ndarray:
    return images[:, None] if images.ndim == 3 else images


def compress_cmd(args: argparse.Namespace) -> int:
    images = np.load(args.input, allow_pickle=False)
    denoiser, sha, schedule, shape = load_model(args.model)
    ab = schedule.alpha_bar_grid(args.steps)
    code = bbans.ChainCode(tuple(ab.tolist()), LatentGrid(precision=args.precision))
    start = time.perf_counter()
    data, _ = container.compress(
        denoiser, _as_nchw(images), code, model_sha256=sha, batch=args.batch, image_shape=shape
    )
    Path(args.output).write_bytes(data)
    seconds = time.perf_counter() - start
    bpd = 8 * len(data) / images.size
    print(f"{len(images)} images -> {len(data)} bytes ({bpd:.3f} bits/dim), {seconds:.1f} s")
    return 0


def decompress_cmd(args: argparse.Namespace) -> int:
    data = Path(args.input).read_bytes()
    denoiser, sha, _, _ = load_model(args.model)
    images = container.decompress(data, denoiser, model_sha256=sha)
    if images.shape[1] == 1:
        images = images[:, 0]
    np.save(args.output, images, allow_pickle=False)
    print(f"{len(images)} images -> {args.output}")
    return 0


def add_parsers(sub) -> None:
    """Register ``compress`` and ``decompress`` on an argparse subparsers object."""
    co = sub.add_parser("compress", help="losslessly compress uint8 images (bits-back, chapter 11)")
    co.add_argument("input", help=".npy file of uint8 images (N, H, W) or (N, C, H, W)")
    co.add_argument("output", help="compressed file to write")
    co.add_argument("--model", default="mnist", help="shipped checkpoint name or weights file")
    co.add_argument("--steps", type=positive_int, default=20, help="T, steps of the chain (>= 2)")
    co.add_argument("--precision", type=int, default=3, help="latent grid: σ / 2^precision")
    co.add_argument("--batch", type=positive_int, default=16, help="images per model call")
    co.set_defaults(func=compress_cmd)
    de = sub.add_parser("decompress", help="decode a file made by compress")
    de.add_argument("input", help="compressed file")
    de.add_argument("output", help=".npy file to write")
    de.add_argument("--model", default="mnist", help="the model the file was made with")
    de.set_defaults(func=decompress_cmd)
