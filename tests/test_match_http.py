"""The near-duplicate routes (/add, /search, /compare, /delete, /count, /list, /ping, /get) and the stored originals
(/images/{sha256}) over HTTP, on real server processes: once on the embedded SQLite store, once on
Elasticsearch (osmem-server, the in-memory stand-in; tests/osmem_server_main.py); then durability across a
kill -9, an unreachable cluster (503 naming it, recovery when it comes back) and start-up errors."""

import asyncio
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from PIL import Image

from settings import VARIABLES
from tests import photos
from tests.conftest import API_KEY, MAX_UPLOAD_BYTES, ROOT, free_port, server_env, start_server

ENVELOPE_KEYS = {"status", "error", "method", "result"}


def sha(name: str) -> str:
    return hashlib.sha256(photos.read(name)).hexdigest()


def transformed(name: str, op) -> bytes:
    """The photo turned or mirrored (as a PNG): the copy /search must still find."""
    image = Image.open(io.BytesIO(photos.read(name))).convert("RGB")
    return photos.png_bytes(image.transpose(op))


def add(url, filepath, name="chelsea", data=None, metadata=None, **fields):
    files = {"image": (f"{name}.png", data if data is not None else photos.read(name))}
    form = {"filepath": filepath, **fields}
    if metadata is not None:
        form["metadata"] = metadata
    return httpx.post(f"{url}/add", files=files, data=form, timeout=120)


def ok(response, method):
    """The response is the near-duplicate routes' success envelope, as JSON; returns its result."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {"status": "ok", "error": [], "method": method, "result": body["result"]}
    return body["result"]


def failed(response, method, status):
    """The response is the near-duplicate routes' failure envelope with this status; returns its one error message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) >= ENVELOPE_KEYS and body["status"] == "fail" and body["method"] == method
    assert body["result"] == [] and len(body["error"]) == 1 and body["error"][0]
    return body["error"][0]


def count(url) -> int:
    return ok(httpx.get(f"{url}/count", timeout=30), "count")[0]


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def match_server(request, tmp_path_factory, server_logs):
    data_dir = tmp_path_factory.mktemp(f"match-{request.param}")
    env = {"CAPABILITIES": "search", "DATA_DIR": data_dir, "SEARCH_MAX_BATCH_SIZE": 4, "SEARCH_BATCH_TIMEOUT": 0.05,
           "MAX_UPLOAD_BYTES": MAX_UPLOAD_BYTES}
    if request.param == "sqlite":
        server = start_server(server_logs, "match-sqlite", **env)
    else:
        from tests.store_backends import osmem_url

        server = start_server(
            server_logs, "match-elasticsearch", script="tests/osmem_server_main.py", STORE_BACKEND="elasticsearch",
            ELASTICSEARCH_URL=osmem_url(), ELASTICSEARCH_INDEX=f"match-{uuid.uuid4().hex[:8]}", **env,
        )
    yield server.url
    server.stop()


# ---------------------------------------------------------------- the endpoints and their envelope


def test_add_then_count_list_get_and_the_served_original(match_server):
    before = count(match_server)
    path = f"cats/{uuid.uuid4().hex}/chelsea.png"
    assert ok(add(match_server, path, metadata='{"who": "chelsea", "n": 1}'), "add") == []
    assert count(match_server) == before + 1
    assert ok(httpx.get(f"{match_server}/list", params={"offset": before, "limit": 5}, timeout=30), "list") == [path]
    [record] = ok(httpx.get(f"{match_server}/get", params={"filepath": path}, timeout=30), "get")
    digest = sha("chelsea")
    # match stores the bytes' sha256 in the metadata; /get also names the original's URL
    assert record == {"filepath": path, "sha256": digest, "metadata": {"who": "chelsea", "n": 1, "sha256": digest},
                      "url": f"/images/{digest}"}
    served = httpx.get(f"{match_server}{record['url']}", timeout=30)
    assert served.status_code == 200 and served.content == photos.read("chelsea")
    assert served.headers["content-type"] == "image/png"
    assert ok(httpx.get(f"{match_server}/get", params={"filepath": "never/added.png"}, timeout=30), "get") == []


