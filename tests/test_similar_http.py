"""POST /find_similar/ over HTTP on a real server: images indexed through /add with their real
MobileNetV2 embeddings (SQLite store), then queried by upload and by URL; its errors; a model that is
configured but cannot load; and the web page routes."""

import hashlib
import io
import re
import uuid

import httpx
import pytest
from PIL import Image

from apis.similar import MAX_LIMIT
from tests import photos
from tests.conftest import ROOT, start_server

CORPUS = ["chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "flower"]


@pytest.fixture(scope="module")
def similar_server(tmp_path_factory, server_logs):
    server = start_server(server_logs, "similar", CAPABILITIES="search", DATA_DIR=tmp_path_factory.mktemp("similar"),
                          FETCH_ALLOW_NETWORKS="127.0.0.1/32")
    for name in CORPUS:
        response = httpx.post(f"{server.url}/add", files={"image": (name, photos.read(name))},
                              data={"filepath": f"corpus/{name}.img", "metadata": f'{{"name": "{name}"}}'}, timeout=120)
        assert response.status_code == 200, response.text
    yield server.url
    server.stop()


def find(url, name=None, data=None, path="/find_similar/", **form):
    files = {"file": (f"{name}.png", data if data is not None else photos.read(name))}
    return httpx.post(f"{url}{path}", files=files, data=form, timeout=120)


def error_of(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == body["detail"]
    return body["error"]


def test_the_photo_itself_ranks_first_with_similarity_one_and_its_original_is_served(similar_server):
    response = find(similar_server, "chelsea")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"filename", "model", "similar_images", "total_indexed"}
    assert body["filename"] == "chelsea.png" and body["model"] == "mobilenet_v2"
    assert body["total_indexed"] == len(CORPUS)
    images = body["similar_images"]
    assert len(images) == 5  # the default limit: the top 5
    digest = hashlib.sha256(photos.read("chelsea")).hexdigest()
    assert images[0] == {"filepath": "corpus/chelsea.img", "filename": "chelsea.img", "similarity": images[0]["similarity"],
                         "sha256": digest, "metadata": {"name": "chelsea", "sha256": digest}, "url": f"/images/{digest}"}
    assert images[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    similarities = [image["similarity"] for image in images]
    assert similarities == sorted(similarities, reverse=True) and similarities[1] < 0.9
    served = httpx.get(f"{similar_server}{images[0]['url']}", timeout=30)
    assert served.status_code == 200 and served.content == photos.read("chelsea")


def test_a_resized_copy_still_finds_its_original_first(similar_server):
    image = Image.open(io.BytesIO(photos.read("astronaut"))).convert("RGB").resize((300, 300))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    top = find(similar_server, "small", data=out.getvalue()).json()["similar_images"][0]
    assert top["filepath"] == "corpus/astronaut.img" and top["similarity"] > 0.9


def test_limit_model_and_the_path_without_slash(similar_server):
    body = find(similar_server, "coffee", path="/find_similar", limit="2", model="mobilenet_v2").json()
    assert [image["filename"] for image in body["similar_images"]][:1] == ["coffee.img"]
    assert len(body["similar_images"]) == 2
    assert len(find(similar_server, "coffee", limit=str(MAX_LIMIT)).json()["similar_images"]) == len(CORPUS)


def test_image_url_is_fetched_and_echoed_as_the_filename(similar_server, photo_server):
    url = f"{photo_server.url}/photo/rocket"
    body = httpx.post(f"{similar_server}/find_similar/", data={"image_url": url}, timeout=120).json()
    assert body["filename"] == url and body["similar_images"][0]["filepath"] == "corpus/rocket.img"


def test_errors_are_4xx_with_error_and_detail_and_the_server_keeps_answering(similar_server):
    assert "clip_vit_b_32" in error_of(find(similar_server, "chelsea", model="clip_vit_b_32"), 422)
    assert "resnet50" in error_of(find(similar_server, "chelsea", model="resnet50"), 422)
    for limit in ("0", str(MAX_LIMIT + 1), "five"):
        assert "limit" in error_of(find(similar_server, "chelsea", limit=limit), 422)
    assert "not an image" in error_of(find(similar_server, "t", data=b"just some text" * 20), 415)
    assert "empty" in error_of(find(similar_server, "e", data=b""), 400)
    assert "missing image" in error_of(httpx.post(f"{similar_server}/find_similar/", data={"limit": "3"}, timeout=30), 400)
    assert error_of(httpx.get(f"{similar_server}/find_similar/", timeout=30), 405)
    assert find(similar_server, "chelsea").status_code == 200


def test_a_configured_model_that_cannot_load_answers_503_naming_it(tmp_path_factory, server_logs):
    server = start_server(server_logs, "similar-no-dino", CAPABILITIES="search", SEARCH_MODELS="dino_v2",
                          DATA_DIR=tmp_path_factory.mktemp("no-dino"), DINO_MODEL=str(ROOT / "no-such-dino-folder"))
    try:
        assert "dino_v2" in error_of(find(server.url, "chelsea", model="dino_v2"), 503)
        add = httpx.post(f"{server.url}/add", files={"image": ("c.png", photos.read("chelsea"))},
                         data={"filepath": "c.png"}, timeout=60)
        assert add.status_code == 503 and "dino_v2" in add.json()["error"][0]
        # the signature search (/search, /compare) works without the model; nothing was stored by the refused add
        assert httpx.get(f"{server.url}/count", timeout=30).json()["result"] == [0]
        compare = httpx.post(f"{server.url}/compare", timeout=60, files={
            "image1": ("a.png", photos.read("chelsea")), "image2": ("b.png", photos.read("chelsea"))})
        assert compare.json()["result"] == [{"score": 100.0}]
    finally:
        server.stop()


def test_the_web_page_and_its_assets_are_served(similar_server):
    page = ROOT / "web" / "index.html"
    response = httpx.get(f"{similar_server}/", timeout=30)
    assert response.status_code == 200
    if page.is_file():
        # the page's static/ URLs carry their version, ?v=<digest> (apis/page.py)
        assert response.headers["content-type"].startswith("text/html")
        assert re.sub(rb"\?v=[0-9a-f]{12}", b"", response.content) == page.read_bytes()
        for asset in (ROOT / "web" / "static").glob("*"):
            served = httpx.get(f"{similar_server}/static/{asset.name}", timeout=30)
            assert served.status_code == 200 and served.content == asset.read_bytes()
    else:
        assert response.text == "litserve running"
    assert httpx.get(f"{similar_server}/static/{uuid.uuid4().hex}.js", timeout=30).status_code == 404
