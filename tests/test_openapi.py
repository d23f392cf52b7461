"""The OpenAPI document against the app it describes, built in-process for several CAPABILITIES (no worker
starts): every route is documented and nothing else is, each operation is complete, 405s name every method
of the path, and /docs and /redoc load nothing from elsewhere. tests/test_schemathesis.py checks the answers.
"""

import re

import pytest
import schemathesis
from fastapi.routing import Mount
from fastapi.testclient import TestClient

from apis.analyze_routes import ALIASES
from apis.openapi_doc import digits_up_to
from settings import load_settings

CONFIGURATIONS = ["stats", "analyze,embed", "search", "background", "stats,analyze,embed,search,background"]
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
FILE_MOUNTS = {"/static", "/docs-assets"}  # folders of files, not operations


@pytest.fixture(scope="module", params=CONFIGURATIONS)
def app(request, tmp_path_factory):
    from server import build_server

    with pytest.MonkeyPatch.context() as env:
        for name, value in {"CAPABILITIES": request.param, "ALLOW_DOWNLOADS": "false",
                            "DATA_DIR": str(tmp_path_factory.mktemp("openapi")), "API_KEY": ""}.items():
            env.setenv(name, value)
        server = build_server(load_settings())
    yield server.app
    server.app.state.handoff.close()


def routes_of(app) -> set[tuple[str, str]]:
    """(path, method) of every route the app answers, found from the router itself."""
    found = set()
    for route in app.router.routes:
        if isinstance(route, Mount):
            assert route.path in FILE_MOUNTS, f"a mount nobody documented: {route.path}"
            continue
        for method in route.methods or ():
            if method != "HEAD":  # Starlette's automatic HEAD of a GET route
                found.add((route.path, method.lower()))
    if ("/analyze", "post") in found:  # rewritten to /analyze before routing (apis/analyze_routes.py)
        found |= {(alias, "post") for alias in ALIASES}
    return found


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method in HTTP_METHODS}


def test_every_route_is_documented_and_nothing_else(app):
    doc = app.openapi()
    assert routes_of(app) - documented(doc) == set(), "routes the document lacks"
    assert documented(doc) - routes_of(app) == set(), "operations the app does not have"


def test_operations_have_ids_summaries_tags_and_every_answer_a_schema(app):
    doc = app.openapi()
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    tags = {tag["name"] for tag in doc["tags"]}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert re.fullmatch(r"[a-z][A-Za-z]+", op["operationId"]), where
            assert op["summary"] and set(op["tags"]) <= tags, where
            assert "422" not in op["responses"] or "HTTPValidationError" not in str(op["responses"]["422"]), where
            for status, answer in op["responses"].items():
                if status not in ("302", "304"):
                    assert answer.get("content"), f"{where} {status} declares no body"
                if status.startswith(("4", "5")) and op["operationId"] != "getHealth":  # /health: its own shape
                    schema = str(answer["content"]["application/json"]["schema"])
                    assert re.search(r"Detail|MatchFail|SimilarError|GalleryMessage", schema), (where, status)


def test_the_document_loads_in_schemathesis_with_every_operation(app):
    doc = app.openapi()
    schema = schemathesis.openapi.from_dict(doc)
    assert len(list(schema.get_all_operations())) == len(documented(doc))


def test_the_near_duplicate_routes_document_their_envelope_and_image_routes_their_bodies(app):
    doc = app.openapi()
    for path in ("/add", "/search", "/compare", "/count", "/delete"):
        for op in doc["paths"].get(path, {}).values():
            assert "MatchFail" in str(op["responses"]["400"])
    for path, field in (("/stats", "content"), ("/embed", "image_file"), ("/add", "image"),
                        ("/find_similar/", "file"), ("/remove-background", "file")):
        if path in doc["paths"]:
            body = doc["paths"][path]["post"]["requestBody"]["content"]
            assert body["multipart/form-data"]["schema"]["properties"][field]["format"] == "binary"
            assert "application/json" in body


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)  # no lifespan: no worker starts, routing and middlewares are all there


def test_a_405_names_every_method_of_the_path(app, client):
    for path, item in app.openapi()["paths"].items():
        if path in ALIASES:
            continue
        allowed = {method.upper() for method in item}
        wrong = next(m for m in ("PUT", "PATCH", "DELETE", "POST") if m not in allowed)
        response = client.request(wrong, re.sub(r"\{[^}]+\}", "x" * 64, path))
        assert response.status_code == 405, (wrong, path, response.text)
        assert set(response.headers["allow"].split(", ")) - {"HEAD"} == allowed, (path, response.headers["allow"])


def test_docs_and_redoc_load_only_this_servers_assets(client):
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assets = re.findall(r"""(?:src|href)=["']([^"']+)""", response.text)
        assert assets and not [a for a in assets if "//" in a], assets
        for asset in assets:
            fetched = client.get(asset)
            assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
        assert "/openapi.json" in response.text



@pytest.mark.parametrize("high", [0, 9, 10, 40, 99, 100, 199, 255, 1000, 4096])
def test_digit_patterns_take_exactly_0_to_their_bound_with_leading_zeros(high):
    """A form field's text pattern and the server's range check agree (rembg's ae is 0-40, not any digits)."""
    pattern = re.compile(f"^{digits_up_to(high)}$")
    for n in range(0, high + 200):
        for text in (str(n), f"000{n}"):
            assert bool(pattern.match(text)) == (n <= high), text
    assert not pattern.match("") and not pattern.match("-1") and not pattern.match("1_0")
