"""The built HTML book: sizes, content, the Colab button, and every page offline in a real browser.

The browser checks open each page from disk (file://) in headless Chromium with every http(s) and
ws(s) request blocked, as a reader with the zip would, and hold on every page: each equation
typeset by MathJax (no raw TeX delimiters left in the text), every static slider changing its
picture, no console error, no failed request and no request leaving the machine. They save a
screenshot of each page under the build folder and write the per-page counts into a JSON file
beside it (both named at the end of the run).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, REPORT_LINES, chapters, load_script

CHAPTER_PAGES = [md.relative_to(REPO).with_suffix(".html") for md in chapters()]
MAX_PAGE_BYTES = 5 * 1024 * 1024
ZIP_NAME = "diffusion-lessons-html.zip"
BLOCKED_URLS = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
SCREENSHOT_MAX_HEIGHT = 12000  # CSS pixels: the top of a long chapter, enough to look at
EXT = REPO / "book" / "_ext" / "offline_html.py"


def _offline_html():
    return load_script(EXT)


def _site_pages(root: Path) -> list[Path]:
    """Every HTML page of a built site, relative to it (assets and the root redirect left out)."""
    pages = []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root)
        if rel.parts[0].startswith("_") or _is_redirect(path):
            continue
        pages.append(rel)
    return pages


def _is_redirect(path: Path) -> bool:
    head = path.read_text(errors="replace")[:400].lower()
    return 'http-equiv="refresh"' in head and "<body" not in head


def _pages_to_check() -> list[Path]:
    """The built book's pages when its path is known at collection time, else the TOC's pages."""
    built = os.environ.get("DIFFUSION_LESSONS_BOOK_HTML")
    if built and (Path(built) / "index.html").exists():
        return _site_pages(Path(built))
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [Path(f"{f}.html") for f in files] + [Path("genindex.html"), Path("search.html")]


ALL_PAGES = _pages_to_check()


@pytest.mark.parametrize("page", CHAPTER_PAGES, ids=lambda p: p.stem)
def test_chapter_page_size(book_html, page):
    size = (book_html / page).stat().st_size
    assert size < MAX_PAGE_BYTES, f"{page} is {size / 2**20:.1f} MiB, over the 5 MiB budget"


@pytest.mark.parametrize("page", CHAPTER_PAGES, ids=lambda p: p.stem)
def test_colab_button_opens_the_paired_notebook(book_html, page):
    html = (book_html / page).read_text()
    links = re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', html)
    assert links, f"{page} has no Colab launch button"
    target = links[0].split("/blob/main/", 1)[1]
    assert target == str(page.with_suffix(".ipynb"))
    assert (REPO / target).exists()


@pytest.mark.parametrize("page", CHAPTER_PAGES, ids=lambda p: p.stem)
def test_colab_setup_cell_is_in_the_notebook_not_in_the_html(book_html, page):
    import nbformat

    nb = nbformat.read(REPO / page.with_suffix(".ipynb"), as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source.startswith("# Colab setup"), "the .ipynb must open with the setup cell"
    html = (book_html / page).read_text()
    assert "Colab setup" not in html and "%pip install" not in html


@pytest.mark.parametrize("page", ALL_PAGES, ids=str)
def test_page_loads_nothing_from_the_network(book_html, page):
    """No script, style sheet, font or widget manager from another host; MathJax is in the site."""
    html = (book_html / page).read_text()
    loaded = re.findall(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="([^"]+)"', html)
    remote = [u for u in loaded if re.match(r"(?:https?:)?//", u)]
    assert not remote, f"{page} loads {remote}"
    assert "widget-view+json" not in html and "widget-state+json" not in html
    assert html.count("const THEBE_JS_URL") <= 1, "THEBE_JS_URL declared twice: a SyntaxError"
    if 'class="math' in html:
        # (Sphinx appends ?v=<checksum> when the file is already in the output, as on a rebuild)
        assert re.search(
            r'<script[^>]+src="(?:\.\./)*_static/mathjax/tex-mml-svg\.js(?:\?v=\w+)?"', html
        )
        assert (book_html / "_static" / "mathjax" / "tex-mml-svg.js").is_file()


def test_forward_chapter_shows_derivation_simulation_and_sliders(book_html):
    html = (book_html / "notebooks/03_forward_process.html").read_text()
    assert "forward_marginal_by_composition" in html  # the sympy derivation ran on the page
    assert r"\text{variance}" in html  # and displayed its result
    assert "max |z|" in html  # the simulation table
    assert html.count('class="dl-slider"') == 2  # the digits slider and the 2-D slider
    assert "Theorem" in html and "Exercise" in html
    assert "Ho <em>et al.</em>" in html or "Ho et al." in html  # citations resolved


# --- the extension's pieces, without a build -------------------------------------------------


def test_inline_scripts_are_written_once():
    """Sphinx 7.4 lists an inline script twice (filename None and ''); one copy is kept."""
    from sphinx.builders.html._assets import _JavaScript

    body = 'const THEBE_JS_URL = "x"'
    scripts = [
        _JavaScript("_static/a.js", priority=500),
        _JavaScript(None, priority=500, body=body),
        _JavaScript("", priority=500, body=body),
        _JavaScript("", priority=500, body="var other = 1"),
        _JavaScript("_static/a.js", priority=500),
    ]
    context = {"script_files": scripts}
    _offline_html().unique_scripts(None, "page", "page.html", context, None)
    assert context["script_files"] == [scripts[0], scripts[1], scripts[3]]


def test_html_leaves_out_the_colab_setup_cell_and_widget_outputs(caplog):
    """The first cell goes when it is the Colab setup cell; widget outputs always go, and one with a
    control in it (a live slider) is also a warning."""
    from docutils import nodes
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser
    from docutils.utils import new_document

    view = "application/vnd.jupyter.widget-view+json"

    def cell(source, *widget_ids):
        code = nodes.container(nb_element="cell_code_source")
        code += nodes.literal_block(source, source)
        box = nodes.container(nb_element="cell_code")
        box += code
        if widget_ids:
            out = nodes.container(nb_element="cell_code_output")
            for model in widget_ids:
                bundle = nodes.container(nb_element="mime_bundle")
                payload = f'<script type="{view}">{{"model_id": "{model}"}}</script>'
                bundle += nodes.container("", nodes.raw("", payload, format="html"), mime_type=view)
                bundle += nodes.container("", nodes.literal_block("HBox()", "HBox()"))
                bundle[-1]["mime_type"] = "text/plain"
                out += bundle
            box += out
        return box

    def page(*cells):
        doc = new_document("page", get_default_settings(Parser))
        doc += list(cells)
        return doc

    class App:
        class env:
            docname = "page"
            state = json.dumps(
                {
                    "state": {
                        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_p"]}},
                        "p": {"model_name": "FloatProgressModel", "state": {}},
                        "live": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_s"]}},
                        "s": {"model_name": "FloatSliderModel", "state": {}},
                    }
                }
            )
            nb_metadata = {
                "page": {
                    "js_files": {
                        "ipywidgets_state": (None, {"body": state}),
                        "ipywidgets_0": ("require.js", {}),
                        "other": ("x.js", {}),
                    }
                }
            }

    def sources(doc):
        return [n.astext() for n in doc.findall(nodes.literal_block)]

    ext = _offline_html()
    doc = page(cell("# Colab setup: installs\n%pip install x"), cell("fit()", "bar"))
    with caplog.at_level("WARNING"):
        ext.trim_notebook_page(App(), doc)
    assert sources(doc) == ["fit()"], "the setup cell and the progress bar are gone"
    assert not [
        n for n in doc.findall(nodes.container) if n.get("nb_element") == "cell_code_output"
    ]
    assert not caplog.records, "a display-only widget (a tqdm bar) is no warning"
    assert list(App.env.nb_metadata["page"]["js_files"]) == ["other"]

    App.env.nb_metadata["page"]["js_files"]["ipywidgets_state"] = (None, {"body": App.env.state})
    doc = page(cell("import torch"), cell("# Colab setup: stays", "live"))
    with caplog.at_level("WARNING"):
        ext.trim_notebook_page(App(), doc)
    assert sources(doc) == ["import torch", "# Colab setup: stays"]
    assert [r for r in caplog.records if "live ipywidget (FloatSliderModel)" in r.getMessage()]


def test_zip_site_holds_every_file_below_one_folder(tmp_path):
    site = tmp_path / "html"
    (site / "notebooks").mkdir(parents=True)
    (site / "index.html").write_text("<p>root</p>")
    (site / "notebooks" / "a.html").write_bytes(b"\x00binary\xff")
    (site / ".buildinfo").write_text("hidden")
    ext = _offline_html()
    first, second = tmp_path / "one" / "site.zip", tmp_path / "two" / "site.zip"
    first.parent.mkdir(), second.parent.mkdir()
    assert ext.zip_site(site, first) == 2
    ext.zip_site(site, second)
    assert first.read_bytes() == second.read_bytes(), "the same site must give the same zip"
    with zipfile.ZipFile(first) as zf:
        assert zf.namelist() == ["site/index.html", "site/notebooks/a.html"]
        assert zf.read("site/notebooks/a.html") == b"\x00binary\xff"
    with pytest.raises(FileNotFoundError, match="html_dir"):
        ext.zip_site(tmp_path / "one", tmp_path / "bad.zip")


# --- the zip --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unzipped(book_html, tmp_path_factory) -> Path:
    """The site's zip, unzipped into a temporary folder far from the build."""
    path = book_html.parent / ZIP_NAME
    assert path.is_file(), f"make book writes {path}; it is missing"
    root = tmp_path_factory.mktemp("reader")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        zf.extractall(root)
    top = ZIP_NAME.removesuffix(".zip")
    built = sorted(
        p.relative_to(book_html).as_posix()
        for p in book_html.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    assert sorted(n.removeprefix(f"{top}/") for n in names) == built, "the zip is not the site"
    size = path.stat().st_size
    REPORT_LINES.append(f"site zip: {path} {size / 2**20:.1f} MiB, {len(names)} files")
    return root / top


def test_zip_links_are_relative_and_resolve(unzipped):
    """Every link and asset of every page points inside the unzipped folder, by a relative path."""
    bad = []
    redirect = re.search(r'url=([^"]+)"', (unzipped / "index.html").read_text())
    assert redirect and (unzipped / redirect.group(1)).is_file(), "index.html leads nowhere"
    for page in [unzipped / rel for rel in _site_pages(unzipped)]:
        html = page.read_text(errors="replace")
        for url in re.findall(r'\b(?:href|src)="([^"]*)"', html):
            if re.match(r"(?:[a-z][a-z0-9+.-]*:|#)", url) and not url.startswith("file:"):
                continue  # a web link (not loaded), data:, mailto:, javascript:, or an anchor
            path = url.split("#", 1)[0].split("?", 1)[0]
            if not path:
                continue
            if url.startswith(("/", "file:")) or not (page.parent / path).exists():
                bad.append(f"{page.relative_to(unzipped)}: {url}")
    assert not bad, bad[:20]


# --- the browser ----------------------------------------------------------------------------


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    binary, driver = _chromium(), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip(
            "no Chromium/chromedriver installed (Debian: apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        # No name resolves: nothing could leave the machine even if a request slipped through.
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True})
    drv = webdriver.Chrome(service=Service(driver), options=options)
    drv.set_script_timeout(60)
    drv.execute_cdp_cmd("Network.enable", {})
    drv.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED_URLS})
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def report(book_html):
    """Per-page counts, written to <build>/browser_report.json and shown at the end of the run."""
    counts: dict[str, dict] = {}
    yield counts
    if not counts:
        return
    out = book_html.parent / "browser_report.json"
    out.write_text(json.dumps(counts, indent=1, sort_keys=True))
    REPORT_LINES.append(f"browser checks, file:// with the network blocked ({out}):")
    REPORT_LINES.append(
        f"  {'page':40s} {'equations':>9s} {'sliders':>7s} {'errors':>6s} {'requests':>8s}"
        f" {'remote':>6s} {'failed':>6s} {'s':>5s}"
    )
    for page, c in counts.items():
        REPORT_LINES.append(
            f"  {page:40s} {c['equations']:9d} {c['sliders']:7d} {c['console_errors']:6d}"
            f" {c['requests']:8d} {c['remote_requests']:6d} {c['failed_requests']:6d}"
            f" {c['seconds']:5.1f}"
        )


