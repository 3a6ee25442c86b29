"""The built HTML book: sizes, content, the Colab button, and the static sliders in a real browser."""

import json
import re
import shutil
import time

import pytest

from conftest import REPO, chapters

CHAPTER_PAGES = [md.relative_to(REPO).with_suffix(".html") for md in chapters()]
MAX_PAGE_BYTES = 5 * 1024 * 1024


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


def test_forward_chapter_shows_derivation_simulation_and_sliders(book_html):
    html = (book_html / "notebooks/03_forward_process.html").read_text()
    assert "forward_marginal_by_composition" in html  # the sympy derivation ran on the page
    assert r"\text{variance}" in html  # and displayed its result
    assert "max |z|" in html  # the simulation table
    assert html.count('class="dl-slider"') == 2  # the digits slider and the 2-D slider
    assert "Theorem" in html and "Exercise" in html
    assert "Ho <em>et al.</em>" in html or "Ho et al." in html  # citations resolved


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
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=options)
    yield drv
    drv.quit()


@pytest.mark.slow
@pytest.mark.parametrize("page", CHAPTER_PAGES, ids=lambda p: p.stem)
def test_static_sliders_work_in_a_real_browser(book_html, browser, page):
    """Drive every static slider with the keyboard and check that the picture and label follow."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((book_html / page).as_uri())
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )
    sliders = browser.find_elements(By.CSS_SELECTOR, "div.dl-slider")
    assert sliders, (
        f"{page} has no static slider (title {browser.title!r}, url {browser.current_url})"
    )
    for root in sliders:
        data = json.loads(
            root.find_element(By.CSS_SELECTOR, "script.dl-slider-data").get_attribute("textContent")
        )
        slider = root.find_element(By.CSS_SELECTOR, "input[type=range]")
        img = root.find_element(By.TAG_NAME, "img")
        out = root.find_element(By.TAG_NAME, "output")
        start = int(slider.get_attribute("value"))
        assert img.get_attribute("src") == data["srcs"][start]
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
        steps = min(5, len(data["srcs"]) - 1 - start)
        slider.send_keys(*([Keys.ARROW_RIGHT] * steps))
        time.sleep(0.1)
        now = int(slider.get_attribute("value"))
        assert now == start + steps
        assert img.get_attribute("src") == data["srcs"][now], "the frame did not follow the slider"
        assert out.text == data["texts"][now]
        slider.send_keys(Keys.END)
        assert img.get_attribute("src") == data["srcs"][-1]
        assert out.text == data["texts"][-1]
    errors = [
        e
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "dl-slider" in e["message"]
    ]
    assert not errors, errors
