"""Background removal's routes beside its LitAPI, and the gallery records, answered in the HTTP process.

- The LitAPI's POST route (/remove-background) is registered again under POST /api/remove, GET /api/remove,
  POST /records and POST / (apis/background.py reads each): one queue and one pool of workers for every
  request that needs a segmenter.
- The records need no model: GET /records (newest first), GET, PATCH and DELETE /records/{id}, the images
  at /records/{id}/original and /records/{id}/processed, and the seed's PUT /update/{record_id} and
  DELETE /remove/{record_id} read the same store here (one library per HTTP process).
- Every record belongs to the user of the signed cookie (apis/identity.py). Another user's record is
  answered 404, as a missing one is; a change another site's page asks for is refused 403.
- GET /health answers {"status": "Healthy"} once every worker is ready (the seed's answer; LitServe's
  own said "ok"), 503 {"status": "not ready"} before.
"""

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from PIL import Image
from starlette.concurrency import run_in_threadpool

from apis.background import API_PATH, RECORDS_PATH, REMBG_PATH, SEED_PATH, record_json, record_name
from apis.base import share_route
from apis.originals import _thumbnail, thumbnail_side
from apis.request_body import load_json, shown
from errors import InputError
from store.base import StoreError

LIST_MAX = 1000  # records in one GET /records answer
_PRIVATE = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


def add_background_routes(app: FastAPI, settings, auth) -> None:
    """The worker route's other paths and the record routes, on app.state.library (server.py: one library
    per HTTP process)."""
    share_route(app, API_PATH, [(REMBG_PATH, "POST", True), (REMBG_PATH, "GET", True), (RECORDS_PATH, "POST", True),
                                (SEED_PATH, "POST", True)])
    _add_record_routes(app, settings, auth)


def _not_found(record_id: str) -> JSONResponse:
    # the same answer for a record that does not exist and one that is another user's
    return JSONResponse({"detail": f"no record {record_id[:64]!r}"}, status_code=404)


async def _library(request: Request):
    return await run_in_threadpool(request.app.state.library.get)


async def _store_call(request: Request, fn):
    """fn(library) in a thread (SQLite and Elasticsearch calls block); a StoreError is a 503 naming the store."""
    library = await _library(request)
    return await run_in_threadpool(fn, library)


async def _json_body(request: Request) -> dict:
    body = await request.body()
    if not body.strip():
        raise InputError(400, "the request body is empty: send JSON such as {\"name\": \"...\"}")
    value = load_json(body, "the request body", request.app.state.settings.max_json_depth)
    if not isinstance(value, dict):
        raise InputError(422, "the JSON body must be an object")
    return value


def _window(request: Request, user_limit: int) -> tuple[int, int]:
    def number(name, default, high):
        raw = request.query_params.get(name)
        if raw is None:
            return default
        if not raw.isascii() or not raw.isdigit() or int(raw) > high:
            raise InputError(422, f"{name} must be an integer from 0 to {high}, not {shown(raw)}")
        return int(raw)

    return number("offset", 0, 10**9), number("limit", min(user_limit, LIST_MAX), LIST_MAX)


def _media_type(path) -> str:
    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format, "application/octet-stream")
    except Exception:
        return "application/octet-stream"


