"""The explorer page in a real browser: headless Chromium driven by selenium.

The page is opened from ``file://`` (as a user opening a saved page would), with a collector for
script errors installed before any of its code runs; the test hovers a cell and reads the weight
the tooltip shows, steps heads with the buttons and the arrow keys, clicks a panel of the layers x
heads grid, pins a token in the text view, zooms into a 1,024-token matrix and exports a PNG,
checking after each step that the view reports (and draws) what it should. Screenshots are saved
under pytest's tmp path, or under ``$ATTNLENS_SCREENSHOTS`` when that is set.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and
selenium; without them the tests skip and say which is missing.
"""

from __future__ import annotations

import base64
import os
import shutil
import time

import numpy as np
import pytest

from attnlens import viz

from .figures import softmax

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

TOKENS = ["the", "cat", "sat", "on", "the", "warm", "mat", "because", "it", "was", "tired"]
N = len(TOKENS)
LAYERS, HEADS = 2, 3
ERRORS_COLLECTOR = """
window.__axErrors = [];
window.addEventListener('error', function (e) { window.__axErrors.push(String(e.message)); });
window.addEventListener('unhandledrejection', function (e) { window.__axErrors.push(String(e.reason)); });
"""


def _find(*names: str):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    binary = _find("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    driver_path = _find("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip(
            "no headless Chromium here (needs the Debian packages chromium and chromium-driver: "
            "apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    except WebDriverException as error:  # a browser that cannot start here is no browser
        pytest.skip(f"headless Chromium would not start: {error.msg}")
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ERRORS_COLLECTOR})
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path):
    folder = os.environ.get("ATTNLENS_SCREENSHOTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)

    def save(driver, name: str) -> str:
        path = os.path.join(folder, name)
        assert driver.save_screenshot(path)
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        return path

    return save


def _weights() -> np.ndarray:
    """[L, H, N, N] with a pattern per head the test can recognise: head h of layer l attends mostly
    to the token (l + h) positions back, so every head draws differently."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(LAYERS, HEADS, N, N))
    for layer in range(LAYERS):
        for head in range(HEADS):
            shift = layer + head
            for row in range(N):
                scores[layer, head, row, max(0, row - shift)] += 4.0
    return softmax(scores)


def _open(driver, path) -> None:
    driver.get("file://" + str(path))
    deadline = time.time() + 20
    while time.time() < deadline:
        if driver.execute_script("return document.getElementById('ax-root').dataset.ready") != "0":
            break
        time.sleep(0.05)
    root = driver.find_element(By.ID, "ax-root")
    assert root.get_attribute("data-ready") == "1", root.get_attribute("data-error")


def _state(driver) -> dict:
    root = driver.find_element(By.ID, "ax-root")
    return {key: root.get_attribute(f"data-{key}") for key in ("view", "layer", "head", "token")}


def _canvas_pixels(driver) -> str:
    return driver.execute_script("return document.querySelector('canvas.ax-canvas').toDataURL()")


def _eventually(check, timeout: float = 10.0):
    """``check()``'s first truthy value; the page draws on the next animation frame, which a busy
    machine can delay."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(0.05)


def _no_script_errors(driver) -> None:
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    assert driver.execute_script("return window.__axErrors") == []


def _point_at(driver, x: float, y: float) -> None:
    """Move the pointer to canvas coordinates (CSS pixels from its top-left corner)."""
    canvas = driver.find_element(By.CSS_SELECTOR, "canvas.ax-canvas")
    size = canvas.size
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(x - size["width"] / 2), int(y - size["height"] / 2)
    ).perform()


