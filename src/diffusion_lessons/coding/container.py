"""The compressed file: a versioned header that names the model, the chain and the images (chapter 11).

Layout (all integers little-endian)::

    b"DLBB"  | format version (u16) | header length (u32) | header (UTF-8 JSON) | payload (u32 words)

The header holds the model's checksum (SHA-256 of its weights), the time grid ᾱ_0..ᾱ_T, the latent
grid, the data levels, the batch size, the image shape and count, the seed and length of the initial
bits, and the SHA-256 of the payload. Reading checks all of it and raises a ``ValueError`` that says
what is wrong (not such a file, truncated, corrupted, another model, another version) before any
image is decoded; after decoding, the initial bits must come back exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct

import numpy as np
import torch

from diffusion_lessons.coding import bbans
from diffusion_lessons.coding.grids import LatentGrid

MAGIC = b"DLBB"
VERSION = 2
_FIXED = struct.Struct("<4sHI")


def model_sha256(model: torch.nn.Module | dict) -> str:
    """SHA-256 (hex) of a model's weights: every tensor of its state dict in name order, as float64."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().double().contiguous().numpy().tobytes())
    return h.hexdigest()


def _initial_count(shape: tuple[int, ...], code: bbans.ChainCode, batch: int) -> int:
    """Words of initial bits for the first batch's pops: ~6 bits per coded latent, since a pop from
    q on a lattice of σ/2^precision takes about precision + log2 √(2πe) ≈ precision + 2 bits."""
    latents = min(batch, shape[0]) * int(np.prod(shape[1:])) * code.T
    return 64 + math.ceil(latents * (code.grid.precision + 3) / 32)


def compress(
    denoiser,
    images,
    code: bbans.ChainCode,
    *,
    model_sha256: str,
    batch: int = 16,
    seed: int = 0,
    initial_words: int | None = None,
    image_shape: tuple[int, ...] | None = None,
) -> tuple[bytes, list[dict]]:
    """Compress uint8 ``images (N, ...)`` into the bytes of a file; returns ``(data, ledger)``.

    Parameters
    ----------
    denoiser : callable
        ``D(x_t, log_snr) -> x̂_0`` in float64.
    images : array of uint8
        The images ``(N, ...)``, each pixel in 0..bins−1.
    code : ChainCode
        The chain: time grid, latent grid and pixel levels.
    model_sha256 : str
        :func:`model_sha256` of the model behind ``denoiser``; the decoder must match it.
    batch : int
        Images per model call.
    seed : int
        Seed of the initial bits.
    initial_words : int, optional
        Number of 32-bit initial words (default: enough for the first batch).
    image_shape : tuple of int, optional
        The shape ``(C, H, W)`` the model takes; images of another shape are an error.
    """
    k = bbans.check_images(images, code.bins)
    if image_shape is not None and tuple(k.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"images must have shape (N, {', '.join(map(str, image_shape))}) for this model, "
            f"got {k.shape}: expected shape {tuple(image_shape)}"
        )
    count = _initial_count(k.shape, code, batch) if initial_words is None else int(initial_words)
    init = bbans.initial_words(count, seed)
    words, ledger = bbans.encode(denoiser, k.astype(np.uint8), code, batch=batch, init=init)
    payload = np.asarray(words, dtype="<u4").tobytes()
    header = {
        "model_sha256": model_sha256,
        "alpha_bar": list(code.alpha_bar),
        "precision": code.grid.precision,
        "window": code.grid.window,
        "bins": code.bins,
        "batch": batch,
        "shape": list(k.shape),
        "seed": seed,
        "initial_words": count,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    blob = json.dumps(header, sort_keys=True).encode()
    return _FIXED.pack(MAGIC, VERSION, len(blob)) + blob + payload, ledger


def read_header(data: bytes) -> tuple[dict, np.ndarray]:
    """Parse and check a file's bytes; returns ``(header, payload words)``. Raises ``ValueError``."""
    if len(data) < _FIXED.size or data[:4] != MAGIC:
        raise ValueError("not a diffusion-lessons compressed file (bad magic bytes or too short)")
    _, version, size = _FIXED.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"file format version {version} is not supported (this reader: {VERSION})")
    if len(data) < _FIXED.size + size:
        raise ValueError("the file is truncated: its header is incomplete")
    try:
        header = json.loads(data[_FIXED.size : _FIXED.size + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"the file's header is corrupted: {err}") from None
    payload = data[_FIXED.size + size :]
    if len(payload) % 4:
        raise ValueError("the file is truncated: its payload is not a whole number of 32-bit words")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise ValueError("the file is truncated or corrupted: the payload checksum does not match")
    return header, np.frombuffer(payload, dtype="<u4").astype(np.uint32)


def decompress(data: bytes, denoiser, *, model_sha256: str) -> np.ndarray:
    """Decode the bytes of a file made by :func:`compress`: uint8 images ``(N, ...)``.

    Raises ``ValueError`` if the file is not one, is truncated or corrupted, was made with a model
    whose checksum differs from ``model_sha256``, or does not give its initial bits back.
    """
    header, words = read_header(data)
    if header["model_sha256"] != model_sha256:
        raise ValueError(
            f"the file was made with another model (checksum {header['model_sha256'][:12]}…, "
            f"this model {model_sha256[:12]}…)"
        )
    grid = LatentGrid(header["precision"], header["window"])
    code = bbans.ChainCode(tuple(header["alpha_bar"]), grid, header["bins"])
    images, init = bbans.decode(denoiser, words, code, header["shape"], batch=header["batch"])
    expected = bbans.initial_words(header["initial_words"], header["seed"])
    if len(init) != len(expected) or not np.array_equal(init, expected):
        raise ValueError(
            "decoding did not give the initial bits back: the images are not trustworthy"
        )
    return images
