"""Run each chapter's .ipynb the way Colab would.

A fresh virtual environment holds only what Colab already provides (torch, numpy, matplotlib,
sympy, ipywidgets and a Jupyter kernel, at the versions in requirements.txt); the notebook's own
first cell must install the library (from this checkout, through $DIFFUSION_LESSONS_PIP_SPEC, where
Colab would install it from GitHub). Every cell must run, within the chapter's time budget.
"""

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
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    client = NotebookClient(
        nb, kernel_name="colab-sim", timeout=900, resources={"metadata": {"path": str(tmp_path)}}
    )
    wall = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - wall
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [
        o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    probe = subprocess.run(
        [str(colab_kernel["python"]), "-c", "import diffusion_lessons"], capture_output=True
    )
    assert probe.returncode == 0, "the setup cell did not install the library"
    cells_s = sum(_cell_seconds(c) for c in code_cells[1:])
    budget = BUDGET_S.get(md.stem, DEFAULT_BUDGET_S)
    REPORT_LINES.append(
        f"{md.stem}: Colab-style run, cells {cells_s:.1f} s (budget {budget} s), wall with install {wall:.1f} s"
    )
    assert cells_s <= budget, f"{md.stem} took {cells_s:.1f} s, over its {budget} s budget"
