"""The inference workers' loops: a batched loop that sleeps while idle, and what both loops add.

Both loops name their worker by its pid in LitServe's START message (apis/serving.py watches that pid
while the request waits, and answers 503 when it dies), and start the worker's memory settler
(models/runtime.py) before serving.

A batched loop that sleeps while idle:

LitServe 0.2.19's BatchedLoop polls its queue every millisecond while it waits for a batch (or
spins on get_nowait when batch_timeout is 0), so an idle server with batching on burns CPU in every
worker and in the queue's manager process. This loop blocks for the first request, then waits at
most `batch_timeout` for the rest of the batch with blocking gets: the same batches, no polling.
"""

import os
import time
from queue import Empty

from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop, SingleLoop
from litserve.utils import LitAPIStatus, LoopResponseType

from models.runtime import start_memory_settler

IDLE_WAIT = 1.0  # seconds per blocking wait while idle; bounds how long shutdown can take to notice


class _Supervised:
    """Mixed into LitServe's loops: the worker is known by its pid, and gives memory back when idle."""

    @property
    def worker_id(self) -> int:
        return os.getpid()

    def __call__(self, *args, **kwargs):
        start_memory_settler()
        return super().__call__(*args, **kwargs)


class SupervisedSingleLoop(_Supervised, SingleLoop):
    """LitServe's loop for max_batch_size 1."""


class IdleBatchedLoop(_Supervised, BatchedLoop):
    def get_batch_requests(self, lit_api, request_queue, transport):
        payloads, timed_out = [], []
        deadline = None
        while len(payloads) + len(timed_out) < lit_api.max_batch_size:
            wait = IDLE_WAIT if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            try:
                item = request_queue.get(timeout=wait)
            except Empty:
                break
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            if deadline is None:  # the batch's clock starts with its first request, as in LitServe
                deadline = time.monotonic() + lit_api.batch_timeout
            self._accept(lit_api, transport, item, payloads, timed_out)
        return payloads, timed_out

    def _accept(self, lit_api, transport, item, payloads, timed_out):
        response_queue_id, uid, timestamp, x_enc = item
        self.put_response(
            transport=transport,
            response_queue_id=response_queue_id,
            uid=uid,
            response_data=(),
            status=LitAPIStatus.START,
            response_type=LoopResponseType.STREAMING if lit_api.stream else LoopResponseType.REGULAR,
        )
        expired = lit_api.request_timeout not in (-1, False) and time.monotonic() - timestamp > lit_api.request_timeout
        if expired:
            timed_out.append((response_queue_id, uid))
        else:
            payloads.append((response_queue_id, uid, x_enc))
