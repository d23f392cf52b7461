"""The search capability's routes beside its LitAPI, answered in the HTTP process.

- The LitAPI's POST route (/add) is registered again under /search, /compare and /find_similar/: one
  queue and one pool of workers for every request that needs an image decoded or a model run.
- Cheap reads and the delete need no model: GET|POST /count, /list, /ping, /get and DELETE /delete open
  the same store here (one per HTTP process). Originals are served by apis/originals.py.
- Errors on the near-duplicate paths answer in their envelope {status, error, method, result}, on
  /find_similar/ in its error shape {"error", "detail"}, whatever raised them: a missing field, a wrong
  method (405), a bad API key, a queue timeout
  (apis/error_shapes.py, whose handlers server.py installs for the whole app).
"""

from fastapi import Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from apis.base import share_route
from apis.match import MATCH_METHODS, envelope, fail, filepath_field, image_url, list_window
from apis.request_body import read_fields
from apis.search import SEARCH_PATHS
from errors import InputError
from store.base import StoreError

_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def add_search_routes(app: FastAPI, settings, auth) -> None:
    """The worker route's other paths (LitServe registered it at /add) and the store routes, on
    app.state.library (server.py: one library per HTTP process)."""
    share_route(app, "/add", [(path, "POST", path != "/find_similar") for path in SEARCH_PATHS if path != "/add"])
    _add_store_routes(app, auth)


async def _fields(request: Request) -> dict:
    """The near-duplicate routes' fields: the query string, then the form (or JSON) fields of a request with a body."""
    fields = dict(request.query_params)
    content_type = request.headers.get("content-type", "")
    if request.method != "GET" and (content_type.startswith(_FORMS) or (await request.body()).strip()):
        fields.update(await read_fields(request, raw_field="body"))
    return fields


def _store_route(app: FastAPI, path: str, methods: list[str], auth, work) -> None:
    """`work(library, fields) -> result list`, run in a thread (SQLite and Elasticsearch calls block)."""
    method = MATCH_METHODS[path]

    async def handler(request: Request):
        try:
            fields = await _fields(request)
            library = request.app.state.library
            result = await run_in_threadpool(lambda: work(library.get(), fields))
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


def _get(library, fields) -> list:
    record = library.store.get(_filepath(fields))
    if record is None:
        return []
    return [{"filepath": record.path, "sha256": record.sha256, "metadata": record.metadata,
             "url": image_url(record.sha256)}]


def _delete(library, fields) -> list:
    library.delete(_filepath(fields))  # match answers [] whether or not the path was indexed
    return []


def _add_store_routes(app: FastAPI, auth) -> None:
    _store_route(app, "/ping", ["GET", "POST"], auth, lambda library, fields: [])
    _store_route(app, "/count", ["GET", "POST"], auth, lambda library, fields: [library.store.count()])
    _store_route(app, "/list", ["GET", "POST"], auth,
                 lambda library, fields: library.store.list_paths(*list_window(fields)))
    _store_route(app, "/get", ["GET", "POST"], auth, _get)
    _store_route(app, "/delete", ["DELETE"], auth, _delete)
