"""Measurements of the compressor that take minutes, stored with the package (chapter 11).

``compression_sweep.json`` is written by ``benchmarks/compression_sweep.py`` (the command that made
it is inside): bits-back file sizes of MNIST test images with the shipped model at several T,
beside the negative ELBO of the same images on the same grid, the continuous-time bound and the
baselines gzip, bz2, lzma, PNG and WebP. It ships inside the package so that a reader who only
installed the library (Colab) reads the same numbers as the built book.
"""

from __future__ import annotations

import json
from pathlib import Path

SWEEP_FILE = Path(__file__).with_name("measured") / "compression_sweep.json"
"""Where the stored sweep lives (the benchmark's default ``--out``)."""


def load_sweep(path: str | Path | None = None) -> dict:
    """The stored compression sweep (``path`` or :data:`SWEEP_FILE`) as a dict.

    Raises ``FileNotFoundError`` naming the file and the command that writes it when it is missing.
    """
    file = Path(path) if path is not None else SWEEP_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"no compression sweep at {file}: run `python benchmarks/compression_sweep.py "
            f"--out {file}` from a checkout"
        )
    return json.loads(file.read_text())
