"""The book's API reference (book/api/) and the equation labels that the code cites.

- Every equation label cited in the library or the tests (``eq-…``, in a docstring, a comment or a
  test's docstring) is defined by a page of the book, as ``$$ … $$ (eq-…)``.
- Every public module of the package has its page under book/api/ (an ``automodule`` directive),
  listed in _toc.yml, and every such page documents a module that exists: a new or moved module
  cannot be missed.
- A chapter's prose that names a library object as `module.name` links it to its entry
  ({py:func}`.module.name`), so the reader can open its reference and its source.
- With the built book: each module's page holds each public function and class of the module, and
  each label its docstrings cite links to the equation.

None of these imports the package: modules, names and docstrings are read from the source (ast).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, chapters

PACKAGE = "diffusion_lessons"
SRC = REPO / "src" / PACKAGE
API = REPO / "book" / "api"

# A cited label: eq- and lowercase words joined by hyphens, not preceded by a letter or hyphen.
CITED = re.compile(r"(?<![\w-])eq-[a-z0-9]+(?:-[a-z0-9]+)*")
# A defined label: MyST's labelled display math, `$$ (eq-…)` at the end of a line, or `:label:`.
DEFINED = re.compile(
    r"\$\$[ \t]*\((eq-[a-z0-9]+(?:-[a-z0-9]+)*)\)[ \t]*$|^[ \t]*:label:[ \t]*(eq-[a-z0-9-]+)", re.M
)
# The label cited in a docstring as an RST literal, which the book links to the equation.
DOC_LITERAL = re.compile(r"``(eq-[a-z0-9]+(?:-[a-z0-9]+)*)``")
AUTOMODULE = re.compile(r"^\.\. automodule::[ \t]+(\S+)", re.M)


def toc_files() -> list[str]:
    """Every document of _toc.yml (root, chapters and their sections, at any depth)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))
            walk(entry.get("chapters", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return files


def defined_labels() -> dict[str, str]:
    """Label → the book page (in _toc.yml) that defines it."""
    labels = {}
    for doc in toc_files():
        path = REPO / f"{doc}.md"
        if path.exists():
            for match in DEFINED.finditer(path.read_text()):
                labels[match.group(1) or match.group(2)] = doc
    return labels


def cited_labels() -> dict[str, list[str]]:
    """Label → the places (file:line) in src/, tests/ and benchmarks/ that cite it."""
    cited: dict[str, list[str]] = {}
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                for label in CITED.findall(line):
                    cited.setdefault(label, []).append(f"{path.relative_to(REPO)}:{lineno}")
    return cited


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def public_modules() -> dict[str, Path]:
    """Module name → source file, for every module and package whose name has no leading _."""
    modules = {}
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        if not any(part.startswith("_") for part in name.split(".")):
            modules[name] = path
    return modules


def api_pages() -> dict[str, list[str]]:
    """Module name → the pages under book/api/ whose automodule directive documents it."""
    pages: dict[str, list[str]] = {}
    for path in sorted(API.rglob("*.md")):
        doc = path.relative_to(REPO).with_suffix("").as_posix()
        for module in AUTOMODULE.findall(path.read_text()):
            pages.setdefault(module, []).append(doc)
    return pages


def public_definitions(path: Path) -> list[ast.FunctionDef | ast.ClassDef]:
    """The module's top-level public functions and classes that have a docstring."""
    tree = ast.parse(path.read_text())
    return [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
        and not node.name.startswith("_")
        and ast.get_docstring(node)
    ]


def docstring_labels(path: Path) -> set[str]:
    """The labels cited as ``eq-…`` in the docstrings the API page renders: the module's, and
    those of its public functions and classes and of their public methods (private ones, whose
    names start with _, are not documented)."""
    tree = ast.parse(path.read_text())
    nodes: list[ast.AST] = [tree]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            nodes.append(node)
            if isinstance(node, ast.ClassDef):
                nodes += [
                    m
                    for m in node.body
                    if isinstance(m, ast.FunctionDef) and not m.name.startswith("_")
                ]
    labels = set()
    for node in nodes:
        labels.update(DOC_LITERAL.findall(ast.get_docstring(node) or ""))
    return labels


# ---------------------------------------------------------------------------------------------
# Equation labels


def test_label_patterns_tell_a_definition_from_a_citation():
    label = "eq" + "-some-thing"  # written in two pieces so that the scan below does not see it
    text = f"$$\nx = 1\n$$ ({label})\n\nSee {{eq}}`{label}`, ``{label}``, a freq{label[2:]}.\n"
    assert [m.group(1) for m in DEFINED.finditer(text)] == [label]
    assert CITED.findall(text) == [label] * 3  # the definition, the {eq} role, the literal
    assert CITED.findall("(label " + label + ").") == [label]
    assert not CITED.findall("a fr" + label)


def test_the_scans_find_the_labels():
    """Guards the scans themselves: a pattern that matched nothing would pass every check."""
    defined, cited = defined_labels(), cited_labels()
    assert len(defined) >= 30, sorted(defined)
    assert defined.get("eq-forward-marginal") == "notebooks/03_forward_process"
    places = cited.get("eq-forward-marginal", [])
    assert any(p.startswith("src/") for p in places) and any(p.startswith("tests/") for p in places)


def test_every_cited_label_is_defined_in_the_book():
    defined = defined_labels()
    missing = {label: places for label, places in cited_labels().items() if label not in defined}
    assert not missing, (
        "labels cited in the code but defined by no page of the book:\n"
        + "\n".join(f"  {label}: {', '.join(places)}" for label, places in sorted(missing.items()))
    )


# ---------------------------------------------------------------------------------------------
# One API page per public module


def test_every_public_module_has_an_api_page():
    modules, pages = public_modules(), api_pages()
    assert len(modules) > 1, f"no module found under {SRC}"
    missing = sorted(set(modules) - set(pages))
    assert not missing, (
        f"modules without a page under book/api/: {missing}; add book/api/<name>.md with "
        "`.. automodule:: <module>` in an eval-rst block, and list it in _toc.yml"
    )
    twice = {module: docs for module, docs in pages.items() if len(docs) > 1}
    assert not twice, f"modules documented by more than one page: {twice}"


def test_every_api_page_documents_an_existing_module_and_is_in_the_toc():
    modules, toc = public_modules(), set(toc_files())
    pages = sorted(API.rglob("*.md"))
    assert pages, "book/api/ holds no page"
    for path in pages:
        doc = path.relative_to(REPO).with_suffix("").as_posix()
        assert doc in toc, f"{doc} is not listed in _toc.yml"
        for module in AUTOMODULE.findall(path.read_text()):
            assert module in modules, f"{doc} documents {module}, which is not a public module"


# ---------------------------------------------------------------------------------------------
# Chapters link the library names they mention


def _public_names() -> dict[str, set[str]]:
    """Short module name (as the chapters import it, e.g. ``losses``) → its public names."""
    names: dict[str, set[str]] = {}
    for module, path in public_modules().items():
        tree = ast.parse(path.read_text())
        defined = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
        names[module.rsplit(".", 1)[-1]] = {n for n in defined if not n.startswith("_")}
    return names


def _is_code_fence(info: str) -> bool:
    """```{code-cell}, ```{code-block}, ```python, ```: code; ````{exercise} etc.: prose."""
    info = info.strip()
    return info.startswith(("{code", "{eval-rst}", "{math}")) or re.fullmatch(r"[\w+-]*", info)


def _prose(text: str) -> str:
    """A chapter's Markdown without its front matter and code: the prose of every directive
    (exercises, solutions, proofs) stays, the code cells and code blocks go."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    kept, fences = [], []  # fences: (backticks, is_code) of the open blocks
    for line in text.splitlines():
        fence = re.match(r"^(`{3,})(.*)$", line.strip())
        if fence and fences and fence.group(1) == fences[-1][0] and not fence.group(2).strip():
            fences.pop()
        elif fence and not (fences and fences[-1][1]):
            fences.append((fence.group(1), bool(_is_code_fence(fence.group(2)))))
        elif not (fences and fences[-1][1]):
            kept.append(line)
    return "\n".join(kept)


def test_prose_keeps_directives_and_drops_code():
    text = (
        "---\njupytext: x\n---\nA `a.b`.\n```{code-cell} ipython3\nx = `no`\n```\n"
        "````{exercise}\nB `c.d`.\n````\n```{solution-start} e\n:class: dropdown\n```\n"
        "```python\ny = 1\n```\nC.\n"
    )
    assert _prose(text) == "A `a.b`.\nB `c.d`.\n:class: dropdown\nC."


def unlinked_library_names(prose: str, names: dict[str, set[str]]) -> list[str]:
    """Inline code spans (not a role's target) that name `module.object` of the library."""
    found = []
    for span in re.findall(r"(?<![`}\w])`([^`\n]+)`(?!`)", prose):
        for module, name in re.findall(r"(?<![\w.])([a-z_]\w*)\.([A-Za-z_]\w*)", span):
            if name in names.get(module, ()):
                found.append(span)
                break
    return found


def test_unlinked_names_are_found():
    names = {"forward": {"q_sample"}}
    prose = "Here `forward.q_sample(x0, ab)` and {py:func}`.forward.q_sample`, `x.q_sample`."
    assert unlinked_library_names(prose, names) == ["forward.q_sample(x0, ab)"]


@pytest.mark.parametrize("md", chapters(), ids=lambda p: p.stem)
def test_chapter_links_the_library_names_it_mentions(md):
    unlinked = unlinked_library_names(_prose(md.read_text()), _public_names())
    assert not unlinked, (
        f"{md.name} names library objects in plain code: {unlinked}; write "
        "{py:func}`.module.name` (or {py:class}, {py:data}; with an explicit title "
        "{py:func}`module.name(...) <.module.name>`) so that they link to the API reference"
    )


# ---------------------------------------------------------------------------------------------
# The built book


@pytest.mark.parametrize("module", sorted(public_modules()))
def test_api_page_is_built_with_every_entry(book_html, module):
    doc = api_pages()[module][0]
    page = book_html / f"{doc}.html"
    assert page.exists(), f"{page} is missing from the built book"
    html = page.read_text()
    assert f'id="module-{module}"' in html, f"{page.name}: autodoc did not document {module}"
    path = public_modules()[module]
    for node in public_definitions(path):
        assert f'id="{module}.{node.name}"' in html, f"{page.name}: no entry for {node.name}"
    for label in sorted(docstring_labels(path)):
        assert f"#equation-{label}" in html, f"{page.name}: {label} does not link to its equation"


@pytest.mark.parametrize("md", chapters(), ids=lambda p: p.stem)
def test_chapter_links_reach_the_api_pages(book_html, md):
    roles = re.findall(r"\{py:[a-z]+\}`", _prose(md.read_text()))
    html = (book_html / md.relative_to(REPO).with_suffix(".html")).read_text()
    links = re.findall(r'href="(?:\.\./)*book/api/[\w/]+\.html#[\w.-]+"', html)
    assert len(links) >= len(roles), f"{md.name}: {len(roles)} roles, {len(links)} links"