def test_ping_count_and_list_answer_get_and_post(match_server):
    ok(add(match_server, f"any/{uuid.uuid4().hex}.png"), "add")
    for method in ("GET", "POST"):
        assert ok(httpx.request(method, f"{match_server}/ping", timeout=30), "ping") == []
        assert isinstance(ok(httpx.request(method, f"{match_server}/count", timeout=30), "count")[0], int)
        assert isinstance(ok(httpx.request(method, f"{match_server}/list", timeout=30), "list"), list)
    # POST /list takes form fields, as its existing clients send them
    assert len(ok(httpx.post(f"{match_server}/list", data={"limit": "1"}, timeout=30), "list")) == 1


def test_add_by_url_fetches_the_image_and_every_data_route_needs_the_api_key(
    tmp_path_factory, server_logs, photo_server
):
    """`url` instead of a file: fetched by the server (here from a loopback photo server it may reach).
    With API_KEY set, every route asks for X-API-Key, and says so in its own format."""
    server = start_server(server_logs, "match-url", CAPABILITIES="search", SEARCH_MODELS="none", API_KEY=API_KEY,
                          DATA_DIR=tmp_path_factory.mktemp("match-url"), FETCH_ALLOW_NETWORKS="127.0.0.1/32")
    key = {"X-API-Key": API_KEY}
    try:
        url = f"{photo_server.url}/photo/flower"
        added = httpx.post(f"{server.url}/add", data={"url": url, "filepath": "flower.jpg"}, headers=key, timeout=60)
        assert ok(added, "add") == []
        [record] = ok(httpx.get(f"{server.url}/get", params={"filepath": "flower.jpg"}, headers=key, timeout=30), "get")
        assert record["sha256"] == sha("flower")
        [hit] = ok(httpx.post(f"{server.url}/search", data={"url": url}, headers=key, timeout=60), "search")
        assert hit["filepath"] == "flower.jpg" and hit["score"] == 100.0
        error = failed(httpx.post(f"{server.url}/add", data={"url": f"{photo_server.url}/text", "filepath": "t"},
                                  headers=key, timeout=60), "add", 415)
        assert "not an image" in error

        for method, path in [("POST", "/add"), ("POST", "/search"), ("GET", "/count"), ("GET", "/list"),
                             ("GET", "/ping"), ("DELETE", "/delete")]:
            assert "X-API-Key" in failed(httpx.request(method, f"{server.url}{path}", timeout=30), path[1:], 401)
        assert httpx.get(f"{server.url}{record['url']}", timeout=30).status_code == 401
        assert httpx.get(f"{server.url}{record['url']}", headers=key, timeout=30).content == photos.read("flower")
        refusal = httpx.post(f"{server.url}/find_similar/", timeout=30).json()
        assert refusal["error"].startswith("missing or wrong X-API-Key header")
        assert httpx.get(f"{server.url}/", timeout=30).status_code == 401  # the page too (tests/test_api_key.py)
    finally:
        server.stop()


def test_adding_the_same_filepath_overwrites_and_drops_the_unreferenced_original(match_server):
    before = count(match_server)
    path = f"overwrite/{uuid.uuid4().hex}.png"
    unique = transformed("rocket", Image.Transpose.ROTATE_180)  # bytes no other test stores
    ok(add(match_server, path, data=unique, metadata='{"version": 1}'), "add")
    ok(add(match_server, path, "coffee", metadata='{"version": 2}'), "add")
    assert count(match_server) == before + 1
    [record] = ok(httpx.get(f"{match_server}/get", params={"filepath": path}, timeout=30), "get")
    assert record["sha256"] == sha("coffee") and record["metadata"]["version"] == 2
    old = hashlib.sha256(unique).hexdigest()
    assert httpx.get(f"{match_server}/images/{old}", timeout=30).status_code == 404
    assert httpx.get(f"{match_server}/images/{sha('coffee')}", timeout=30).status_code == 200


