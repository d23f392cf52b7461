"""What every capability's LitAPI shares: API-key check, per-item errors in a batch, the 4xx answer.

In a batch, one bad request must not fail its neighbours (LitServe issue #340): an exception raised in
decode_request or encode_response fails the whole batch. So decode_request returns an InputError as
a value, predict passes it through untouched, and encode_response turns it into a JSON 4xx response.
"""

import hmac
import logging
from dataclasses import fields, is_dataclass

import litserve as ls
from fastapi import Header, HTTPException
from fastapi.responses import JSONResponse
from PIL import Image

from apis.batch_loop import IdleBatchedLoop, SupervisedSingleLoop
from apis.tracing import batch_ids, traced_answer, traced_decode
from errors import InputError
from images.decode import DecodedImage, decode_image
from telemetry import metrics
from telemetry.logs import request_id

log = logging.getLogger("imageserver")


class ServerFault(Exception):
    """An unexpected failure on one item; answered 500 for that item alone, logged with its traceback."""


def error_response(error: InputError | ServerFault) -> JSONResponse:
    if isinstance(error, InputError):
        return JSONResponse({"detail": error.detail}, status_code=error.status)
    return JSONResponse({"detail": "internal error while processing this image"}, status_code=500)


def close_images(value, depth: int = 0) -> None:
    """Free the pixels of every PIL image in a decoded batch (lists, tuples, dataclasses, a few levels deep),
    and drop the upload bytes a mutable dataclass holds."""
    if isinstance(value, Image.Image):
        value.close()
    elif depth < 3 and isinstance(value, (list, tuple)):
        for item in value:
            close_images(item, depth + 1)
    elif depth < 3 and is_dataclass(value) and not isinstance(value, type):
        frozen = value.__dataclass_params__.frozen
        for field in fields(value):
            held = getattr(value, field.name, None)
            if isinstance(held, bytes) and not frozen:
                setattr(value, field.name, None)
            else:
                close_images(held, depth + 1)


class ImageAPI(ls.LitAPI):
    """Base LitAPI: `settings` travels with the instance into the worker processes.

    `capability` (the CAPABILITIES name, set by server.build_server) labels its metrics and log lines.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # each request's id on the worker's lines about it (apis/tracing.py)
        if "decode_request" in cls.__dict__:
            cls.decode_request = traced_decode(cls.__dict__["decode_request"])
        if "encode_response" in cls.__dict__:
            cls.encode_response = traced_answer(cls.__dict__["encode_response"])

    def __init__(self, settings, *, api_path: str, max_batch_size: int = 1, batch_timeout: float = 0.0):
        # LitServe's own batched loop polls (or spins) while idle; ours blocks until work arrives
        loop = IdleBatchedLoop() if max_batch_size > 1 else SupervisedSingleLoop()
        super().__init__(api_path=api_path, max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=loop)
        self.settings = settings
        self.capability = api_path.strip("/")
        self._decoded_ids: list[str | None] = []  # the request ids of the batch being decoded, in order
        self._answer_ids: list[str | None] = []  # those of the batch being answered

    def authorize(self, x_api_key: str | None = Header(default=None)) -> None:
        """FastAPI dependency LitServe puts on this API's route: checks X-API-Key when API_KEY is set."""
        expected = self.settings.api_key
        if expected and not hmac.compare_digest((x_api_key or "").encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")

    def decode(self, blob, max_side: int | None = None, min_side: int | None = None) -> DecodedImage | InputError:
        """The request's image decoded within the configured limits, or the InputError as a value."""
        data = None
        try:
            data = blob.read()
            return decode_image(data, self.settings.decode_limits, max_side, min_side)
        except InputError as exc:
            if exc.status == 413:  # past a byte limit the file is too large, past any other a bomb
                metrics.rejected("too_large" if len(data or b"") > self.settings.max_upload_bytes else "bomb")
            elif data is not None:  # read, but not an image this server accepts (400, 415)
                metrics.rejected("bad_image")
            # without its traceback: the frames would keep the refused image (and its buffers) alive for as
            # long as LitServe's loop keeps this batch, which is until the next request
            return exc.with_traceback(None)
        except Exception as exc:  # a decoder failure we did not foresee is still this file's fault
            log.warning("decoder failed: %r", exc)
            metrics.rejected("bad_image")
            return InputError(400, f"the image could not be decoded: {exc}")

    def predict(self, x):
        """The subclass's infer(x); then the batch's pixels are freed at once.

        LitServe's loop keeps its last batch referenced until the next request arrives, so without this
        an idle worker would hold the last upload's decoded pixels (144 MB for a 36-megapixel image).
        """
        ids = batch_ids(self, len(x) if self.max_batch_size > 1 else 1)
        metrics.batch(self.capability, len(ids))
        token = request_id.set(",".join(i for i in ids if i) or None)
        try:
            return self.infer(x)
        finally:
            request_id.reset(token)
            close_images(x)

    def infer(self, x):
        raise NotImplementedError

    def as_batch(self, x) -> list:
        """predict sees one item when max_batch_size is 1, a list otherwise; models always get a list."""
        return list(x) if self.max_batch_size > 1 else [x]

    def from_batch(self, outputs: list):
        return outputs if self.max_batch_size > 1 else outputs[0]

    def run_each(self, items: list, fn) -> list:
        """fn over the items that are not already errors, isolating an unexpected failure to its item."""
        out = []
        for index, item in enumerate(items):
            if isinstance(item, (InputError, ServerFault)):
                out.append(item)
                continue
            out.append(self.for_request(index, self._run_one, fn, item))
        return out

    def _run_one(self, fn, item):
        try:
            return fn(item)
        except InputError as exc:
            return exc.with_traceback(None)  # its frames hold the item's pixels
        except Exception as exc:  # one item's bug must not take down the batch or the worker
            log.exception("%s failed on one item", type(self).__name__)
            return ServerFault(repr(exc))

    def for_request(self, index: int, fn, *args):
        """fn(*args) with its log lines (and store timings) tagged by the id of the batch's index-th request;
        also in a thread of the worker's own, which does not inherit the batch's."""
        ids = self._answer_ids
        token = request_id.set(ids[index] if index < len(ids) else None)
        try:
            return fn(*args)
        finally:
            request_id.reset(token)


def share_route(app, source: str, routes) -> None:
    """Serve the LitAPI route LitServe registered at `source` under more (path, method, in the schema)
    routes too: one queue and one pool of workers for every path a capability's workers answer."""
    from fastapi.routing import APIRoute

    route = next(r for r in app.router.routes if isinstance(r, APIRoute) and r.path == source)
    for path, method, in_schema in routes:
        app.add_api_route(path, route.endpoint, methods=[method], dependencies=route.dependencies,
                          include_in_schema=in_schema)
