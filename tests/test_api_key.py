"""API_KEY: every route needs the key (one middleware, apis/auth.py) but those PUBLIC_ROUTES names.

A real server with the key set: the built-in routes (/info, /docs, /redoc, /openapi.json), the page and
its static files, and every data route answer 401 in their own shape without it; a browser asking for
HTML gets the key page; the cookie that page sets opens GET and HEAD requests only.
"""

import re
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from apis.auth import KEY_NAME, ApiKeyMiddleware
from tests.conftest import API_KEY, start_server

KEY = {"X-API-Key": API_KEY}
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
ENVELOPE = {"/count": "count", "/list": "list", "/ping": "ping", "/get": "get", "/add": "add", "/delete": "delete",
            "/search": "search", "/compare": "compare"}


@pytest.fixture(scope="module")
def key_server(tmp_path_factory, server_logs, cache_dir):
    missing = tmp_path_factory.mktemp("no-models")
    server = start_server(
        server_logs, "api-key", CAPABILITIES="stats,embed,search", SEARCH_MODELS="none", API_KEY=API_KEY,
        WORKERS_PER_DEVICE=1, CACHE_DIR=cache_dir, DATA_DIR=tmp_path_factory.mktemp("api-key-data"),
        MODEL_DIR=missing, CLIP_PRETRAINED=missing / "clip", DINO_MODEL=missing / "dino",
    )
    yield server.url
    server.stop()


def refused(response, path: str) -> str:
    """A 401 in the route's shape; returns its message."""
    assert response.status_code == 401, (path, response.status_code, response.text[:200])
    assert response.headers["content-type"].startswith("application/json"), (path, response.text[:200])
    assert response.headers["www-authenticate"].startswith("APIKey")
    body = response.json()
    if path in ENVELOPE:
        assert body["status"] == "fail" and body["method"] == ENVELOPE[path] and body["result"] == [], body
        message = body["error"][0]
    elif path.startswith("/find_similar"):
        assert body["error"] == body["detail"]
        message = body["error"]
    else:
        assert set(body) == {"detail"}, body
        message = body["detail"]
    assert message.startswith("missing or wrong X-API-Key header") and '"X-API-Key: <key>"' in message
    return message


GET_ROUTES = ["/info", "/docs", "/redoc", "/openapi.json", "/", "/static/app.js", "/static/style.css", "/model_stats",
              "/available_operations/", "/count", "/list", "/ping", f"/images/{'0' * 64}"]


@pytest.mark.parametrize("path", GET_ROUTES)
def test_every_get_route_needs_the_key(key_server, path):
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY + "x"}, {"X-API-Key": ""}):
        refused(httpx.get(f"{key_server}{path}", headers=headers, timeout=30), path)
    opened = httpx.get(f"{key_server}{path}", headers=KEY, timeout=30)
    assert opened.status_code == (404 if path.startswith("/images/") else 200), (path, opened.text[:200])


@pytest.mark.parametrize("method, path", [("POST", "/stats"), ("POST", "/embed"), ("POST", "/add"), ("POST", "/search"),
                                          ("POST", "/find_similar/"), ("POST", "/count"), ("DELETE", "/delete"),
                                          ("POST", "/analyze_image/"), ("GET", "/no/such/route")])
def test_every_other_route_needs_it_too_and_says_so_in_its_shape(key_server, method, path):
    refused(httpx.request(method, f"{key_server}{path}", timeout=30), path)


def test_health_is_public_by_default(key_server):
    response = httpx.get(f"{key_server}/health", timeout=30)
    assert response.status_code == 200 and response.json() == {"status": "Healthy"}


