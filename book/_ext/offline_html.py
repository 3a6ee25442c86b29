"""Sphinx extension: the HTML book reads offline, from any folder, with no console error.

Loaded by ``_config.yml`` (``sphinx.local_extensions``). What it does, each for a reason a reader
would otherwise see:

- **MathJax from the site.** ``mathjax_path`` names a MathJax 3 component under ``mathjax/``; at the
  end of the build this copies that component, and the folders MathJax loads on demand (TeX
  extensions such as ``boldsymbol``, the output's font data, the menu, accessibility), from the
  pinned PyPI package ``sphinx-mathjax-offline`` (MathJax 3.2.2, the same files as the npm release's
  ``es5`` folder) into ``_static/mathjax``. The SVG output needs no web font, which browsers may
  refuse to load from ``file://``.
- **No widget manager.** An ipywidget needs a kernel: the live sliders' cells are tagged
  ``remove-output``, and this drops any other widget output (a training cell's ``tqdm`` bar) and
  the widget state that execution saved in the notebook, while ``nb_ipywidgets_js: {}`` keeps
  MyST-NB from loading require.js and the widget manager. A widget output with a control in it
  (a slider not tagged ``remove-output``) is a build warning.
- **Each inline script once.** Sphinx 7.4 lists an inline (body-only) script twice when an extension
  adds it after the builder started (its registry copy has filename ``''``, the builder's ``None``).
  Two copies of sphinx-thebe's ``const THEBE_JS_URL = ...`` are a SyntaxError on every page.
- **No Colab setup cell.** The first code cell of a chapter installs the library in Colab (its
  source starts with ``# Colab setup``); the ``.ipynb`` keeps it, the HTML leaves it out.

``python book/_ext/offline_html.py zip HTML_DIR ZIP_PATH`` writes the built site into one zip whose
top folder is named after the zip: unzipped anywhere, its ``index.html`` opens offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

logger = logging.getLogger(__name__)

COLAB_SETUP_PREFIX = "# Colab setup"
MATHJAX_PACKAGE = "sphinx-mathjax-offline"
MATHJAX_PREFIX = "mathjax/"
# What a MathJax 3 component loads at run time, relative to its own folder.
MATHJAX_DYNAMIC_DIRS = ("a11y", "adaptors", "input", "output", "sre", "ui")
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def mathjax_source() -> Path:
    """The folder of MathJax 3 files shipped by the ``sphinx-mathjax-offline`` package."""
    spec = importlib.util.find_spec(MATHJAX_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"the book's MathJax comes from the Python package {MATHJAX_PACKAGE!r}, which is not "
            "installed: pip install -r requirements.txt"
        )
    folder = Path(spec.origin).parent / "static" / "mathjax"
    if not (folder / "startup.js").is_file():
        raise RuntimeError(f"{folder} does not hold MathJax 3 (no startup.js)")
    return folder


def _local_mathjax_component(mathjax_path: str) -> str | None:
    """``tex-mml-svg.js`` for ``mathjax/tex-mml-svg.js``; None for a URL or another folder."""
    if "://" in mathjax_path or not mathjax_path.startswith(MATHJAX_PREFIX):
        return None
    return mathjax_path[len(MATHJAX_PREFIX) :]


def check_mathjax_path(app, config) -> None:
    component = _local_mathjax_component(config.mathjax_path or "")
    if component is None:
        logger.warning(
            f"mathjax_path = {config.mathjax_path!r} is not a local MathJax component "
            f"('{MATHJAX_PREFIX}<component>.js'): pages will load MathJax from the network",
            type="offline_html",
        )
        return
    if not (mathjax_source() / component).is_file():
        choices = sorted(p.name for p in mathjax_source().glob("*.js"))
        raise ValueError(
            f"mathjax_path = {config.mathjax_path!r}: {component!r} is not a MathJax component; "
            f"choose one of {choices}"
        )


def copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    component = _local_mathjax_component(app.config.mathjax_path or "")
    if component is None:
        return
    source = mathjax_source()
    target = Path(app.outdir) / "_static" / "mathjax"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / component, target / component)
    for name in MATHJAX_DYNAMIC_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)


def _cell_source(cell: nodes.Element) -> str:
    for child in cell.children:
        if child.get("nb_element") == "cell_code_source":
            block = child.next_node(nodes.literal_block)
            return block.astext() if block is not None else ""
    return ""


# Widgets that only show something (a tqdm bar is an HBox of HTML and FloatProgress): without a
# kernel their output is dropped silently. Any other widget (a slider, a button) is a control.
DISPLAY_ONLY_WIDGETS = {
    "BoxModel",
    "HBoxModel",
    "VBoxModel",
    "GridBoxModel",
    "HTMLModel",
    "HTMLMathModel",
    "LabelModel",
    "FloatProgressModel",
    "IntProgressModel",
    "ImageModel",
    "OutputModel",
}


def _saved_widget_state(js_files: dict) -> dict:
    """Model id -> model, from the widget state that execution saved in the notebook."""
    _uri, attrs = js_files.get("ipywidgets_state", (None, {}))
    try:
        return dict(json.loads(attrs.get("body", "{}")).get("state", {}))
    except (ValueError, AttributeError, TypeError):
        return {}


def _controls(state: dict, model_id: str) -> list[str]:
    """The model names of the controls in a widget and its children (empty: display only)."""
    found, todo, seen = [], [model_id], set()
    while todo:
        key = todo.pop()
        if key in seen or key not in state:
            continue
        seen.add(key)
        model = state[key]
        name = model.get("model_name", "")
        if name not in DISPLAY_ONLY_WIDGETS:
            found.append(name)
        children = model.get("state", {}).get("children", [])
        todo += [c.removeprefix("IPY_MODEL_") for c in children if isinstance(c, str)]
    return found


def trim_notebook_page(app, doctree: nodes.document) -> None:
    """Leave out the Colab setup cell, widget outputs and the saved widget state.

    A widget output shows nothing without a kernel. One that only displays (a ``tqdm`` bar) goes
    silently; one with a control (a live slider) is also a warning: its cell should be tagged
    ``remove-output``, and the reader given a static slider.
    """
    cells = [n for n in doctree.findall(nodes.container) if n.get("nb_element") == "cell_code"]
    if cells and _cell_source(cells[0]).lstrip().startswith(COLAB_SETUP_PREFIX):
        cells[0].parent.remove(cells[0])

    js_files = getattr(app.env, "nb_metadata", {}).get(app.env.docname, {}).get("js_files", {})
    state = _saved_widget_state(js_files)
    bundles = [n for n in doctree.findall(nodes.container) if n.get("nb_element") == "mime_bundle"]
    for bundle in bundles:
        views = [c for c in bundle.children if c.get("mime_type") == WIDGET_VIEW_MIME]
        if not views:
            continue
        model = re.search(r'"model_id":\s*"([^"]+)"', views[0].astext())
        controls = _controls(state, model.group(1)) if model else []
        if controls:
            logger.warning(
                f"this cell shows a live ipywidget ({', '.join(sorted(set(controls)))}), which "
                "needs a kernel and shows nothing in the HTML book: tag the cell remove-output "
                "(and give the reader a static slider)",
                location=bundle,
                type="offline_html",
                subtype="widget",
            )
        node = bundle  # remove it, and the output containers it leaves empty
        while True:
            parent = node.parent
            parent.remove(node)
            if parent.children or parent.get("nb_element") == "cell_code" or parent.parent is None:
                break
            node = parent

    for key in [k for k in js_files if k.startswith("ipywidgets")]:
        del js_files[key]


def _script_key(js) -> tuple:
    filename = getattr(js, "filename", js) or ""
    attributes = getattr(js, "attributes", {})
    return (str(filename), getattr(js, "priority", 500), tuple(sorted(attributes.items())))


def unique_scripts(app, pagename, templatename, context, doctree) -> None:
    """Each script once: Sphinx 7.4 can list an inline script twice (filename None and '')."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    kept = []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def setup(app):
    app.connect("config-inited", check_mathjax_path)
    app.connect("doctree-read", trim_notebook_page)
    app.connect("html-page-context", unique_scripts, priority=900)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def zip_site(html_dir: Path, zip_path: Path) -> int:
    """Write every file under ``html_dir`` into ``zip_path`` below one folder; return the count.

    Entries are sorted and carry a fixed date, so the same site gives the same zip.
    """
    html_dir, zip_path = Path(html_dir), Path(zip_path)
    if not (html_dir / "index.html").is_file():
        raise FileNotFoundError(f"html_dir must be a built site holding index.html: {html_dir}")
    top = zip_path.name.removesuffix(".zip")
    files = sorted(p for p in html_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    tmp = zip_path.with_name(zip_path.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(f"{top}/{path.relative_to(html_dir).as_posix()}")
            info.date_time = (2020, 1, 1, 0, 0, 0)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    os.replace(tmp, zip_path)
    return len(files)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "zip":
        sys.exit("usage: python book/_ext/offline_html.py zip HTML_DIR ZIP_PATH")
    count = zip_site(Path(sys.argv[2]), Path(sys.argv[3]))
    size = Path(sys.argv[3]).stat().st_size
    print(f"{sys.argv[3]}: {count} files, {size / 2**20:.1f} MiB")