def test_views_respond_to_the_pointer_and_the_keys(browser, tmp_path, shots):
    weights = _weights()
    page = viz.explorer(weights, TOKENS, title="browser test: 2 layers x 3 heads")
    path = page.save(tmp_path / "page.html")
    _open(browser, path)
    assert _state(browser) == {"view": "head", "layer": "0", "head": "0", "token": ""}

    # hover a cell: the tooltip names the query and key tokens and shows the stored weight
    layout = browser.execute_script("return window.attnlensExplorer.layout()")
    row, col = 7, 5
    _point_at(browser, layout["left"] + (col + 0.5) * layout["cell"], layout["top"] + (row + 0.5) * layout["cell"])
    tooltip = browser.find_element(By.CSS_SELECTOR, ".ax-tooltip")
    assert tooltip.is_displayed()
    assert f"query {row}" in tooltip.text and "“because”" in tooltip.text
    assert f"key {col}" in tooltip.text and "“warm”" in tooltip.text
    stored = round(weights[0, 0, row, col] * 65535) / 65535
    shown = browser.find_element(By.CSS_SELECTOR, ".ax-tip-value").get_attribute("data-weight")
    assert shown == f"{stored:.6f}"
    shots(browser, "explorer_head.png")

    # the next-head button and the arrow keys step through heads and layers, and the drawing changes
    before = _canvas_pixels(browser)
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='next head']").click()
    assert _state(browser)["head"] == "1"
    assert _eventually(lambda: _canvas_pixels(browser) != before)
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    assert _state(browser)["head"] == "2"
    body.send_keys(Keys.ARROW_RIGHT)  # wraps around to the first head
    body.send_keys(Keys.ARROW_DOWN)
    assert (_state(browser)["layer"], _state(browser)["head"]) == ("1", "0")

    # the layers x heads grid: clicking a panel opens that layer and head
    browser.find_element(By.CSS_SELECTOR, "button[data-view='grid']").click()
    assert _state(browser)["view"] == "grid"
    panels = _eventually(lambda: browser.execute_script("return window.attnlensExplorer.layout().panels"))
    assert len(panels) == LAYERS * HEADS
    target = next(p for p in panels if (p["layer"], p["head"]) == (0, 2))
    shots(browser, "explorer_grid.png")
    _point_at(browser, target["x"] + target["w"] / 2, target["y"] + target["h"] / 2)
    ActionChains(browser).click().perform()
    assert _state(browser) == {"view": "head", "layer": "0", "head": "2", "token": ""}

    # the text view: clicking a token pins it; the key it attends to most is shaded darkest
    browser.find_element(By.CSS_SELECTOR, "button[data-view='text']").click()
    # (the view draws on the next animation frame: wait for its tokens)
    tokens = _eventually(lambda: browser.find_elements(By.CSS_SELECTOR, ".ax-tok[data-side='q'][data-i='6']"))
    assert tokens, "the text view drew no query token 6"
    tokens[0].click()
    assert _state(browser)["token"] == "q:6"
    # read by script each time: the redraw replaces the element, which selenium would report stale
    title = _eventually(
        lambda: browser.execute_script(
            "const t = document.querySelector(\".ax-box[data-role='attends-to'] .ax-box-title\");"
            " return t && t.textContent.startsWith('What \u201cmat\u201d (query 6) attends to') ? t.textContent : '';"
        )
    )
    assert title, "the attends-to box never named query 6"
    alphas = browser.execute_script(
        "return Array.from(document.querySelectorAll(\".ax-tok[data-side='k']\"))"
        ".map(s => { const m = s.style.backgroundColor.match(/rgba?\\(([^)]*)\\)/);"
        " if (!m) return 0; const p = m[1].split(','); return p.length > 3 ? Number(p[3]) : 1; })"
    )
    assert int(np.argmax(alphas)) == int(np.argmax(weights[0, 2, 6])) == 4  # two back from "mat"
    shots(browser, "explorer_text.png")

    # export the current view as a PNG
    url = browser.execute_script("return window.attnlensExplorer.exportDataUrl()")
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    _no_script_errors(browser)


def test_long_input_zooms_and_stays_responsive(browser, tmp_path, shots):
    n = 1024
    rng = np.random.default_rng(1)
    causal = np.tril(np.ones((n, n), dtype=bool))
    weights = softmax(rng.normal(size=(1, 2, n, n)).astype(np.float32) * 2 + 6 * np.eye(n, dtype=np.float32), causal)
    tokens = [f"w{i}" for i in range(n)]
    path = viz.explorer(weights, tokens, title="1,024 tokens", mask=causal).save(tmp_path / "long.html")
    started = time.time()
    _open(browser, path)
    assert time.time() - started < 10
    readout = browser.find_element(By.CSS_SELECTOR, ".ax-readout")
    assert "1024 queries × 1024 keys" in readout.text
    layout = browser.execute_script("return window.attnlensExplorer.layout()")
    assert layout["cell"] < 1  # the whole matrix at less than a pixel per cell
    # zoom with the wheel around a point on the diagonal, then hover a cell there
    x, y = layout["left"] + layout["plotW"] * 0.5, layout["top"] + layout["plotH"] * 0.5
    started = time.time()
    for _ in range(16):
        browser.execute_script(
            "const c = document.querySelector('canvas.ax-canvas'), r = c.getBoundingClientRect();"
            "c.dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: r.left + arguments[0],"
            " clientY: r.top + arguments[1], bubbles: true, cancelable: true}));"
            "window.attnlensExplorer.renderNow();",
            x,
            y,
        )
    assert time.time() - started < 5  # 16 redraws of a 1,024 x 1,024 view
    zoomed = browser.execute_script("return window.attnlensExplorer.layout()")
    assert zoomed["cell"] > 10 and zoomed["rows"] < 60
    assert "showing queries" in readout.text
    _point_at(browser, x, y)
    tip = browser.find_element(By.CSS_SELECTOR, ".ax-tooltip").text
    query, key = int(tip.split("query ")[1].split()[0]), int(tip.split("key ")[1].split()[0])
    assert abs(query - n // 2) < 30 and abs(key - n // 2) < 30
    shots(browser, "explorer_long_zoomed.png")
    _no_script_errors(browser)