TYPESET_JS = """
const done = arguments[arguments.length - 1];
const mj = window.MathJax;
const count = () => {
  const maths = Array.from(document.querySelectorAll('.math'));
  const skip = 'pre, code, script, style, textarea, mjx-container, .dl-slider-data';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const raw = [];
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (node.parentElement && node.parentElement.closest(skip)) continue;
    const m = node.textContent.match(/\\\\[\\[(][^]{0,40}/);
    if (m) raw.push(m[0]);
  }
  return {
    mathjax: !!(mj && mj.startup && mj.startup.promise),
    math_elements: maths.length,
    untypeset: maths.filter(e => !e.querySelector('mjx-container')).length,
    equations: document.querySelectorAll('mjx-container').length,
    raw_tex: raw.slice(0, 5),
  };
};
if (mj && mj.startup && mj.startup.promise) {
  mj.startup.promise.then(() => done(count()), err => done({error: String(err)}));
} else {
  done(count());
}
"""


def _drive_sliders(browser) -> list[str]:
    """Move every static slider with the keyboard; return what did not follow."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    problems = []
    for k, root in enumerate(browser.find_elements(By.CSS_SELECTOR, "div.dl-slider")):
        data = json.loads(
            root.find_element(By.CSS_SELECTOR, "script.dl-slider-data").get_attribute("textContent")
        )
        slider = root.find_element(By.CSS_SELECTOR, "input[type=range]")
        img = root.find_element(By.TAG_NAME, "img")
        out = root.find_element(By.TAG_NAME, "output")
        start = int(slider.get_attribute("value"))
        if img.get_attribute("src") != data["srcs"][start]:
            problems.append(f"slider {k}: the first frame is not the slider's value")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
        steps = min(5, len(data["srcs"]) - 1 - start)
        before = img.get_attribute("src")
        slider.send_keys(*([Keys.ARROW_RIGHT] * steps))
        time.sleep(0.1)
        now = int(slider.get_attribute("value"))
        if now != start + steps:
            problems.append(f"slider {k}: at {now} after {steps} steps from {start}")
        if img.get_attribute("src") != data["srcs"][now] or out.text != data["texts"][now]:
            problems.append(f"slider {k}: the frame or label did not follow the slider")
        slider.send_keys(Keys.END)
        if img.get_attribute("src") != data["srcs"][-1] or out.text != data["texts"][-1]:
            problems.append(f"slider {k}: the frame did not follow to the end")
        if len(set(data["srcs"])) > 1 and img.get_attribute("src") == before and steps:
            problems.append(f"slider {k}: the picture never changed")
    return problems


def _network(perf_log) -> tuple[list[str], list[str]]:
    """(every requested URL, every failed request) from the performance log."""
    urls, failed, by_id = [], [], {}
    for entry in perf_log:
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if msg.get("method") == "Network.requestWillBeSent":
            url = params["request"]["url"]
            by_id[params.get("requestId")] = url
            urls.append(url)
        elif msg.get("method") == "Network.loadingFailed":
            url = by_id.get(params.get("requestId"), "?")
            why = params.get("blockedReason") or params.get("errorText")
            if not params.get("canceled"):
                failed.append(f"{url[:120]} ({why})")
    return urls, failed


def _screenshot(browser, path: Path) -> None:
    metrics = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    clip = {
        "x": 0,
        "y": 0,
        "width": size["width"],
        "height": min(size["height"], SCREENSHOT_MAX_HEIGHT),
        "scale": 1,
    }
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def check_page_offline(browser, url: str, screenshot: Path, expect_sliders: bool):
    """Open ``url`` with the network blocked and check it as the module docstring says.

    Returns the page's counts and the list of what is wrong with it (empty when all holds).
    """
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser"), browser.get_log("performance")  # drop the previous page's
    start = time.perf_counter()
    browser.get(url)
    WebDriverWait(browser, 60).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )
    math = browser.execute_async_script(TYPESET_JS)
    problems = [f"MathJax failed: {math['error']}"] if "error" in math else []
    problems += _drive_sliders(browser)
    sliders = len(browser.find_elements("css selector", "div.dl-slider"))
    time.sleep(0.3)  # let late requests (fonts, lazy images) reach the log
    _screenshot(browser, screenshot)
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    urls, failed = _network(browser.get_log("performance"))
    remote = [u for u in urls if not u.startswith(LOCAL_SCHEMES)]
    counts = {
        "equations": math.get("equations", 0),
        "math_elements": math.get("math_elements", 0),
        "sliders": sliders,
        "console_errors": len(errors),
        "requests": len(urls),
        "remote_requests": len(remote),
        "failed_requests": len(failed),
        "seconds": round(time.perf_counter() - start, 2),
    }
    if errors:
        problems.append(f"console errors: {errors[:5]}")
    if remote:
        problems.append(f"requests leaving the machine: {remote[:5]}")
    if failed:
        problems.append(f"failed requests: {failed[:5]}")
    if counts["math_elements"] and not (
        math.get("mathjax") and counts["equations"] > 0 and math.get("untypeset") == 0
    ):
        problems.append(f"equations not typeset: {math}")
    if math.get("raw_tex"):
        problems.append(f"raw TeX left in the text: {math['raw_tex']}")
    if expect_sliders and not sliders:
        problems.append("a chapter has at least one static slider; this page has none")
    return counts, problems


@pytest.mark.slow
@pytest.mark.parametrize("page", ALL_PAGES, ids=str)
def test_page_reads_offline_in_a_real_browser(book_html, browser, report, page):
    """Typeset equations, working sliders, no console error, nothing from the network."""
    shot = book_html.parent / "screenshots" / page.with_suffix(".png")
    counts, problems = check_page_offline(
        browser, (book_html / page).as_uri(), shot, expect_sliders=page in CHAPTER_PAGES
    )
    report[str(page)] = counts
    assert not problems, problems


@pytest.mark.slow
def test_unzipped_site_reads_offline_from_another_folder(unzipped, browser, report):
    """A reader unzips the site anywhere and opens index.html: it lands on the book's first page."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((unzipped / "index.html").as_uri())
    WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith("book/index.html"))
    page = Path("notebooks/03_forward_process.html")
    shot = unzipped.parent / "screenshots" / page.with_suffix(".png")
    counts, problems = check_page_offline(
        browser, (unzipped / page).as_uri(), shot, expect_sliders=True
    )
    report[f"zip: {page}"] = counts
    assert not problems, problems
