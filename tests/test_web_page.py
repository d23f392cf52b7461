"""The search page at GET /, driven in Debian's chromium through Playwright against a real server (CAPABILITIES=search).

No browser is downloaded: the test uses the system's chromium (`make test` installs it with apt-get when it is
missing, or CHROMIUM=/path/to/it). Without one the tests fail, so a CI machine that lost its browser cannot pass
silently; SKIP_BROWSER_TESTS=1 is the one explicit way to skip them.
"""

import base64
import os
import shutil

import httpx
import pytest

from tests import photos
from tests.conftest import API_KEY, start_server

# indexed before the page is opened: filepath -> photo
INDEXED = {"cats/chelsea.png": "chelsea", "food/coffee.png": "coffee", "rocket.jpg": "rocket",
           "people/astronaut.png": "astronaut"}


def chromium_executable() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("SKIP_BROWSER_TESTS") == "1":
        pytest.skip("SKIP_BROWSER_TESTS=1: the page is not tested")
    executable = chromium_executable()
    if executable is None:
        pytest.fail("no chromium found: `make test` installs it (apt-get install chromium), or set CHROMIUM=/path; "
                    "SKIP_BROWSER_TESTS=1 skips the page tests", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium refuses its sandbox
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


def indexed_server(logs, data_dir, cache_dir, name: str, **env):
    server = start_server(logs, name, CAPABILITIES="search", WORKERS_PER_DEVICE=1, CACHE_DIR=cache_dir,
                          DATA_DIR=data_dir, **env)
    headers = {"X-API-Key": env["API_KEY"]} if "API_KEY" in env else {}
    for filepath, name in INDEXED.items():
        response = httpx.post(f"{server.url}/add", files={"image": (filepath, photos.read(name))},
                              data={"filepath": filepath}, headers=headers, timeout=120)
        assert response.status_code == 200 and response.json()["status"] == "ok", response.text
    return server


@pytest.fixture(scope="module")
def page_server(browser, tmp_path_factory, server_logs, cache_dir):
    server = indexed_server(server_logs, tmp_path_factory.mktemp("web-page-data"), cache_dir, "web-page")
    yield server.url
    server.stop()


def open_page(browser, url: str):
    """A fresh page on GET /, recording every request it makes and every script error it raises."""
    context = browser.new_context()
    opened = context.new_page()
    opened.requests, opened.script_errors = [], []
    opened.on("request", lambda request: opened.requests.append(request.url))
    opened.on("pageerror", lambda error: opened.script_errors.append(str(error)))
    opened.on("console", lambda m: m.type == "error" and opened.script_errors.append(m.text))
    opened.goto(f"{url}/")
    return context, opened


@pytest.fixture
def page(browser, page_server):
    context, opened = open_page(browser, page_server)
    yield opened
    context.close()


def first_match(page):
    page.wait_for_selector("#results li.match", timeout=60_000)
    return page.locator("#results li.match").first


def assert_thumbnail_loaded(page, match) -> None:
    image = match.locator("img").element_handle()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image, timeout=30_000)


def test_chosen_photo_that_is_indexed_comes_first_with_its_thumbnail_and_similarity(page, page_server):
    page.set_input_files("#file", photos.path("coffee"))
    match = first_match(page)
    assert match.get_attribute("data-filepath") == "food/coffee.png"
    assert float(match.get_attribute("data-similarity")) == pytest.approx(1.0, abs=1e-3)
    assert match.locator(".similarity").inner_text() == "similarity 1.000"
    assert match.locator(".filename").inner_text() == "coffee.png"
    assert_thumbnail_loaded(page, match)
    # the preview is the stored original reduced by the server (coffee is 600x400); the link is the original
    image = match.locator("img")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [256, 171]
    href = match.locator("a").first.get_attribute("href")
    assert httpx.get(httpx.URL(page_server).join(href)).content == photos.read("coffee")
    assert f"of {len(INDEXED)} indexed images" in page.inner_text("#status")
    assert page.locator("#results li.match").count() == len(INDEXED)
    assert page.is_hidden("#error") and page.script_errors == []


