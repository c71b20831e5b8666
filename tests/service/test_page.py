"""The page at `/`: how it is served (through httpx), and what it does in a real headless
browser (Debian's chromium and chromedriver, driven by selenium) against the service served by
uvicorn on a free port, with the tiny bundle and real Redis: search, history, recommend, errors,
mint. What the page shows is checked against the API's own answers to the same requests.

The browser test takes a screenshot after a recommendation: to GENREC_SCREENSHOT when set
(`GENREC_SCREENSHOT=docs/page.png` makes the one in the docs), else to its tmp folder.
Without chromium it is skipped, saying how to get it."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from genrec.item_text import item_title
from service.app import create_app
from service.settings import Settings

from .conftest import N_ITEMS, assert_error, serve

INSTALL = "apt-get install -y chromium chromium-driver"
STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


# --------------------------------------------------------------------------- served (httpx)


@pytest.mark.anyio
async def test_the_page_and_its_assets_are_served_from_the_package(make_settings):
    async with serve(make_settings()) as (_app, client):
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
        # Everything it loads comes from this service: relative links, no inline script.
        links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert sorted(links) == ["page/page.css", "page/page.js"]
        assert "<script>" not in page.text and "style=" not in page.text
        for name, media in (("page.css", "text/css"), ("page.js", "text/javascript")):
            asset = await client.get(f"/page/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"] == f"{media}; charset=utf-8"
            assert asset.content == (STATIC / name).read_bytes()
        for hostile in ("index.html", "../routes/page.py", "%2e%2e%2fapp.py", "page.py"):
            assert_error(await client.get(f"/page/{hostile}"), 404)
        assert "/" not in (await client.get("/openapi.json")).json()["paths"]


@pytest.mark.anyio
@pytest.mark.parametrize("access, status", [("open", 200), ("token", 200), ("off", 404)])
async def test_the_page_is_off_with_the_docs(make_settings, access, status):
    """With docs behind a token the page is still served (a browser sends no token when it opens
    a page, and the page holds no data); its API calls carry the token typed into it."""
    settings = make_settings(api_tokens=f"reader:{'r' * 32}:read", docs_access=access)
    async with serve(settings) as (_app, client):
        for path in ("/", "/page/page.js", "/page/page.css"):
            assert (await client.get(path)).status_code == status, path


# --------------------------------------------------------------------------- in a browser


def browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver), or the test is skipped saying how to get them."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(f"the browser test needs chromium and chromedriver on the PATH: {INSTALL}")
    return chromium, driver


@pytest.fixture
def browser():
    chromium, driver_path = browser_binaries()
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--force-device-scale-factor=1", "--hide-scrollbars",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-default-apps", "--disable-sync", "--disable-extensions", "--lang=en-US"):
        options.add_argument(argument)
    # The driver's path is given, so Selenium Manager never runs (nothing is downloaded).
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def live_service(settings: Settings):
    """The app served by uvicorn on a free port, in a thread: (its base URL, an httpx client).
    Uvicorn is handed a socket bound here (port 0): no other process can take the port between
    its pick and uvicorn's start, after the lifespan."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="page-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, timeout=20) as client:
            yield base_url, client
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def live(make_settings):
    with live_service(make_settings()) as served:
        yield served


class Page:
    """The page in the browser: typing and clicking as a user does, reading what it shows."""

    def __init__(self, driver, base_url: str):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.by = driver, By
        self._wait = lambda: WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(base_url + "/")

    def find(self, css: str):
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def wait(self, predicate, what: str):
        return self._wait().until(lambda _driver: predicate(), message=what)

    def fill(self, css: str, text: str) -> None:
        """Replaces a field's text by typing, as a user does (so the page sees input events)."""
        from selenium.webdriver.common.keys import Keys

        field = self.find(css)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        if text:
            field.send_keys(text)

    def rows(self, css: str) -> list[dict]:
        """Each shown item: its item id, title, meta line (or textual ID and score in the table)."""
        return self.driver.execute_script(
            """return [...document.querySelectorAll(arguments[0])].map(row => ({
                 item_id: row.dataset.itemId,
                 title: row.querySelector('.item-title').textContent,
                 meta: row.querySelector('.item-meta').textContent,
                 textual_id: row.querySelector('.tid') ? row.querySelector('.tid').textContent : null,
                 score: row.querySelector('.num') ? row.querySelector('.num').textContent : null}))""",
            css,
        )

    def search(self, query: str, expected_ids: list[str]) -> list[dict]:
        self.fill("#search", query)
        self.wait(lambda: [r["item_id"] for r in self.rows("#results li[data-item-id]")] == expected_ids,
                  f"search results for {query!r}")
        return self.rows("#results li[data-item-id]")

    def click_result(self, item_id: str) -> None:
        self.find(f'#results li[data-item-id="{item_id}"]').click()

    def history(self) -> list[str]:
        return [r["item_id"] for r in self.rows("#history li")]

    def recommend(self, k: int) -> None:
        self.fill("#k", str(k))
        self.find("#recommend-button").click()

    def error(self, css: str) -> str:
        self.wait(lambda: self.find(css).is_displayed(), f"an error in {css}")
        return self.find(css).text

    def screenshot(self, path: Path) -> None:
        """The whole page, not just the window (through the DevTools protocol)."""
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


