"""Write the API reference's pages (book/api/) and their _toc.yml entries from the package map.

The order is the package's: the modules and sub-packages listed (as ``:mod:`` references) in
``diffusion_lessons/__init__.py``, and in each sub-package the modules its ``__init__.py`` lists.
A module that a map does not list is an error, so a new module is placed by writing it into the
map. Run ``make api-pages`` after adding or moving a module; tests/site/test_api_docs.py checks
that every module has its page.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "diffusion_lessons"
API = REPO / "book" / "api"
TOC = REPO / "_toc.yml"
LISTED = re.compile(r":mod:`~?diffusion_lessons\.([\w.]+)`")
BEGIN, END = "  # API-BEGIN (written by book/api/write_pages.py)\n", "  # API-END\n"


def listed(package: Path) -> list[str]:
    """The dotted module names a package's docstring lists, checked against the files there."""
    text = (package / "__init__.py").read_text()
    names = list(dict.fromkeys(LISTED.findall(text.split('"""')[1])))
    present = {
        ".".join(p.relative_to(SRC).with_suffix("").parts)
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    missing = sorted(present - set(names))
    if missing:
        sys.exit(f"{package / '__init__.py'} does not list {missing}: add them to its docstring")
    return names


def page(module: str, *, package: bool) -> str:
    title = f"# `{module.rsplit('.', 1)[-1]}`" if not package else f"# `{module}`"
    options = "\n   :no-members:" if package else ""
    return f"{title}\n\n```{{eval-rst}}\n.. automodule:: diffusion_lessons.{module}{options}\n```\n"


def main() -> None:
    # Read every map first: a module missing from one stops the run before any page is removed.
    order = {
        name: listed(SRC / name) for name in listed(SRC) if (SRC / name / "__init__.py").exists()
    }
    for old in API.rglob("*.md"):
        if old.name != "index.md" or old.parent != API:
            old.unlink()
    for folder in sorted(API.rglob("*"), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    toc = ["  - caption: API reference\n", "    numbered: false\n", "    chapters:\n"]
    toc += ["      - file: book/api/index\n", "        sections:\n"]
    for name in listed(SRC):
        path = SRC / name
        if (path / "__init__.py").exists():
            (API / name).mkdir(exist_ok=True)
            (API / name / "index.md").write_text(page(name, package=True))
            toc.append(f"          - file: book/api/{name}/index\n")
            toc.append("            sections:\n")
            for module in order[name]:
                rel = module.replace(".", "/")
                (API / f"{rel}.md").write_text(page(module, package=False))
                toc.append(f"              - file: book/api/{rel}\n")
        else:
            (API / f"{name}.md").write_text(page(name, package=False))
            toc.append(f"          - file: book/api/{name}\n")
    text = TOC.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    TOC.write_text(head + BEGIN + "".join(toc) + END + tail)


if __name__ == "__main__":
    main()
