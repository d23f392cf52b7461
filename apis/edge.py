"""Two pure-ASGI middlewares around every request: its id, and a JSON answer to an error nobody foresaw.

- RequestIdMiddleware: the client's X-Request-ID when it is sane (at most 128 of [A-Za-z0-9._-]), else a
  new uuid4 hex; kept in scope["state"]["request_id"] and sent back in X-Request-ID on every response,
  errors included, so a client's report and the server's log name the same request.
- UnforeseenErrorMiddleware: an exception that escapes a route (a bug, not bad input) is answered 500 in
  the route's own shape (apis/error_shapes.py) with the request id, and logged with its traceback and
  that id. Without it Starlette answers plain-text "Internal Server Error", which no client here parses.
"""

import logging
import re
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException

from apis.error_shapes import error_body, request_id_of
from telemetry.logs import request_id as current_request_id

log = logging.getLogger("imageserver")

_SANE_ID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")
HEADER = b"x-request-id"


class RequestIdMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((value for name, value in scope["headers"] if name == HEADER), b"")
        request_id = given.decode("ascii") if _SANE_ID.match(given) else uuid.uuid4().hex
        state = scope.get("state")
        if not isinstance(state, dict):
            state = scope["state"] = {}
        state["request_id"] = request_id

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode("ascii"))]}
            await send(message)

        token = current_request_id.set(request_id)  # every log line of this request names it (telemetry/logs.py)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)


class UnforeseenErrorMiddleware:
    """Sits inside RequestIdMiddleware (it reads the id from the scope)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as exc:
            request_id = request_id_of(scope) or uuid.uuid4().hex
            path = scope.get("path", "")
            if isinstance(exc, StarletteHTTPException) and not started:  # raised by a middleware, not a bug
                response = error_body(path, exc.status_code, str(exc.detail), exc.headers, request_id)
                return await response(scope, receive, send)
            log.exception("request %s: unforeseen error on %s %s", request_id, scope.get("method"), path)
            if started:  # too late for an answer: the connection is closed on the client
                raise
            response = error_body(path, 500, "internal error: the server failed on this request; "
                                  f"quote request id {request_id} when reporting it", request_id=request_id)
            await response(scope, receive, send)