def api_search(client: httpx.Client, query: str) -> list[dict]:
    response = client.get("/v1/items", params={"q": query, "limit": 20})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def api_recommend(client: httpx.Client, body: dict) -> list[dict]:
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def assert_shows(page: Page, client: httpx.Client, body: dict) -> list[dict]:
    """The table shows the API's answer to `body`: items, textual IDs and scores in order, and
    each item's title."""
    expected = api_recommend(client, body)
    page.wait(lambda: [r["item_id"] for r in page.rows("#recs tbody tr")] == [e["item_id"] for e in expected],
              f"the recommendations for {body}")
    page.wait(lambda: "…" not in [r["title"] for r in page.rows("#recs tbody tr")], "the titles of the items")
    shown = page.rows("#recs tbody tr")
    for row, item in zip(shown, expected, strict=True):
        assert row["textual_id"] == item["textual_id"] and row["score"] == f"{item['score']:.4f}", (row, item)
        assert row["title"] == item_title(client.get(f"/v1/items/{item['item_id']}").json()["text"])
    return shown


def test_search_history_recommend_and_mint_in_a_browser(live, browser, tmp_path):
    base_url, client = live
    page = Page(browser, base_url)

    # Search: what the API answers, in its order, with titles and textual IDs.
    expected = api_search(client, "red")
    assert len(expected) >= 3
    shown = page.search("red", [e["item_id"] for e in expected])
    assert [(r["title"], r["meta"], r["textual_id"]) for r in shown] == [
        (e["title"], f"{e['item_id']} · {e['textual_id']}", e["textual_id"]) for e in expected]

    # History: clicked items in order; one removed; a repeat moves to the end.
    first, second, third = (e["item_id"] for e in expected[:3])
    for item_id in (first, second, third):
        page.click_result(item_id)
    assert page.history() == [first, second, third]
    page.find(f'#history li[data-item-id="{second}"] button').click()
    assert page.history() == [first, third]
    page.click_result(first)
    page.click_result(second)
    assert page.history() == [third, first, second]

    # Recommend: the table is the API's answer for the same history and k; a recommended item
    # clicked joins the history.
    page.recommend(5)
    top = assert_shows(page, client, {"history": [third, first, second], "k": 5})[0]["item_id"]
    assert "5 items" in page.find("#model").text and "idgenrec" in page.find("#model").text
    page.find(f'#recs tbody tr[data-item-id="{top}"]').click()
    history = [third, first, second, top]
    assert page.history() == history

    # Errors show the API's error body: code, message, details.
    page.recommend(1000)
    error = page.error("#recs-error")
    assert "422 invalid_request" in error and "k: must be between 1 and 100" in error
    page.fill("#token", "not-the-token-" + "x" * 20)  # sent as a bearer token: refused
    page.fill("#search", "green")
    assert "401 unauthorized" in page.error("#search-error")
    assert browser.execute_script("return sessionStorage.getItem('genrec.token')").startswith("not-the-token-")
    page.fill("#token", "")  # emptied: no token sent, the search answers again
    page.search("green", [e["item_id"] for e in api_search(client, "green")])
    assert not page.find("#search-error").is_displayed()

    # Titles are shown as text, never as HTML.
    hostile = '<img src=x onerror="document.title=`owned`">Night Owl'
    page.fill("#mint-id", "page-2")
    page.fill("#mint-title-input", hostile)
    page.find("#mint button").click()
    page.wait(lambda: [r["title"] for r in page.rows("#results li[data-item-id]")] == [hostile],
              "the item with markup in its title, as text")
    assert browser.find_elements(page.by.CSS_SELECTOR, "#results img") == []
    assert browser.title == "genrec: try the recommender"

    # Mint: the textual ID the API holds, recommendable; found by search, then recommended.
    page.fill("#mint-id", "page-1")
    page.fill("#mint-title-input", "Fresh Night Story")
    page.fill("#mint-year", "2024")
    page.fill("#mint-genres", "comedy drama")
    page.find("#mint button").click()
    page.wait(lambda: "for page-1" in page.find("#mint-result").text, "the mint's result")
    record = client.get("/v1/items/page-1").json()
    assert record["metadata"] == {"title": "Fresh Night Story", "year": "2024", "genres": "comedy drama"}
    assert page.find("#minted-id").text == record["textual_id"]
    assert page.find("#minted-recommendable").text == "recommendable now"
    page.wait(lambda: [r["item_id"] for r in page.rows("#results li[data-item-id]")] == ["page-1"],
              "the minted item found by search")
    page.recommend(N_ITEMS)
    shown = assert_shows(page, client, {"history": history, "k": N_ITEMS})
    assert "page-1" in [r["item_id"] for r in shown]

    # The screenshot: a search, the history and its top 10.
    page.search("red", [e["item_id"] for e in expected])
    page.recommend(10)
    assert_shows(page, client, {"history": history, "k": 10})
    page.screenshot(Path(os.environ.get("GENREC_SCREENSHOT") or tmp_path / "page.png"))


def test_a_genre_filter_in_a_browser(live, browser):
    """Every item shown under a genre filter has the genre in its metadata, and the table is the
    API's answer to the same filtered request."""
    base_url, client = live
    page = Page(browser, base_url)
    expected = api_search(client, "the")
    page.search("the", [e["item_id"] for e in expected])
    history = [e["item_id"] for e in expected[:3]]
    for item_id in history:
        page.click_result(item_id)
    page.fill("#filter-genres", "Comedy")
    page.recommend(10)
    shown = assert_shows(page, client, {"history": history, "k": 10, "filter": {"genres": ["Comedy"]}})
    assert shown
    for row in shown:
        text = client.get(f"/v1/items/{row['item_id']}").json()["text"]
        genres = re.search(r"genres: ([^;]*)", text).group(1)
        assert "comedy" in genres.lower().split(), (row, text)
