"""Helpers for the book's pages: numbers glued into the prose, the CPU/GPU size switch, sources.

Pages run in three places: the book build (MyST-NB), Jupyter, and Colab (where MyST-NB is not
installed). These helpers behave the same in all three.
"""

from __future__ import annotations

import inspect
import os
import textwrap
from typing import Any

import numpy as np
import torch

from diffusion_lessons.checks import check_choice

SCALE_ENV = "DIFFUSION_LESSONS_SCALE"
"""Environment variable: "small" (CPU-sized models), "full" (real-sized, for a GPU) or "auto"."""


def glue(name: str, value: Any) -> Any:
    """Make ``value`` available to the prose as ``{glue:text}`name``` (MyST-NB), and return it.

    Outside a book build (plain Jupyter, Colab) there is nothing to glue into: the value is
    simply returned. A NumPy scalar is glued as the Python number it holds: MyST-NB formats a
    glued number from its ``repr``, and NumPy 2 writes ``np.float64(…)`` there.
    """
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return value
    if isinstance(value, np.generic):
        value = value.item()
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


def sizes(*, small: Any, full: Any) -> Any:
    """The chapter's sizes for this run: ``small`` on a CPU, ``full`` on a GPU (see :func:`scale`).

    The one idiom for the size switch: a page writes both sets of sizes once, side by side (a
    dict or a small dataclass), and reads the one that applies, e.g.
    ``S = pages.sizes(small={"steps": 1500}, full={"steps": 4000})``.
    """
    if type(small) is not type(full):
        raise TypeError(
            f"small and full must be of one type, got {type(small).__name__} and "
            f"{type(full).__name__}"
        )
    if isinstance(small, dict) and small.keys() != full.keys():
        raise ValueError(
            f"small and full must name the same sizes: only in small {sorted(small.keys() - full.keys())}"
            f", only in full {sorted(full.keys() - small.keys())}"
        )
    return full if scale() == "full" else small


def source(obj: Any) -> str:
    """The source code of a library function or class, dedented (what :func:`show_source` shows)."""
    return textwrap.dedent(inspect.getsource(obj))


def show_source(obj: Any):
    """Display the source of ``obj`` as a highlighted code block, and return it.

    A page calls this before using a derivation from :mod:`diffusion_lessons.symbolic`, so the
    reader sees the algebra, not only its result. The block is Markdown, which the book, Jupyter
    and Colab all render; without IPython the text is returned unchanged.
    """
    text = f"```python\n{source(obj).rstrip()}\n```"
    try:
        from IPython.display import Markdown
    except ImportError:  # pragma: no cover - IPython ships with every notebook front end
        return text
    return Markdown(text)