def test_a_browser_gets_a_self_contained_page_that_asks_for_the_key(key_server):
    for path in ("/", "/static/app.js", "/docs"):
        page = httpx.get(f"{key_server}{path}", headers=HTML, timeout=30)
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        text = page.text
        assert '<input id="key" type="password"' in text and "Enter it to go on." in text
        assert f'localStorage.setItem("{KEY_NAME}", key)' in text and "SameSite=Strict" in text and "Path=/" in text
        assert not re.search(r"""(src|href)=["'](?!data:)""", text)  # no asset but an inline empty icon
        assert "//" not in text  # no URL of any host
    wrong = httpx.get(f"{key_server}/", headers=HTML, cookies={KEY_NAME: "wrong"}, timeout=30)
    assert wrong.status_code == 401 and "was refused" in wrong.text
    # a script's fetch (Accept */*) and a POST get JSON, never the page
    refused(httpx.get(f"{key_server}/count", timeout=30), "/count")
    refused(httpx.post(f"{key_server}/stats", headers=HTML, timeout=30), "/stats")


def test_the_cookie_opens_get_and_head_requests_only(key_server):
    cookie = {KEY_NAME: quote(API_KEY)}
    with httpx.Client(base_url=key_server, cookies=cookie, timeout=30) as browser:
        page = browser.get("/", headers=HTML)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="file"' in page.text  # the real page now
        assert browser.get("/static/app.js").status_code == 200
        assert browser.get("/count").json() == {"status": "ok", "error": [], "method": "count", "result": [0]}
        assert browser.get("/model_stats").status_code == 200
        assert browser.head("/static/app.js").status_code == 200
        # a cookie can be sent by a form on another page (SameSite aside): it opens nothing that writes
        refused(browser.post("/count"), "/count")
        refused(browser.post("/find_similar/"), "/find_similar/")
        refused(browser.request("DELETE", "/delete", params={"filepath": "x"}), "/delete")
        refused(browser.post("/add", data={"filepath": "x"}), "/add")
        # the header wins over the cookie: a wrong header is refused whatever the cookie says
        refused(browser.get("/count", headers={"X-API-Key": "wrong"}), "/count")
    refused(httpx.get(f"{key_server}/count", cookies={KEY_NAME: "wrong"}, timeout=30), "/count")
    refused(httpx.get(f"{key_server}/count", cookies={"other-cookie": API_KEY}, timeout=30), "/count")


def test_401s_carry_a_request_id(key_server):
    response = httpx.get(f"{key_server}/info", headers={"X-Request-ID": "who-knocked"}, timeout=30)
    assert response.status_code == 401 and response.headers["x-request-id"] == "who-knocked"


def test_public_routes_names_the_routes_that_need_no_key(tmp_path_factory, server_logs, cache_dir, key_server):
    server = start_server(server_logs, "api-key-public", CAPABILITIES="stats", API_KEY=API_KEY, CACHE_DIR=cache_dir,
                          WORKERS_PER_DEVICE=1, PUBLIC_ROUTES="/health,/info")
    try:
        assert httpx.get(f"{server.url}/info", timeout=30).status_code == 200
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        refused(httpx.get(f"{server.url}/docs", timeout=30), "/docs")
        refused(httpx.post(f"{server.url}/stats", timeout=30), "/stats")
    finally:
        server.stop()


# ---------------------------------------------------------------- the middleware alone


def tiny(api_key: str | None, public=("/health",)):
    def ok(request):
        return JSONResponse({"key": request.headers.get("x-api-key")})

    routes = [Route(path, ok, methods=["GET", "POST", "HEAD"]) for path in ("/health", "/data", "/static/a.js")]
    app = Starlette(routes=routes, middleware=[Middleware(ApiKeyMiddleware, api_key=api_key, public_routes=public)])
    return TestClient(app)


def test_without_api_key_every_route_is_open():
    client = tiny(None)
    assert client.get("/data").status_code == 200 and client.post("/data").status_code == 200


def test_a_public_prefix_and_a_key_with_any_characters_in_the_cookie():
    key = "s3cret; key=with/odd \u00e9 chars"
    client = tiny(key, public=("/health", "/static/*"))
    assert client.get("/static/a.js").status_code == 200 and client.get("/health").status_code == 200
    assert client.get("/data").status_code == 401
    client.cookies.set(KEY_NAME, quote(key, safe=""))  # what encodeURIComponent makes of it
    opened = client.get("/data")
    # handed on as the header (whose bytes Starlette reads as latin-1)
    assert opened.status_code == 200 and opened.json() == {"key": key.encode().decode("latin-1")}
    assert client.post("/data").status_code == 401
