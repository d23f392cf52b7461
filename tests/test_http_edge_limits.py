"""Hostile input at the HTTP edge: every JSON and form input has limits, and breaking one is a 4xx in the
route's own error shape, never a 500 or plain text; an error nobody foresaw is a JSON 500 with a request id.

The limits run against a real server process serving every capability (its models mostly missing: every
check here happens in the HTTP process, before a request is queued). The catch-all and the request-id
middleware run on a tiny Starlette app that raises, since production code has no way to fail on purpose.
"""

import json
import logging
import re

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from apis.edge import RequestIdMiddleware, UnforeseenErrorMiddleware
from apis.request_body import MAX_FIELDS, MAX_NUMBER_LENGTH, integer_value, load_json
from apis.similar import _limit
from errors import InputError
from tests import photos
from tests.conftest import start_server

DEPTH = 32  # MAX_JSON_DEPTH's default
SHA = "0" * 64

# ---------------------------------------------------------------- the one JSON loader, alone


@pytest.mark.parametrize("text, words", [
    (b"[" * 100_000 + b"]" * 100_000, "MAX_JSON_DEPTH"),  # RecursionError inside json
    (b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}", "MAX_JSON_DEPTH"),  # parsed, then refused by the depth check
    ("[" * (DEPTH + 1) + "]" * (DEPTH + 1), "MAX_JSON_DEPTH"),
    (b'{"a": ' + b"9" * 5000 + b"}", f"limit is {MAX_NUMBER_LENGTH}"),  # int max str digits: ValueError in json
    (b'{"a": 0.' + b"1" * 200 + b"}", f"limit is {MAX_NUMBER_LENGTH}"),
    (b'{"a": 1e999}', "out of range"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": -Infinity}', "Infinity"),
    (b'{"a": "\\ud800"}', "surrogate"),
    (b'{"\\udfff": 1}', "surrogate"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
])
def test_load_json_refuses_with_a_400_naming_the_limit(text, words):
    with pytest.raises(InputError) as caught:
        load_json(text, "the request body", DEPTH)
    assert caught.value.status == 400 and words in caught.value.detail
    assert caught.value.detail.startswith("the request body ") and len(caught.value.detail) < 400


def test_load_json_takes_ordinary_json_up_to_the_limits():
    deepest = "[" * (DEPTH - 1) + '{"a": 1}' + "]" * (DEPTH - 1)
    assert load_json(deepest, "x", DEPTH) is not None
    value = load_json('{"n": -12, "f": 0.5, "big": ' + "9" * MAX_NUMBER_LENGTH + ', "t": "caf\\u00e9 \\ud83d\\ude00"}',
                      "x", DEPTH)
    assert value["n"] == -12 and value["f"] == 0.5 and value["big"] == int("9" * MAX_NUMBER_LENGTH)
    assert value["t"] == "café \U0001F600"  # a surrogate pair is one character, not a lone surrogate


@pytest.mark.parametrize("value", [{"a": 1}, [3], True, 2.5, 0.0, "\u00b2", "9" * 5000, "0", "101", " 7x", "+7",
                                   "1_0", "2.0"])
def test_find_similar_limit_takes_integers_from_1_to_100_alone(value):
    with pytest.raises(InputError) as caught:
        _limit(value)
    assert caught.value.status == 422 and "limit must be an integer from 1 to 100" in caught.value.detail
    assert len(caught.value.detail) < 200


@pytest.mark.parametrize("value, signs, expected", [
    (7, "", 7), (62.0, "", 62), (-3.0, "", -3), (" 42\u3000", "", 42), ("+5", "+", 5), ("-5", "+-", -5),
    ("9" * 20, "", int("9" * 20)), ("0" * 5000 + "7", "", 7), ("+0000184", "+", 184),
    ("+5", "", None), ("-5", "+", None), ("1_0", "", None), ("\u0663", "", None), ("\u00b2", "+-", None),
    ("9" * 21, "", None), (2.5, "", None), (1e20, "", None), (True, "", None), ("", "", None),
    (None, "", None), ([1], "", None), ({"a": 1}, "", None), ("0x10", "", None), ("4 2", "", None),
])
def test_integer_value_reads_json_integers_integral_numbers_and_ascii_digit_text_only(value, signs, expected):
    assert integer_value(value, signs=signs) == expected


def test_find_similar_limit_reads_json_integers_and_form_digits():
    # a JSON 62.0 is an integer to JSON Schema, so to the document and to the server
    assert [_limit(v) for v in (None, "", 3, "42", " 100 ", 62.0, "0" * 30 + "9")] == [5, 5, 3, 42, 100, 62, 9]


# ---------------------------------------------------------------- request ids and the catch-all, on a tiny app


def _raise(request):
    raise RuntimeError("a bug nobody foresaw")


def _fine(request):
    return JSONResponse({"ok": True})


def tiny_app():
    """Where server.py puts them: inside Starlette's own ServerErrorMiddleware, outside the router."""
    routes = [Route(path, _raise, methods=["GET", "POST"]) for path in ("/boom", "/add", "/find_similar/")]
    return Starlette(routes=[*routes, Route("/fine", _fine)],
                     middleware=[Middleware(RequestIdMiddleware), Middleware(UnforeseenErrorMiddleware)])


@pytest.fixture
def tiny():
    with TestClient(tiny_app(), raise_server_exceptions=True) as client:
        yield client


@pytest.mark.parametrize("path, shape", [("/boom", {"detail"}), ("/add", {"status", "error", "method", "result"}),
                                         ("/find_similar/", {"error", "detail"})])
def test_an_unforeseen_error_is_a_json_500_in_the_routes_shape_with_its_request_id_logged(tiny, caplog, path, shape):
    with caplog.at_level(logging.ERROR, logger="imageserver"):
        response = tiny.post(path)
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    body = response.json()
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id) and body["request_id"] == request_id
    assert set(body) == shape | {"request_id"}
    message = body["error"][0] if path == "/add" else body["detail"]
    assert request_id in message and "a bug nobody foresaw" not in json.dumps(body)  # no internals leak
    if path == "/add":
        assert body["status"] == "fail" and body["method"] == "add" and body["result"] == []
    [record] = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.exc_info and "a bug nobody foresaw" in str(record.exc_info[1])  # the traceback is logged


def test_request_id_is_the_clients_when_sane_and_new_otherwise(tiny):
    assert tiny.get("/fine", headers={"X-Request-ID": "abc.DEF_123-x"}).headers["x-request-id"] == "abc.DEF_123-x"
    assert tiny.get("/boom", headers={"X-Request-ID": "trace-7"}).json()["request_id"] == "trace-7"
    for insane in ("a" * 129, "has space", "semi;colon", "ünïcode", ""):
        given = tiny.get("/fine", headers={"X-Request-ID": insane.encode()})
        assert re.fullmatch(r"[0-9a-f]{32}", given.headers["x-request-id"]), insane
    first, second = tiny.get("/fine"), tiny.get("/fine")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert tiny.get("/nowhere").headers["x-request-id"]  # a 404 carries it too


# ---------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory, server_logs, cache_dir):
    """Every capability; models that are not in a wheel point nowhere (their workers start at once, unavailable)."""
    missing = tmp_path_factory.mktemp("no-models")
    server = start_server(
        server_logs, "edge-limits", CAPABILITIES="stats,analyze,embed,search", SEARCH_MODELS="none",
        WORKERS_PER_DEVICE=1, CACHE_DIR=cache_dir, DATA_DIR=tmp_path_factory.mktemp("edge-data"),
        MODEL_DIR=missing, CLIP_PRETRAINED=missing / "clip", DINO_MODEL=missing / "dino",
        CAPTION_MODEL=missing / "blip", PERSON_WEIGHTS=missing / "frcnn.pth",
    )
    yield server
    server.stop()


ENVELOPE = {"/add": "add", "/search": "search", "/compare": "compare", "/count": "count", "/list": "list",
            "/get": "get", "/ping": "ping", "/delete": "delete"}
SIMILAR = ("/find_similar/", "/find_similar")
# every route that reads a JSON body, with the method it takes one by
JSON_ROUTES = [("POST", p) for p in ("/stats", "/analyze", "/analyze/", "/analyze_image/", "/analyze_image_upload/",
                                     "/embed", "/add", "/search", "/compare", "/find_similar/", "/find_similar",
                                     "/count", "/list", "/get", "/ping")] + [("DELETE", "/delete")]


def message_of(response, path: str, status: int) -> str:
    """The error message, after checking the status and that the body is the route's own shape."""
    assert response.status_code == status, (path, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), (path, response.text[:200])
    body = response.json()
    if path in ENVELOPE:
        assert body["status"] == "fail" and body["method"] == ENVELOPE[path] and body["result"] == [], body
        return body["error"][0]
    if path in SIMILAR:
        assert body["error"] == body["detail"], body
        return body["error"]
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    return body["detail"]


def send_json(url: str, method: str, path: str, body: bytes, **kwargs):
    return httpx.request(method, f"{url}{path}", content=body, headers={"Content-Type": "application/json"},
                         timeout=60, **kwargs)


HOSTILE_BODIES = {
    "nested 100,000 deep": (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "MAX_JSON_DEPTH"),
    "nested 900 deep": (b'{"x": ' + b"{\"y\": " * 900 + b"1" + b"}" * 900 + b"}", "MAX_JSON_DEPTH"),
    "an integer of 5,000 digits": (b'{"x": ' + b"9" * 5000 + b"}", f"limit is {MAX_NUMBER_LENGTH}"),
    "NaN": (b'{"x": NaN}', "NaN"),
    "a lone surrogate": (b'{"filepath": "\\udc80", "content": "\\ud800"}', "surrogate"),
    "too many fields": (json.dumps({f"f{i}": i for i in range(MAX_FIELDS + 1)}).encode(), f"limit is {MAX_FIELDS}"),
}


@pytest.mark.parametrize("method, path", JSON_ROUTES, ids=[p for _, p in JSON_ROUTES])
def test_hostile_json_bodies_are_4xx_in_each_routes_shape_on_every_json_route(edge_server, method, path):
    for name, (body, words) in HOSTILE_BODIES.items():
        response = send_json(edge_server.url, method, path, body)
        status = 422 if name == "too many fields" else 400
        canonical = "/analyze" if path.startswith("/analyze") else path
        assert words in message_of(response, canonical, status), (name, path)
        assert response.headers["x-request-id"]


def form(url, path, data=None, files=None, method="POST", **kwargs):
    return httpx.request(method, f"{url}{path}", data=data, files=files, timeout=60, **kwargs)


def chelsea(field="image"):
    return {field: ("c.png", photos.read("chelsea"), "image/png")}


def deep(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


def tasks(count: int, **task) -> list:
    return [{"operation_id": f"t{i}", "type": "embed_mobilenet_v2", **task} for i in range(count)]


def base64_image() -> str:
    import base64

    return base64.b64encode(photos.read("chelsea")).decode()


# (name, request, path whose shape answers, status, words in the message)
FIELD_CASES = [
    ("/embed model is a list", lambda u: httpx.post(f"{u}/embed", json={"image_base64": "x", "model": ["a"]}),
     "/embed", 422, "model a JSON array"),
    ("/embed model is an object", lambda u: httpx.post(f"{u}/embed", json={"image_base64": "x", "model": {"a": 1}}),
     "/embed", 422, "model a JSON object"),
    ("/embed model is a number", lambda u: httpx.post(f"{u}/embed", json={"image_base64": "x", "model": 5}),
     "/embed", 422, "model 5"),
    ("/embed normalize is an object", lambda u: httpx.post(f"{u}/embed", json={"image_base64": "x", "normalize": {}}),
     "/embed", 422, "normalize"),
    ("/embed image is an object", lambda u: httpx.post(f"{u}/embed", json={"image_url": {"u": 1}}),
     "/embed", 422, "a JSON object"),
    ("/stats averaging_method is a list",
     lambda u: httpx.post(f"{u}/stats", json={"content": "x", "averaging_method": []}),
     "/stats", 422, "averaging_method"),
    ("/stats content is null", lambda u: httpx.post(f"{u}/stats", json={"content": None}), "/stats", 422, "None"),
    ("/analyze 65 tasks",
     lambda u: httpx.post(f"{u}/analyze", json={"image_base64": base64_image(), "tasks": tasks(65)}),
     "/analyze", 422, "MAX_TASKS"),
    ("/analyze operation_id of 300 characters", lambda u: httpx.post(f"{u}/analyze", json={
        "image_base64": base64_image(), "tasks": [{"operation_id": "o" * 300, "type": "embed_mobilenet_v2"}]}),
     "/analyze", 422, "limit is 256"),
    ("/analyze operation_id is an object", lambda u: httpx.post(f"{u}/analyze", json={
        "image_base64": base64_image(), "tasks": [{"operation_id": {"a": 1}, "type": "embed_mobilenet_v2"}]}),
     "/analyze", 422, "operation_id"),
    ("/analyze tasks is an object", lambda u: httpx.post(f"{u}/analyze", json={"image_base64": "x", "tasks": {"a": 1}}),
     "/analyze", 422, "tasks"),
    ("/analyze tasks_json nested 100,000 deep", lambda u: form(u, "/analyze_image_upload/", files=chelsea("image_file"),
                                                            data={"tasks_json": "[" * 100_000 + "]" * 100_000}),
     "/analyze", 400, "tasks_json is nested deeper than 32 levels (MAX_JSON_DEPTH)"),
    ("/analyze tasks_json with a 5,000-digit integer", lambda u: form(
        u, "/analyze_image_upload/", files=chelsea("image_file"), data={"tasks_json": "[" + "7" * 5000 + "]"}),
     "/analyze", 400, "tasks_json holds a number of 5000 characters"),
    ("/analyze tasks_json is a file", lambda u: form(u, "/analyze_image_upload/", files={
        **chelsea("image_file"), "tasks_json": ("t.json", b"[]", "application/json")}), "/analyze", 422, "tasks"),
    ("/add metadata nested 900 deep",
     lambda u: form(u, "/add", files=chelsea(), data={"filepath": "m", "metadata": deep(900)}),
     "/add", 400, "field 'metadata' is nested deeper than 32 levels (MAX_JSON_DEPTH)"),
    ("/add metadata with a 5,000-digit integer", lambda u: form(
        u, "/add", files=chelsea(), data={"filepath": "m", "metadata": '{"n": ' + "1" * 5000 + "}"}),
     "/add", 400, "number of 5000 characters"),
    ("/add metadata is a list in a JSON body",
     lambda u: httpx.post(f"{u}/add", json={"filepath": "m", "metadata": [1]}),
     "/add", 400, "JSON object, not a JSON array"),
    ("/add filepath is a list", lambda u: httpx.post(f"{u}/add", json={"filepath": ["a"], "image": "x"}),
     "/add", 400, "filepath"),
    ("/add filepath of 5,000 characters", lambda u: form(u, "/add", files=chelsea(), data={"filepath": "p" * 5000}),
     "/add", 400, "limit is 4096"),
    ("/search all_orientations is an object", lambda u: httpx.post(f"{u}/search", json={"all_orientations": {}}),
     "/search", 400, "all_orientations"),
    ("/compare url1 is a number", lambda u: httpx.post(f"{u}/compare", json={"url1": 5, "url2": "x"}),
     "/compare", 422, "not 5"),
    ("/find_similar/ model given twice",
     lambda u: form(u, "/find_similar/", files=chelsea("file"), data={"model": ["a", "b"]}),
     "/find_similar/", 422, "'model' is given more than once"),
    ("/find_similar/ model is a list (JSON)", lambda u: httpx.post(f"{u}/find_similar/", json={"model": ["a"]}),
     "/find_similar/", 422, "model a JSON array"),
    ("/find_similar/ model is an object (JSON)", lambda u: httpx.post(f"{u}/find_similar/", json={"model": {"a": 1}}),
     "/find_similar/", 422, "model a JSON object"),
    ("/list limit is a superscript two", lambda u: httpx.get(f"{u}/list", params={"limit": "\u00b2"}),
     "/list", 400, "limit"),
    ("/list offset of 5,000 digits", lambda u: httpx.get(f"{u}/list", params={"offset": "9" * 5000}),
     "/list", 400, "offset"),
    ("/list limit is a float (JSON)", lambda u: httpx.post(f"{u}/list", json={"limit": 2.5}), "/list", 400, "limit"),
    ("/get filepath is an object (JSON)", lambda u: httpx.post(f"{u}/get", json={"filepath": {"a": 1}}), "/get", 400,
     "filepath"),
    ("/get filepath of 5,000 characters", lambda u: httpx.get(f"{u}/get", params={"filepath": "p" * 5000}), "/get", 400,
     "limit is 4096"),
    ("/delete filepath is a number (JSON)", lambda u: httpx.request("DELETE", f"{u}/delete", json={"filepath": 7}),
     "/delete", 400, "filepath"),
    ("/images size is a superscript two", lambda u: httpx.get(f"{u}/images/{SHA}", params={"size": "\u00b2"}),
     "/images", 400, "size"),
    ("/images size of 5,000 digits", lambda u: httpx.get(f"{u}/images/{SHA}", params={"size": "9" * 5000}),
     "/images", 400, "size"),
    ("/images size is Arabic-Indic digits",
     lambda u: httpx.get(f"{u}/images/{SHA}", params={"size": "\u0662\u0665\u0666"}),
     "/images", 400, "size"),
    ("/images sha256 with a line break", lambda u: httpx.get(f"{u}/images/{SHA}%0A"), "/images", 400, "SHA-256"),
    ("multipart field given twice",
     lambda u: httpx.post(f"{u}/stats", files=[("content", ("a", b"x")), ("content", ("b", b"y"))]),
     "/stats", 422, "more than once"),
    ("multipart with too many files",
     lambda u: httpx.post(f"{u}/stats", files=[(f"f{i}", ("a", b"x")) for i in range(17)]),
     "/stats", 400, "files"),
    ("urlencoded with too many fields", lambda u: httpx.post(f"{u}/stats", data={f"f{i}": "x" for i in range(65)}),
     "/stats", 400, "fields"),
]


@pytest.mark.parametrize("name, call, path, status, words", FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_wrong_types_and_absurd_sizes_in_fields_are_4xx_in_the_routes_shape(edge_server, name, call, path, status,
                                                                             words):
    assert words in message_of(call(edge_server.url), path, status)


def test_the_server_survived_all_of_it_and_logged_no_500(edge_server):
    assert httpx.get(f"{edge_server.url}/health", timeout=10).json() == {"status": "Healthy"}
    assert httpx.get(f"{edge_server.url}/count", timeout=30).json()["status"] == "ok"
    log = edge_server.log_tail(2_000_000)
    for sign_of_a_500 in ("unforeseen error", "Exception in ASGI application", "Unhandled exception", " 500 "):
        assert sign_of_a_500 not in log, log[-3000:]


def test_error_shapes_and_request_ids_hold_in_every_configuration(server):
    """The main server serves /stats alone: its 404 and 405 are still JSON, and every answer carries its id."""
    missing = httpx.get(f"{server}/no/such/path", timeout=30)
    assert missing.status_code == 404 and missing.json()["detail"] == "Not Found" and missing.json()["status"] == "fail"
    wrong_method = httpx.get(f"{server}/stats", timeout=30)
    assert wrong_method.status_code == 405 and wrong_method.json() == {"detail": "Method Not Allowed"}
    deep_body = send_json(server, "POST", "/stats", b"[" * 100_000 + b"]" * 100_000)
    assert "MAX_JSON_DEPTH" in message_of(deep_body, "/stats", 400)
    echoed = httpx.get(f"{server}/health", headers={"X-Request-ID": "probe-1"}, timeout=30)
    assert echoed.headers["x-request-id"] == "probe-1"
    assert re.fullmatch(r"[0-9a-f]{32}", wrong_method.headers["x-request-id"])


@pytest.mark.parametrize("path", ["/stats", "/add", "/find_similar/", "/embed"])
def test_a_body_over_max_upload_bytes_is_413_in_the_routes_own_shape(edge_server, path):
    """The body-size guard answers from Content-Length, before anything is read, in each route's shape."""
    over = b"\xff" * (25 * 1024**2 + 1)  # the default MAX_UPLOAD_BYTES is 25 MiB
    response = httpx.post(f"{edge_server.url}{path}", content=over, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert response.status_code == 413
    body = response.json()
    if path in ENVELOPE:
        assert body["status"] == "fail" and body["method"] == ENVELOPE[path] and "MAX_UPLOAD_BYTES" in body["error"][0]
    elif path in SIMILAR:
        assert "MAX_UPLOAD_BYTES" in body["error"] and body["error"] == body["detail"]
    else:
        assert "MAX_UPLOAD_BYTES" in body["detail"]