def test_search_finds_a_rotated_mirrored_copy_only_with_all_orientations(match_server):
    path = f"people/{uuid.uuid4().hex}/astronaut.png"
    ok(add(match_server, path, "astronaut", metadata='{"tag": "nasa"}'), "add")
    turned = transformed("astronaut", Image.Transpose.TRANSVERSE)  # rotated and mirrored: match missed these
    files = {"image": ("turned.png", turned)}

    found = ok(httpx.post(f"{match_server}/search", files=files, timeout=120), "search")  # all_orientations: true
    hits = [hit for hit in found if hit["filepath"] == path]
    assert len(hits) == 1
    digest = sha("astronaut")
    assert hits[0] == {"score": hits[0]["score"], "filepath": path, "metadata": {"tag": "nasa", "sha256": digest},
                       "url": f"/images/{digest}"}
    assert hits[0]["score"] > 95
    assert [hit["score"] for hit in found] == sorted((hit["score"] for hit in found), reverse=True)

    for off in ("false", "0", "no"):
        found = ok(httpx.post(f"{match_server}/search", files=files, data={"all_orientations": off}, timeout=60),
                   "search")
        assert path not in [hit["filepath"] for hit in found]
    # the upright photo itself scores 100.0 either way
    same = {"image": ("a.png", photos.read("astronaut"))}
    found = ok(httpx.post(f"{match_server}/search", files=same, data={"all_orientations": "false"}, timeout=60),
               "search")
    assert {"filepath": path, "score": 100.0} in [{k: h[k] for k in ("filepath", "score")} for h in found]


def test_compare_scores_identical_images_100_and_different_ones_lower(match_server):
    same = {"image1": ("a.png", photos.read("chelsea")), "image2": ("b.png", photos.read("chelsea"))}
    assert ok(httpx.post(f"{match_server}/compare", files=same, timeout=60), "compare") == [{"score": 100.0}]
    other = {"image1": ("a.png", photos.read("chelsea")), "image2": ("b.png", photos.read("coffee"))}
    [result] = ok(httpx.post(f"{match_server}/compare", files=other, timeout=60), "compare")
    assert set(result) == {"score"} and result["score"] < 55  # beyond the cutoff: a score of 55
    missing = {"image1": ("a.png", photos.read("chelsea"))}
    assert "url2" in failed(httpx.post(f"{match_server}/compare", files=missing, timeout=60), "compare", 400)


def test_list_pages_in_insertion_order_with_clamped_offset_and_limit(match_server):
    before = count(match_server)
    tag = uuid.uuid4().hex
    paths = [f"paging/{tag}/{i}.png" for i in range(5)]
    for path in paths:
        ok(add(match_server, path, "coffee"), "add")

    def page(**params):
        return ok(httpx.get(f"{match_server}/list", params=params, timeout=30), "list")

    assert page(offset=before, limit=2) == paths[:2]
    assert page(offset=before + 2, limit=2) == paths[2:4]
    assert page(offset=before + 4, limit=2) == paths[4:]
    assert page(offset=before + 5) == []
    assert page(offset=before, limit=0) == []
    assert page(offset=-5, limit=1) == page(offset=0, limit=1)  # clamped to 0, as existing clients expect
    assert len(page(limit=10**9)) == before + 5  # clamped to the maximum (1000), not refused
    assert failed(httpx.get(f"{match_server}/list", params={"offset": "ten"}, timeout=30), "list", 400)


