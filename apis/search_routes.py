"""The search capability's routes beside its LitAPI, answered in the HTTP process.

- The LitAPI's POST route (/add) is registered again under /search, /compare and /find_similar/: one
  queue and one pool of workers for every request that needs an image decoded or a model run.
- Cheap reads and the delete need no model: GET|POST /count, /list, /ping, /get and DELETE /delete open
  the same store here (one per HTTP process). GET /images/{sha256} serves a stored original.
- GET / serves the web page (web/index.html, its assets under /static) when it exists.
- Errors on match's paths answer in match's envelope, on /find_similar/ in PicTrace's {"error"} form,
  whatever raised them: a missing field, a wrong method (405), a bad API key, a queue timeout
  (apis/error_shapes.py, whose handlers server.py installs for the whole app).
"""

import io
import re
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from apis.match import MATCH_METHODS, envelope, fail, filepath_field, image_url, list_window
from apis.request_body import read_fields
from apis.search import SEARCH_PATHS
from errors import InputError
from images.decode import decode_image
from store.base import StoreError
from store.open import PerProcess

WEB = Path(__file__).resolve().parent.parent / "web"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SIDE = re.compile(r"^[0-9]{1,5}$")  # ASCII digits: str.isdigit() also takes "²", which int() refuses
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def add_search_routes(app: FastAPI, settings, auth) -> None:
    app.state.collection = PerProcess(settings)
    _share_worker_route(app)
    _add_store_routes(app, auth)
    _add_image_route(app, auth)
    _add_page(app)


def _share_worker_route(app: FastAPI) -> None:
    """Serve the LitAPI's route (LitServe registered it at /add) under the other paths it handles."""
    route = next(r for r in app.router.routes if isinstance(r, APIRoute) and r.path == "/add")
    for path in SEARCH_PATHS:
        if path != "/add":
            app.add_api_route(path, route.endpoint, methods=["POST"], dependencies=route.dependencies,
                              include_in_schema=path != "/find_similar")


# ---------------------------------------------------------------- store routes (no model needed)


async def _fields(request: Request) -> dict:
    """match's parameters: the query string, then the form (or JSON) fields of a request that has a body."""
    fields = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    if request.method != "GET" and (content_type.startswith(_FORMS) or (await request.body()).strip()):
        fields.update(await read_fields(request, raw_field="body"))
    return fields


def _store_route(app: FastAPI, path: str, methods: list[str], auth, work) -> None:
    """`work(collection, fields) -> result list`, run in a thread (SQLite and Elasticsearch calls block)."""
    method = MATCH_METHODS[path]

    async def handler(request: Request):
        try:
            fields = await _fields(request)
            collection = request.app.state.collection
            result = await run_in_threadpool(lambda: work(collection.get(), fields))
        except InputError as exc:
            return fail(method, exc.status, exc.detail)
        except StoreError as exc:
            return fail(method, 503, str(exc))
        return envelope(method, result)

    handler.__name__ = f"match_{method}"
    for verb in methods:  # one route per method: FastAPI would give a two-method route one operation id twice
        app.add_api_route(path, handler, methods=[verb], dependencies=[Depends(auth)])


def _filepath(fields: dict) -> str:
    if fields.get("filepath") is None:
        raise InputError(400, "missing field 'filepath' (form field or query parameter)")
    return filepath_field(fields)  # text, not empty, at most MAX_FILEPATH characters, valid UTF-8


def _get(collection, fields) -> list:
    record = collection.store.get(_filepath(fields))
    if record is None:
        return []
    return [{"filepath": record.path, "sha256": record.sha256, "metadata": record.metadata,
             "url": image_url(record.sha256)}]


def _delete(collection, fields) -> list:
    collection.delete(_filepath(fields))  # match answers [] whether or not the path was indexed
    return []


def _add_store_routes(app: FastAPI, auth) -> None:
    _store_route(app, "/ping", ["GET", "POST"], auth, lambda collection, fields: [])
    _store_route(app, "/count", ["GET", "POST"], auth, lambda collection, fields: [collection.store.count()])
    _store_route(app, "/list", ["GET", "POST"], auth,
                 lambda collection, fields: collection.store.list_paths(*list_window(fields)))
    _store_route(app, "/get", ["GET", "POST"], auth, _get)
    _store_route(app, "/delete", ["DELETE"], auth, _delete)


# ---------------------------------------------------------------- originals and the page


def _media_type(path: Path) -> str:
    """From the file's header alone (stored originals passed the decoder's format check on /add)."""
    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format, "application/octet-stream")
    except Exception:
        return "application/octet-stream"


THUMBNAIL_SIDES = (16, 1024)  # ?size= bounds: a grid needs ~256 px, never the 12-megapixel original


def _thumbnail(path: Path, side: int, settings) -> Response:
    """The stored original reduced to `side` px at most (JPEG draft decoding), as JPEG, or PNG with alpha."""
    image = decode_image(path.read_bytes(), settings.decode_limits, max_side=side).image
    out = io.BytesIO()
    if image.mode in ("RGBA", "LA", "PA"):
        image.save(out, format="PNG")
        return Response(out.getvalue(), media_type="image/png", headers=_IMMUTABLE)
    image.convert("RGB").save(out, format="JPEG", quality=85)
    return Response(out.getvalue(), media_type="image/jpeg", headers=_IMMUTABLE)


# content-addressed: the bytes behind an /images URL never change
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}


def _add_image_route(app: FastAPI, auth) -> None:
    def original(sha256: str, request: Request, size: str | None = None):
        if not _SHA256.fullmatch(sha256):
            return JSONResponse({"detail": "not a SHA-256: expected 64 lowercase hex digits"}, status_code=400)
        low, high = THUMBNAIL_SIDES
        if size is not None and not (_SIDE.fullmatch(size) and low <= int(size) <= high):
            return JSONResponse({"detail": f"size must be an integer from {low} to {high}"}, status_code=400)
        path = request.app.state.collection.get().blobs.path(sha256)
        if not path.is_file():
            return JSONResponse({"detail": f"no stored image with sha256 {sha256}"}, status_code=404)
        if size is not None:
            try:
                return _thumbnail(path, int(size), request.app.state.settings)
            except InputError as exc:  # stored before a limit was lowered, say
                return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        return FileResponse(path, media_type=_media_type(path), headers=_IMMUTABLE)

    app.add_api_route("/images/{sha256}", original, methods=["GET"], dependencies=[Depends(auth)])


def _add_page(app: FastAPI) -> None:
    """GET / is LitServe's "litserve running" until web/index.html exists; the page holds no data itself."""
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, APIRoute) and r.path == "/")]

    async def page():
        index = WEB / "index.html"
        if index.is_file():
            return FileResponse(index, media_type="text/html")
        return PlainTextResponse("litserve running")

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=WEB / "static", check_dir=False), name="static")
