"""Shared fixtures: where the repository, the data and the built book are."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def chapters() -> list[Path]:
    """The chapter sources listed in _toc.yml, in book order."""
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [REPO / f"{f}.md" for f in files if f.startswith("notebooks/")]


def load_script(path: Path):
    """A script that is no package module (``benchmarks/``, ``gpu/``, ``book/_ext/``), imported
    from its file under its own name and registered in ``sys.modules``, where dataclasses look
    their module up."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding mnist.npz: $DIFFUSION_LESSONS_DATA, or ../shared/data beside the repo."""
    for candidate in (os.environ.get("DIFFUSION_LESSONS_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist.npz").exists():
            return Path(candidate)
    pytest.skip("MNIST not found: set DIFFUSION_LESSONS_DATA to a folder holding mnist.npz")


@pytest.fixture(scope="session")
def book_html() -> Path:
    """The built HTML book (make test builds it first and passes its path)."""
    path = os.environ.get("DIFFUSION_LESSONS_BOOK_HTML")
    if not path or not (Path(path) / "index.html").exists():
        pytest.skip("the built book is needed: run `make test`, which builds it first")
    return Path(path)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(items):
    """Tests that read the built book carry the marker ``built_book`` (make fast leaves them out)."""
    for item in items:
        if "book_html" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.built_book)


REPORT_LINES: list[str] = []
"""Measurements that tests want shown at the end of the run (chapter times, for instance)."""


def pytest_terminal_summary(terminalreporter):
    if REPORT_LINES:
        terminalreporter.section("measured")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)