def test_delete_removes_the_record_and_its_original_once_no_record_shares_it(match_server):
    tag = uuid.uuid4().hex
    unique = transformed("motorcycle_left", Image.Transpose.FLIP_TOP_BOTTOM)
    digest = hashlib.sha256(unique).hexdigest()
    ok(add(match_server, f"{tag}/a.png", data=unique), "add")
    ok(add(match_server, f"{tag}/b.png", data=unique), "add")  # same bytes: one original, two records
    before = count(match_server)

    # form field, as existing clients send it
    assert ok(httpx.request("DELETE", f"{match_server}/delete", data={"filepath": f"{tag}/a.png"}, timeout=30),
              "delete") == []
    assert count(match_server) == before - 1
    assert ok(httpx.get(f"{match_server}/get", params={"filepath": f"{tag}/a.png"}, timeout=30), "get") == []
    assert httpx.get(f"{match_server}/images/{digest}", timeout=30).status_code == 200  # b still needs it

    # query parameter
    ok(httpx.delete(f"{match_server}/delete", params={"filepath": f"{tag}/b.png"}, timeout=30), "delete")
    assert count(match_server) == before - 2
    assert httpx.get(f"{match_server}/images/{digest}", timeout=30).status_code == 404
    assert f"{tag}/b.png" not in ok(httpx.get(f"{match_server}/list", params={"limit": 1000}, timeout=30), "list")
    # deleting what is not there is not an error, as existing clients expect
    assert ok(httpx.delete(f"{match_server}/delete", params={"filepath": f"{tag}/b.png"}, timeout=30), "delete") == []


def test_find_similar_searches_what_add_indexed_or_says_the_backend_cannot(match_server, request):
    path = f"similar/{uuid.uuid4().hex}/coffee.png"
    ok(add(match_server, path, "coffee"), "add")
    response = httpx.post(f"{match_server}/find_similar/", files={"file": ("q.png", photos.read("coffee"))},
                          data={"limit": "1"}, timeout=120)
    if request.node.callspec.params["match_server"] == "sqlite":
        assert response.status_code == 200, response.text
        [top] = response.json()["similar_images"]
        assert top["sha256"] == sha("coffee") and top["similarity"] > 0.999
    else:  # osmem speaks OpenSearch's API: no Elasticsearch kNN, and the answer says so
        assert response.status_code == 503 and "kNN" in response.json()["error"]


def test_concurrent_adds_and_searches_are_all_answered_and_all_stored(match_server):
    """Requests that arrive together share a worker batch (one embedding forward); each keeps its own answer."""
    before = count(match_server)
    tag = uuid.uuid4().hex
    names = ["chelsea", "coffee", "astronaut", "rocket"] * 2

    async def run():
        async with httpx.AsyncClient(timeout=120) as client:
            adds = [client.post(f"{match_server}/add", files={"image": (f"{n}.png", photos.read(n))},
                                data={"filepath": f"{tag}/{i}-{n}"}) for i, n in enumerate(names)]
            bad = client.post(f"{match_server}/add", files={"image": ("x.png", b"not an image at all" * 8)},
                              data={"filepath": f"{tag}/bad"})
            return await asyncio.gather(*adds, bad)

    *answers, bad = asyncio.run(run())
    assert all(ok(answer, "add") == [] for answer in answers)
    failed(bad, "add", 415)  # its batch neighbours were not failed with it
    assert count(match_server) == before + len(names)
    found = ok(httpx.post(f"{match_server}/search", files={"image": ("r.jpg", photos.read("rocket"))}, timeout=60),
               "search")
    assert {f"{tag}/3-rocket", f"{tag}/7-rocket"} <= {hit["filepath"] for hit in found}


# ---------------------------------------------------------------- bad input


