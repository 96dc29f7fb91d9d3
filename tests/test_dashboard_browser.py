"""The whole dashboard in a real browser: `streamlit run dashboard/app.py` on a free loopback port over a small
synthetic store, driven by Playwright with Debian's chromium (never `playwright install`).

Covers: every page opens from the sidebar navigation without an exception, a shared filter change reruns a page and
lands in the URL, PNG and SVG exports download as valid files of the expected size, a shared URL restores the
state. Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dashboard import state
from dashboard.style import WIDTHS
from engine.metrics.synth_predictions import write_synthetic_store

CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium"), pytest.mark.slow]
playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# sidebar link -> (url path, a heading the page shows)
PAGES = {
    "Overview": ("overview", None), "Subgroups": ("subgroups", None), "Pathologies": ("pathologies", None),
    "Ensembles": ("ensembles", "Foundation model ensembles"),
    "Pre-training": ("pretraining", "Amount of medical pre-training"),
    "Fine-tuning": ("finetuning", "Linear probing and end-to-end fine-tuning"),
    "Thresholds": ("thresholds", "Threshold metrics"), "Cohort": ("cohort", None), "Data": ("data", None),
}
TIMEOUT_MS = 180_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("browser") / "store"
    write_synthetic_store(store, n_images=3000)
    port = _free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / "streamlit-server.log").open("w")
    command = [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless=true",
               "--server.address=127.0.0.1", f"--server.port={port}", "--browser.gatherUsageStats=false",
               "--server.fileWatcherType=none"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "FMFAIR_STORE": str(store)}, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    else:
        process.terminate()
        pytest.fail(f"streamlit did not start; see {ARTIFACTS / 'streamlit-server.log'}")
    yield url
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 3000}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    yield tab
    context.close()


def settle(page) -> None:
    """Wait until the script run is over (Streamlit marks the app root with its script state)."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=TIMEOUT_MS)
    page.wait_for_timeout(300)


def open_page(page, base: str, link: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=link).click()
    path, heading = PAGES[link]
    if link != "Overview":  # the default page keeps the bare URL
        page.wait_for_function("path => window.location.pathname.endsWith('/' + path)", arg=path)
    if heading:
        page.get_by_role("heading", name=heading).wait_for()
    settle(page)
    assert page.get_by_test_id("stException").count() == 0, f"{link}: {page.get_by_test_id('stException').first}"


def test_every_page_opens_from_the_sidebar(server, page):
    page.goto(server)
    settle(page)
    for link, (path, heading) in PAGES.items():
        open_page(page, server, link)
        if heading:  # the study pages draw at least one chart
            assert page.locator(".js-plotly-plot").count() >= 1, link
        page.screenshot(path=str(ARTIFACTS / f"{path}.png"))


def _choose(page, box, option: str) -> None:
    """Open a selectbox and pick ``option``; a click that lands during a rerun may not open it, so retry."""
    for _ in range(5):
        box.locator("input").click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=5_000)
            settle(page)
            return
        except playwright.TimeoutError:
            page.keyboard.press("Escape")
            settle(page)
    pytest.fail(f"option {option!r} never appeared")


def _select(page, label: str, option: str) -> None:
    _choose(page, page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text=label), option)


def test_a_filter_change_reruns_the_page_and_lands_in_the_url(server, page):
    page.goto(f"{server}/pretraining")
    settle(page)
    assert page.get_by_text("Pathology filter").count() == 0
    box = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="Pathology")
    assert "Edema" not in box.inner_html()
    _select(page, "Pathology", "Edema")
    assert "Edema" in box.inner_html()
    page.get_by_text("Pathology filter: Edema only").wait_for()
    settle(page)
    assert "path=Edema" in page.url
    page.screenshot(path=str(ARTIFACTS / "pretraining-edema.png"))


def _download(page, expander, label: str) -> bytes:
    with page.expect_download() as info:
        expander.get_by_test_id("stDownloadButton").filter(has_text=label).locator("button").click()
    return Path(info.value.path()).read_bytes()


def test_png_and_svg_exports_are_valid_files_of_the_expected_size(server, page):
    from PIL import Image

    page.goto(f"{server}/finetuning")
    settle(page)
    expander = page.get_by_test_id("stExpander").filter(has_text="Export this figure (table6_finetuning)")
    expander.locator("summary").click()
    _choose(page, expander.get_by_test_id("stSelectbox").filter(has_text="DPI"), "600")
    png = Image.open(io.BytesIO(_download(page, expander, "PNG")))
    png.load()
    scale = 600 / 96  # single column: WIDTHS["single"] px wide, 0.7 as high (dashboard/export.py), times dpi / 96
    assert png.format == "PNG"
    assert png.size == (round(WIDTHS["single"] * scale), round(int(WIDTHS["single"] * 0.7) * scale))
    svg = _download(page, expander, "SVG")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and float(root.get("width")) == WIDTHS["single"]
    assert "MoCov3" in svg.decode() and "Mean AUC" in svg.decode()


def test_a_shared_url_restores_the_state(server, page):
    mine = state.encode_ensemble("pair", "mean-logit", ["moco-v3-standard", "remedis-standard"])
    query = urllib.parse.urlencode({state.ATTRIBUTES: "race", state.PATHOLOGY: "Edema",
                                    state.CUSTOM_ENSEMBLES: mine})
    page.goto(f"{server}/ensembles?{query}")
    page.get_by_role("heading", name="Foundation model ensembles").wait_for()
    settle(page)
    sidebar = page.get_by_test_id("stSidebar")
    attributes = sidebar.get_by_test_id("stMultiSelect").filter(has_text="Attributes")
    chips = attributes.inner_text().split("\n")[1:]  # the label, then one line per chosen value
    assert [c for c in chips if c.strip()] == ["race"]
    pathology = sidebar.get_by_test_id("stSelectbox").filter(has_text="Pathology")
    assert "Edema" in pathology.inner_html()  # the chosen value is drawn inside the box, not as its text
    page.get_by_text("Pathology filter: Edema only").wait_for()
    assert "your ensembles" in page.get_by_test_id("stTable").first.inner_text()  # the URL's ensemble is scored
    page.screenshot(path=str(ARTIFACTS / "ensembles-shared-url.png"))
