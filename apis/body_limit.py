"""Reject request bodies over MAX_UPLOAD_BYTES with a 413 that names the limit, before they are parsed."""

from apis.error_shapes import error_body
from telemetry import metrics


class BodyLimitMiddleware:
    """Pure ASGI: answers 413 from Content-Length at once, or stops reading a longer streamed body."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: str, path: str = "") -> bytes:
        """The 413 in the shape of the route at `path` (apis/error_shapes.py)."""
        text = f"the request body is {size} bytes; the limit is {self.max_bytes} (MAX_UPLOAD_BYTES)"
        return error_body(path, 413, text).body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send, self._message(declared.decode(), scope["path"]))
        seen = 0
        rejected = False

        async def limited_receive():
            nonlocal seen, rejected
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                rejected = True
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send, self._message(f"over {self.max_bytes}", scope["path"]))
        except Exception:
            if not rejected:
                raise
            await self._reject(send, self._message(f"over {self.max_bytes}", scope["path"]))

    @staticmethod
    async def _reject(send, body: bytes):
        metrics.rejected("too_large")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