def test_bad_inputs_answer_4xx_envelopes_and_the_server_keeps_answering(match_server):
    before = count(match_server)
    chelsea = {"image": ("c.png", photos.read("chelsea"))}
    cases = [
        (httpx.post(f"{match_server}/add", files=chelsea, timeout=30), "add", 400, "filepath"),
        (httpx.post(f"{match_server}/add", files=chelsea, data={"filepath": "x", "metadata": "{not json"}, timeout=30),
         "add", 400, "metadata"),
        (httpx.post(f"{match_server}/add", files=chelsea, data={"filepath": "x", "metadata": "[1, 2]"}, timeout=30),
         "add", 400, "JSON object"),
        (httpx.post(f"{match_server}/add", files=chelsea, data={"filepath": "x", "metadata": '{"v": NaN}'}, timeout=30),
         "add", 400, "NaN"),
        (httpx.post(f"{match_server}/add", files={"image": ("t.txt", b"plain text, not a picture" * 10)},
                    data={"filepath": "x"}, timeout=30), "add", 415, "not an image"),
        (httpx.post(f"{match_server}/add", files={"image": ("e.png", b"")}, data={"filepath": "x"}, timeout=30),
         "add", 400, "empty"),
        (httpx.post(f"{match_server}/add", files={"image": ("t.jpg", photos.read("truncated_camera"))},
                    data={"filepath": "x"}, timeout=30), "add", 400, "image"),
        (httpx.post(f"{match_server}/add", data={"filepath": "x"}, timeout=30), "add", 400, "missing image"),
        (httpx.post(f"{match_server}/add", data={"filepath": "x", "url": "http://127.0.0.1:1/a.png"}, timeout=30),
         "add", 400, "127.0.0.1"),  # loopback URLs are refused (FETCH_ALLOW_NETWORKS is empty)
        (httpx.post(f"{match_server}/search", files=chelsea, data={"all_orientations": "maybe"}, timeout=30),
         "search", 400, "all_orientations"),
        (httpx.post(f"{match_server}/search", timeout=30), "search", 400, "empty"),
        (httpx.get(f"{match_server}/add", timeout=30), "add", 405, "Method Not Allowed"),
        (httpx.get(f"{match_server}/search", timeout=30), "search", 405, "Method Not Allowed"),
        (httpx.post(f"{match_server}/delete", data={"filepath": "x"}, timeout=30), "delete", 405, "Method Not Allowed"),
        (httpx.delete(f"{match_server}/delete", timeout=30), "delete", 400, "filepath"),
        (httpx.get(f"{match_server}/list", params={"limit": "1.5"}, timeout=30), "list", 400, "limit"),
        (httpx.get(f"{match_server}/get", timeout=30), "get", 400, "filepath"),
        # refused by the body-size guard before any route runs, still in the envelope
        (httpx.post(f"{match_server}/add", content=b"\xff" * (MAX_UPLOAD_BYTES + 1), headers={"Content-Type": "image/jpeg"},
                    timeout=30), "add", 413, "MAX_UPLOAD_BYTES"),
    ]
    for response, method, status, words in cases:
        assert words in failed(response, method, status), (method, status, response.text)
    missing = httpx.get(f"{match_server}/no/such/path", timeout=30)
    assert missing.status_code == 404 and missing.json()["status"] == "fail"
    assert httpx.get(f"{match_server}/images/not-a-hash", timeout=30).status_code == 400
    # nothing was half-stored, and the workers are all still there
    assert count(match_server) == before
    assert ok(httpx.get(f"{match_server}/ping", timeout=30), "ping") == []
    assert ok(add(match_server, f"after-bad/{uuid.uuid4().hex}.png"), "add") == []
    assert count(match_server) == before + 1


def test_served_original_reduced_on_request_for_previews(match_server):
    path = f"previews/{uuid.uuid4().hex}/astronaut.png"
    ok(add(match_server, path, name="astronaut"), "add")
    url = f"{match_server}/images/{sha('astronaut')}"
    small = httpx.get(url, params={"size": 128}, timeout=30)
    assert small.status_code == 200 and small.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(small.content)).size == (128, 128)  # astronaut is 512x512
    assert "immutable" in small.headers["cache-control"]
    for bad in ("0", "15", "1025", "big", "-5"):
        response = httpx.get(url, params={"size": bad}, timeout=30)
        assert response.status_code == 400 and "size" in response.json()["detail"], bad


# ---------------------------------------------------------------- durability and the backends' failures