def _add_record_routes(app: FastAPI, settings, auth) -> None:
    from apis.identity import current_user, same_site_only

    user_dep = Depends(current_user)
    guards = [Depends(auth)]
    writes = [Depends(auth), Depends(same_site_only)]

    def handled(fn):
        async def handler(request: Request, *args, **kwargs):
            try:
                return await fn(request, *args, **kwargs)
            except InputError as exc:
                return JSONResponse({"detail": exc.detail}, status_code=exc.status)
            except StoreError as exc:
                return JSONResponse({"detail": str(exc)}, status_code=503)
        handler.__name__ = fn.__name__
        handler.__signature__ = __import__("inspect").signature(fn)
        return handler

    @handled
    async def list_records(request: Request, user: str = user_dep):
        offset, limit = _window(request, settings.user_limit)

        def work(library):
            store = library.store
            return store.gallery_list(user, offset, limit), store.gallery_count(user)

        records, total = await _store_call(request, work)
        return JSONResponse({"records": [record_json(r) for r in records], "total": total,
                             "user_limit": settings.user_limit})

    @handled
    async def get_record(request: Request, record_id: str, user: str = user_dep):
        record = await _store_call(request, lambda library: library.store.gallery_get(user, record_id))
        return _not_found(record_id) if record is None else JSONResponse(record_json(record))

    @handled
    async def rename_record(request: Request, record_id: str, user: str = user_dep):
        name = record_name((await _json_body(request)).get("name"))
        return await _rename(request, user, record_id, name, lambda record: JSONResponse(record_json(record)),
                             lambda: _not_found(record_id))

    async def _rename(request, user, record_id, name, ok, missing):
        def work(library):
            if not library.store.gallery_rename(user, record_id, name):
                return None
            return library.store.gallery_get(user, record_id)

        record = await _store_call(request, work)
        return missing() if record is None else ok(record)

    @handled
    async def delete_record(request: Request, record_id: str, user: str = user_dep):
        record = await _store_call(request, lambda library: library.gallery_delete(user, record_id))
        if record is None:
            return _not_found(record_id)
        return JSONResponse({"id": record.id, "deleted": True})

    def image_route(which: str):
        @handled
        async def record_image(request: Request, record_id: str, user: str = user_dep, size: str | None = None):
            side = thumbnail_side(size)  # ?size=: a preview for the page's gallery, as /images/{sha256} gives

            def work(library):
                record = library.store.gallery_get(user, record_id)
                if record is None:
                    return None
                path = library.blobs.path(record.original_sha256 if which == "original" else record.processed_sha256)
                return path if path.is_file() else None

            path = await _store_call(request, work)
            if path is None:
                return _not_found(record_id)
            if side is not None:
                return await run_in_threadpool(_thumbnail, path, side, request.app.state.settings, _PRIVATE)
            media = "image/png" if which == "processed" else _media_type(path)
            return FileResponse(path, media_type=media, headers=_PRIVATE)

        record_image.__name__ = f"record_{which}"
        return record_image

    # the seed's routes: its answers {"message": ...}; another user's record is a 404 here too
    @handled
    async def seed_update(request: Request, record_id: str, user: str = user_dep):
        body = await _json_body(request)  # the path's id is the one used, whatever the body's record_id says
        try:
            name = record_name(body.get("record_name"))
        except InputError as exc:
            return JSONResponse({"message": "error while editing", "detail": exc.detail}, status_code=exc.status)
        return await _rename(request, user, record_id, name, lambda record: JSONResponse({"message": "success"}),
                             lambda: JSONResponse({"message": "error while editing",
                                                   "detail": f"no record {record_id[:64]!r}"}, status_code=404))

    @handled
    async def seed_remove(request: Request, record_id: str, user: str = user_dep):
        record = await _store_call(request, lambda library: library.gallery_delete(user, record_id))
        if record is None:
            return JSONResponse({"message": "error while deleting", "detail": f"no record {record_id[:64]!r}"},
                                status_code=404)
        return JSONResponse({"message": "success"})

    app.add_api_route(RECORDS_PATH, list_records, methods=["GET"], dependencies=guards)
    app.add_api_route(RECORDS_PATH + "/{record_id}", get_record, methods=["GET"], dependencies=guards)
    app.add_api_route(RECORDS_PATH + "/{record_id}", rename_record, methods=["PATCH"], dependencies=writes)
    app.add_api_route(RECORDS_PATH + "/{record_id}", delete_record, methods=["DELETE"], dependencies=writes)
    for which in ("original", "processed"):
        app.add_api_route(RECORDS_PATH + "/{record_id}/" + which, image_route(which), methods=["GET"],
                          dependencies=guards)
    app.add_api_route("/update/{record_id}", seed_update, methods=["PUT"], dependencies=writes)
    app.add_api_route("/remove/{record_id}", seed_remove, methods=["DELETE"], dependencies=writes)


def replace_health_route(app: FastAPI) -> None:
    """GET /health: {"status": "Healthy"} (200) once LitServe's own check passes, {"status": "not ready"}
    (503) before. LitServe's check (every worker set up, every LitAPI healthy) is kept; only its answer changes."""
    original = next(r for r in app.router.routes if isinstance(r, APIRoute) and r.path == "/health")
    app.router.routes.remove(original)
    check = original.endpoint

    async def health(request: Request) -> Response:
        answer = await check(request)
        if answer.status_code == 200:
            return JSONResponse({"status": "Healthy"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    app.add_api_route("/health", health, methods=["GET"], dependencies=original.dependencies)