def test_dropped_photo_is_searched_like_a_chosen_one(page):
    encoded = base64.b64encode(photos.read("rocket")).decode()
    transfer = page.evaluate_handle("""data => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "launch.jpg", {type: "image/jpeg"}));
        return transfer;
    }""", encoded)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    match = first_match(page)
    assert match.get_attribute("data-filepath") == "rocket.jpg"
    assert_thumbnail_loaded(page, match)
    assert page.inner_text("#query-name") == "launch.jpg"


def test_server_error_is_shown_with_its_message(page, page_server):
    notes = b"a shopping list, not a photo\n" * 10
    refused = httpx.post(f"{page_server}/find_similar/", files={"file": ("notes.png", notes, "image/png")})
    assert refused.status_code >= 400
    expected = refused.json()

    page.set_input_files("#file", {"name": "notes.png", "mimeType": "image/png", "buffer": notes})
    page.wait_for_selector("#error", state="visible", timeout=30_000)
    shown = page.inner_text("#error")
    assert expected["error"] in shown and str(expected["detail"]) in shown
    assert page.locator("#results li").count() == 0


def test_page_loads_nothing_from_outside_its_server(page, page_server):
    page.set_input_files("#file", photos.path("chelsea"))
    assert_thumbnail_loaded(page, first_match(page))
    outside = [u for u in page.requests if not u.startswith((page_server + "/", "data:", "blob:"))]
    assert outside == []
    assert f"{page_server}/static/app.js" in page.requests and f"{page_server}/static/style.css" in page.requests
    assert page.script_errors == []


def test_with_an_api_key_the_page_asks_for_it_first_then_sends_it_for_search_and_thumbnails(browser, tmp_path_factory,
                                                                                           server_logs, cache_dir):
    """Every route needs the key, the page too: the browser first gets the server's key page (apis/auth.py),
    which keeps the key (local storage for the page's requests, a cookie for its loads) and reloads."""
    server = indexed_server(server_logs, tmp_path_factory.mktemp("web-page-key-data"), cache_dir, "web-page-key",
                            API_KEY=API_KEY)
    context, page = open_page(browser, server.url)
    try:
        page.wait_for_selector("#key-form")
        assert "API key" in page.inner_text("h1") and page.locator("#file").count() == 0
        page.fill("#key", "not-the-key")
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.wait_for_selector("#key-form")  # asked again, saying why
        assert "refused" in page.inner_text("#why")

        page.fill("#key", API_KEY)
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.wait_for_selector("#file", state="attached")  # the page itself, its script and style loaded by cookie
        assert page.input_value("#api-key") == API_KEY  # app.js found the key in local storage
        page.set_input_files("#file", photos.path("astronaut"))
        match = first_match(page)
        assert match.get_attribute("data-filepath") == "people/astronaut.png"
        assert page.is_hidden("#error")
        # the thumbnail was fetched with the header and shown from a blob
        assert_thumbnail_loaded(page, match)
        assert match.locator("img").get_attribute("src").startswith("blob:")

        # a wrong key typed in the page's own key box: the search is refused and says why
        page.fill("#api-key", "not-the-key")
        page.dispatch_event("#api-key", "change")  # searches the same image again, with that key
        page.wait_for_selector("#error", state="visible", timeout=30_000)
        assert "X-API-Key" in page.inner_text("#error")  # the server's 401 message
        page.fill("#api-key", API_KEY)
        page.dispatch_event("#api-key", "change")
        assert first_match(page).get_attribute("data-filepath") == "people/astronaut.png"
        assert page.is_hidden("#error")
        # the browser logs the refused requests itself (the key page's 401s, the refused search); nothing else
        assert all("status of 401" in error for error in page.script_errors), page.script_errors
    finally:
        context.close()
        server.stop()