def test_an_acknowledged_add_survives_kill_9_of_the_whole_server(tmp_path_factory, server_logs):
    data_dir = tmp_path_factory.mktemp("match-durable")
    env = {"CAPABILITIES": "search", "DATA_DIR": data_dir}
    server = start_server(server_logs, "match-durable-1", **env)
    try:
        ok(add(server.url, "durable/rocket.jpg", "rocket", metadata='{"k": "v"}'), "add")
        os.killpg(server.pid, signal.SIGKILL)  # HTTP process, workers, queue manager: no shutdown runs
        server.process.wait(timeout=30)
    finally:
        server.stop()
    server = start_server(server_logs, "match-durable-2", **env)
    try:
        assert count(server.url) == 1
        [record] = ok(httpx.get(f"{server.url}/get", params={"filepath": "durable/rocket.jpg"}, timeout=30), "get")
        assert record["sha256"] == sha("rocket") and record["metadata"]["k"] == "v"
        found = ok(httpx.post(f"{server.url}/search", files={"image": ("r.jpg", photos.read("rocket"))}, timeout=120),
                   "search")
        assert [hit["filepath"] for hit in found] == ["durable/rocket.jpg"] and found[0]["score"] == 100.0
        assert httpx.get(f"{server.url}{record['url']}", timeout=30).content == photos.read("rocket")
    finally:
        server.stop()


def test_unreachable_elasticsearch_answers_503_naming_it_and_recovers_when_it_comes_back(
    tmp_path_factory, server_logs
):
    from osmem_server import OsmemServer

    port = free_port()  # nothing listens there yet
    es_url = f"http://127.0.0.1:{port}"
    server = start_server(
        server_logs, "match-es-down", script="tests/osmem_server_main.py", CAPABILITIES="search",
        DATA_DIR=tmp_path_factory.mktemp("match-es-down"), STORE_BACKEND="elasticsearch", ELASTICSEARCH_URL=es_url,
        ELASTICSEARCH_TIMEOUT=2,
    )
    try:
        assert ok(httpx.get(f"{server.url}/ping", timeout=30), "ping") == []
        assert es_url in failed(httpx.get(f"{server.url}/count", timeout=30), "count", 503)
        assert es_url in failed(add(server.url, "down.png"), "add", 503)
        assert es_url in failed(httpx.post(f"{server.url}/search", files={"image": ("c.png", photos.read("chelsea"))},
                                           timeout=60), "search", 503)
        assert es_url in failed(httpx.delete(f"{server.url}/delete", params={"filepath": "down.png"}, timeout=30),
                                "delete", 503)
        similar = httpx.post(f"{server.url}/find_similar/", files={"file": ("c.png", photos.read("chelsea"))}, timeout=60)
        assert similar.status_code == 503 and es_url in similar.json()["error"]

        cluster = OsmemServer.start(addr=f"127.0.0.1:{port}")  # the cluster comes back, on the same address
        try:
            # as a client would: retry after a 503 (on a loaded machine the first call may still time out)
            deadline = time.monotonic() + 60
            response = add(server.url, "back.png")
            while response.status_code == 503 and time.monotonic() < deadline:
                assert es_url in response.json()["error"][0]
                time.sleep(1)
                response = add(server.url, "back.png")
            assert ok(response, "add") == []
            assert count(server.url) == 1
            [record] = ok(httpx.get(f"{server.url}/get", params={"filepath": "back.png"}, timeout=30), "get")
            assert record["sha256"] == sha("chelsea")
        finally:
            cluster.close()
    finally:
        server.stop()


@pytest.mark.parametrize("env, words", [
    ({"STORE_BACKEND": "elasticsearch"}, "ELASTICSEARCH_URL"),
    ({"STORE_BACKEND": "elasticsearch", "ELASTICSEARCH_URL": "localhost:9200"}, "ELASTICSEARCH_URL='localhost:9200'"),
    ({"SEARCH_MODELS": "resnet"}, "SEARCH_MODELS='resnet'"),
])
def test_bad_store_configuration_stops_start_up_with_exit_2(tmp_path, env, words):
    assert set(env) <= set(VARIABLES)
    result = subprocess.run(
        [sys.executable, "server.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=server_env(CAPABILITIES="search", DATA_DIR=tmp_path, PORT=free_port(), **env),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("configuration error: ") and words in result.stderr
