"""The chapters as files: paired .ipynb in sync, the Colab setup cell, one set of MathJax macros,
code that fits the book's column and is formatted and linted like the library."""

import re
import subprocess
import sys

import jupytext
import pytest
import yaml

from conftest import REPO, chapters

CHAPTERS = chapters()
COLAB_MARKERS = ("# Colab setup:", "%pip install", "DIFFUSION_LESSONS_PIP_SPEC")
# The chapters' ruff settings: the library's rules at the width of the book's code column.
CHAPTER_RUFF = REPO / "notebooks" / "ruff.toml"


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


def _columns():
    """The book's code column, as notebooks/ruff.toml states it (``line-length``)."""
    found = re.search(r"^line-length\s*=\s*(\d+)\s*$", CHAPTER_RUFF.read_text(), re.M)
    assert found, f"{CHAPTER_RUFF} must set line-length"
    return int(found.group(1))


def test_chapter_column_is_88():
    assert _columns() == 88, "the book's column fits 88 characters of code"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_code_lines_fit_the_column(md):
    """No code line scrolls sideways in the HTML: not a comment, not a string, not a table."""
    columns = _columns()
    cells = jupytext.read(md).cells
    # numbered as ruff numbers them: cell k counts every cell, markdown included, from 1
    code = [(k, c.source) for k, c in enumerate(cells, 1) if c.cell_type == "code"]
    long = [
        f"cell {k}, line {j}: {len(line)} characters: {line[:60]}..."
        for k, source in code
        for j, line in enumerate(source.splitlines(), 1)
        if len(line) > columns
    ]
    assert not long, f"{md.name}: lines over {columns} characters:\n" + "\n".join(long)


def _ruff(md, *args):
    """Ruff on the chapter's code cells: the notebook jupytext reads from the .md, on stdin."""
    notebook = jupytext.writes(jupytext.read(md), fmt="ipynb")
    command = [sys.executable, "-m", "ruff", *args, "--config", str(CHAPTER_RUFF)]
    command += ["--stdin-filename", f"notebooks/{md.stem}.ipynb", "-"]
    return subprocess.run(
        command, input=notebook, capture_output=True, text=True, cwd=REPO, check=False
    )


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_code_is_formatted(md):
    result = _ruff(md, "format", "--diff")
    assert result.returncode == 0, (
        f"{md.name}: `ruff format` would change its code (run `make format`):\n"
        + result.stdout
        + result.stderr
    )


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_code_passes_lint(md):
    result = _ruff(md, "check", "--output-format", "concise")
    assert result.returncode == 0, (
        f"{md.name}: `ruff check` finds problems:\n" + result.stdout + result.stderr
    )
