"""Every error answer in the shape its route's clients parse: the one place that picks the shape by path.

- the near-duplicate paths (apis/match.py MATCH_METHODS): their envelope {"status": "fail",
  "error": [message], "method": name, "result": []};
- /find_similar/ (apis/similar.py): {"error": message, "detail": message};
- every other route: FastAPI's {"detail": message}.

Used by the exception handlers below (installed for the whole app, whatever the capabilities), the
catch-all for unforeseen errors (apis/edge.py) and the API-key check (apis/auth.py). A 5xx body also
carries the request's id, the one the log lines about it name.
"""

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from apis.match import MATCH_METHODS, fail
from apis.similar import SIMILAR_PATHS, similar_error

log = logging.getLogger("imageserver")


def error_body(path: str, status: int, message: str, headers=None, request_id: str | None = None) -> JSONResponse:
    """`message` with `status`, in the shape of the route at `path`."""
    if path in MATCH_METHODS:
        response = fail(MATCH_METHODS[path], status, message, headers)
    elif path in SIMILAR_PATHS:
        response = similar_error(status, message, headers)
    else:
        response = JSONResponse({"detail": message}, status_code=status, headers=headers)
    if request_id is not None and status >= 500:
        return _with_request_id(response, request_id)
    return response


def request_id_of(scope) -> str | None:
    """The id apis/edge.py's RequestIdMiddleware gave this request (None outside it)."""
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


def _with_request_id(response: JSONResponse, request_id: str) -> JSONResponse:
    body = {**json.loads(response.body), "request_id": request_id}
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse(body, status_code=response.status_code, headers=headers)


async def http_error(request: Request, exc: StarletteHTTPException):
    """A raised HTTPException (a 4xx from a body reader, 405, 404, LitServe's 500 and 504) in the route's shape."""
    path, detail, rid = request.url.path, str(exc.detail), request_id_of(request.scope)
    if exc.status_code == 500:  # LitServe's answer to a worker's failure; the worker logged the traceback
        log.error("request %s: %s %s answered %d: %s", rid, request.method, path, exc.status_code, detail)
    if exc.status_code == 404 and request.scope.get("route") is None and path not in MATCH_METHODS \
            and path not in SIMILAR_PATHS:  # no such path: say so in both forms
        return JSONResponse({"status": "fail", "error": [f"not found: {path}"], "method": "", "result": [],
                             "detail": detail}, status_code=404, headers=exc.headers)
    if exc.status_code == 405:  # Starlette names the methods of the first route of the path only
        exc = StarletteHTTPException(405, exc.detail, {**(exc.headers or {}), "Allow": allowed_methods(request)})
    if exc.status_code < 200 or exc.status_code in (204, 205, 304):  # no body allowed
        return await http_exception_handler(request, exc)
    return error_body(path, exc.status_code, detail, exc.headers, rid)


def allowed_methods(request: Request) -> str:
    """Every method some route of this path takes (routes are registered one per method)."""
    methods = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(request.url.path):
            methods |= route.methods
    return ", ".join(sorted(methods))


async def validation_error(request: Request, exc: RequestValidationError):
    """FastAPI's parameter validation, in the route's shape: the near-duplicate envelope (400), else 422 with
    one message (FastAPI's own `detail` is a list, a shape no other answer here has)."""
    path = request.url.path
    message = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
    return error_body(path, 400 if path in MATCH_METHODS else 422, message)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
