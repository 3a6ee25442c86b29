"""The chapters as files: paired .ipynb in sync, the Colab setup cell, one set of MathJax macros."""

import re

import jupytext
import pytest
import yaml

from conftest import REPO, chapters

CHAPTERS = chapters()
COLAB_MARKERS = ("# Colab setup:", "%pip install", "DIFFUSION_LESSONS_PIP_SPEC")


def _cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def test_toc_lists_chapters():
    assert CHAPTERS, "_toc.yml lists no chapter under notebooks/"
    for md in CHAPTERS:
        assert md.exists(), f"{md} is in _toc.yml but missing"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_paired_ipynb_is_in_sync(md):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make sync`"
    from_md = jupytext.read(md)
    from_ipynb = jupytext.read(ipynb)
    assert _cells(from_ipynb) == _cells(from_md), (
        f"{ipynb.name} differs from {md.name}: run `make sync`"
    )
    assert all(not c.get("outputs") for c in from_ipynb.cells if c.cell_type == "code"), (
        f"{ipynb.name} holds outputs; it is generated without them"
    )


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_first_code_cell_is_the_colab_setup(md):
    nb = jupytext.read(md)
    first = next(c for c in nb.cells if c.cell_type == "code")
    for marker in COLAB_MARKERS:
        assert marker in first.source, (
            f"{md.name}: the first code cell must install the library in Colab"
        )


def _config_macros():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    return config["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_notebook_macros_match_book_macros(md):
    """Jupyter and Colab read the macros from a hidden cell; the book from _config.yml. They agree."""
    nb = jupytext.read(md)
    cells = [c.source for c in nb.cells if c.cell_type == "markdown" and "\\newcommand" in c.source]
    assert len(cells) == 1, f"{md.name} needs exactly one hidden macro cell"
    found = dict(re.findall(r"\\newcommand\{\\(\w+)\}\{(.*)\}\s*$", cells[0], re.M))
    assert found == _config_macros()
