"""A request's id and hand-off time travel with it to the model worker, so the worker's lines name it.

The HTTP process wraps each request it queues in a `Traced` (apis/serving.py). In the worker,
ImageAPI (apis/base.py) wraps every subclass's decode_request and encode_response with `traced_decode`
and `traced_answer`: the first unwraps the request, records its queue wait and decode time, and sets
telemetry.logs.request_id while the subclass decodes it; predict runs under the batch's ids; the second
sets each request's id again while its answer is encoded (LitServe encodes in the batch's order).
functools.wraps keeps the subclass's signature visible, which LitServe reads for the route's request
type and to decide whether to pass `context`.
"""

import functools
import time
from dataclasses import dataclass

from telemetry import metrics
from telemetry.logs import request_id


@dataclass(frozen=True)
class Traced:
    request_id: str | None
    submitted: float  # time.monotonic() in the HTTP process: the clock is system-wide on Linux
    payload: object


def traced_decode(decode_request):
    @functools.wraps(decode_request)
    def decode(self, request, *args, **kwargs):
        if not isinstance(request, Traced):  # a subclass's call to its parent's decode_request: already traced
            return decode_request(self, request, *args, **kwargs)
        rid, request = request.request_id, _record_wait(self, request)
        self._decoded_ids.append(rid)
        token = request_id.set(rid)
        try:
            with metrics.stage("decode", "decode", self.capability, capability=self.capability):
                return decode_request(self, request, *args, **kwargs)
        finally:
            request_id.reset(token)

    return decode


def traced_answer(encode_response):
    @functools.wraps(encode_response)
    def encode(self, output, *args, **kwargs):
        if getattr(self, "_answering", False):  # a subclass's call to its parent's: the id is already set
            return encode_response(self, output, *args, **kwargs)
        token = request_id.set(self._answer_ids.pop(0) if self._answer_ids else None)
        self._answering = True
        try:
            return encode_response(self, output, *args, **kwargs)
        finally:
            self._answering = False
            request_id.reset(token)

    return encode


def _record_wait(api, traced: Traced):
    metrics.queue_wait(api.capability, time.monotonic() - traced.submitted)
    return traced.payload


def batch_ids(api, size: int) -> list[str | None]:
    """The ids of the batch predict is about to run: the last `size` decoded (a batch whose decoding
    raised never reaches predict, and its ids are dropped here)."""
    ids = api._decoded_ids[-size:] if size else []
    api._decoded_ids.clear()
    api._answer_ids = list(ids)
    return ids
