"""Helpers for the book's pages: numbers glued into the prose, and the CPU/GPU size switch.

Pages run in three places: the book build (MyST-NB), Jupyter, and Colab (where MyST-NB is not
installed). These helpers behave the same in all three.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from diffusion_lessons.checks import check_choice

SCALE_ENV = "DIFFUSION_LESSONS_SCALE"
"""Environment variable: "small" (CPU-sized models), "full" (real-sized, for a GPU) or "auto"."""


def glue(name: str, value: Any) -> Any:
    """Make ``value`` available to the prose as ``{glue:text}`name``` (MyST-NB), and return it.

    Outside a book build (plain Jupyter, Colab) there is nothing to glue into: the value is
    simply returned.
    """
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return value
    _glue(name, value, display=False)
    return value


def scale() -> str:
    """``"full"`` or ``"small"``: how large the chapter's models are (the book's one GPU switch).

    Read from $DIFFUSION_LESSONS_SCALE: ``"small"``, ``"full"``, or ``"auto"`` (the default), which
    means ``"full"`` when a CUDA GPU is available and ``"small"`` otherwise.
    """
    value = os.environ.get(SCALE_ENV, "auto").strip().lower()
    check_choice(value, ("auto", "small", "full"), name=f"${SCALE_ENV}")
    if value == "auto":
        return "full" if torch.cuda.is_available() else "small"
    return value


def device() -> torch.device:
    """The device the chapters train on: the first CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup_cpu() -> None:
    """On the CPU, run PyTorch on one intra-op thread; on a GPU, do nothing.

    The book's CPU-sized models are small: their per-step work is too little to split across
    threads, and several threads on a busy 2-core machine were measured 10× slower than one.
    """
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
