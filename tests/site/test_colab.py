"""Run each chapter's .ipynb the way Colab would.

A fresh virtual environment holds only what Colab already provides (torch, numpy, matplotlib,
sympy, ipywidgets and a Jupyter kernel, at the versions in requirements.txt); the notebook's own
first cell must install the library (from this checkout, through $DIFFUSION_LESSONS_PIP_SPEC, where
Colab would install it from GitHub), and shipped checkpoints are downloaded into an empty cache. Every cell must run, within the chapter's time budget.

`make test` runs this module twice: on this CPU's own PyTorch kernels, and with
ATEN_CPU_CAPABILITY=default (PyTorch's portable kernels), so that a page comparing two differently
written float computations bitwise fails here rather than on a reader's Intel, AMD or Apple CPU.
The kernel each chapter actually ran on is checked and reported.
"""

import os
import re
import subprocess
import sys
import time
from datetime import datetime

import nbformat
import pytest

from conftest import REPO, REPORT_LINES, chapters

COLAB_PROVIDES = ("torch", "numpy", "matplotlib", "sympy", "ipywidgets", "ipykernel")
# Seconds of cell execution on a 2-core CPU, the Colab setup cell (an install) excluded.
BUDGET_S = {"03_forward_process": 60}
DEFAULT_BUDGET_S = 90
# Appended to each chapter (in memory): which PyTorch CPU kernels the chapter's kernel ran.
CAPABILITY_PROBE = "import torch\nprint(torch.backends.cpu.get_cpu_capability())"


def _asked_capability() -> str | None:
    """The kernel path ATEN_CPU_CAPABILITY asks for (upper case, as torch reports it), if any."""
    value = os.environ.get("ATEN_CPU_CAPABILITY", "").strip()
    return value.upper() or None


def test_pytorch_runs_the_asked_kernel_path():
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    asked = _asked_capability()
    REPORT_LINES.append(
        f"PyTorch CPU kernels in the test process: {capability}"
        + (f" (ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']})" if asked else "")
    )
    if asked is not None:
        assert capability == asked, f"ATEN_CPU_CAPABILITY asks for {asked}, torch runs {capability}"


def _cell_timeout() -> int:
    """The book's per-cell limit (execute.timeout in _config.yml): a stuck cell fails, naming it."""
    import yaml

    return int(yaml.safe_load((REPO / "_config.yml").read_text())["execute"]["timeout"])


def _pins() -> list[str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(0)
    return [pins[name] for name in COLAB_PROVIDES]


@pytest.fixture(scope="module")
def colab_kernel(tmp_path_factory):
    root = tmp_path_factory.mktemp("colab")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", *_pins()], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    probe = subprocess.run([str(py), "-c", "import diffusion_lessons"], capture_output=True)
    assert probe.returncode != 0, "the Colab-like environment must start without the library"
    prefix = root / "jupyter"
    subprocess.run(
        [str(py), "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "colab-sim"],
        check=True,
        capture_output=True,
    )
    return {"python": py, "jupyter_path": prefix / "share" / "jupyter"}


def _cell_seconds(cell) -> float:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not start or not end:
        return 0.0
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


@pytest.mark.slow
@pytest.mark.parametrize("md", chapters(), ids=lambda p: p.stem)
def test_chapter_runs_like_colab(md, colab_kernel, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(colab_kernel["jupyter_path"]))
    monkeypatch.setenv("DIFFUSION_LESSONS_PIP_SPEC", str(REPO))
    # A Colab reader has no checkout: the shipped checkpoints are downloaded (here from this
    # checkout's folder, through the same urllib call and SHA-256 check) into an empty cache.
    monkeypatch.setenv("DIFFUSION_LESSONS_CHECKPOINT_URL", (REPO / "checkpoints").as_uri())
    monkeypatch.setenv("DIFFUSION_LESSONS_CHECKPOINTS", str(tmp_path / "checkpoint-cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CAPABILITY_PROBE))
    client = NotebookClient(
        nb,
        kernel_name="colab-sim",
        timeout=_cell_timeout(),
        resources={"metadata": {"path": str(tmp_path)}},
    )
    wall = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - wall
    probe_cell = nb.cells.pop()
    capability = "".join(o.get("text", "") for o in probe_cell.outputs).strip()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [
        o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    asked = _asked_capability()
    if asked is not None:
        assert capability == asked, f"the chapter ran on {capability} kernels, not {asked}"
    probe = subprocess.run(
        [str(colab_kernel["python"]), "-c", "import diffusion_lessons"], capture_output=True
    )
    assert probe.returncode == 0, "the setup cell did not install the library"
    cells_s = sum(_cell_seconds(c) for c in code_cells[1:])
    budget = BUDGET_S.get(md.stem, DEFAULT_BUDGET_S)
    REPORT_LINES.append(
        f"{md.stem}: Colab-style run on {capability} kernels, cells {cells_s:.1f} s "
        f"(budget {budget} s), wall with install {wall:.1f} s"
    )
    assert cells_s <= budget, f"{md.stem} took {cells_s:.1f} s, over its {budget} s budget"
