"""The LitServer we run: bounded queues, whole-request deadlines, and inference workers that come back.

LitServe 0.2.19 gives each capability an unbounded queue, bounds only the time a request waits in it,
and (without restart_workers) shuts the whole server down when any inference worker dies. With
restart_workers its monitor does restart the worker, but it fails the dead worker's requests in the
main process's response buffer, while the requests wait in the HTTP processes' buffers: they hang.

Here, per capability:
- admission: at most `<CAPABILITY>_MAX_QUEUE` requests queued or in work, counted across every HTTP
  process; past it a 503 with Retry-After, at once;
- a deadline: REQUEST_TIMEOUT counts from the request's arrival (body read and URL fetch included); at
  the deadline the client gets a 504 and the late result is dropped when it comes;
- a dead worker: each worker announces its pid when it takes a request (LitServe's START message), the
  waiting HTTP process checks that pid while it waits, and answers 503 as soon as it is gone; the
  main process restarts the worker (with a back-off when one keeps dying) and every other worker
  goes on serving;
- a request lost in transit: a worker killed while blocked in the queue's get() leaves the manager to
  pop the next request and send it to a dead socket, so that request never starts. It is answered 503
  too, once a worker seen here is dead and, for two looks in a row, the queue holds fewer requests than
  this HTTP process has waiting unstarted (the queue is FIFO, so the missing ones are its oldest), or
  once a later request of the same HTTP process has been started for LOST_GRACE seconds (the rule left
  when other HTTP processes' requests fill the queue).
"""

import asyncio
import contextvars
import logging
import multiprocessing as mp
import os
import threading
import time

import litserve as ls
from fastapi import Depends, HTTPException
from litserve.server import RegularRequestHandler
from litserve.utils import LitAPIStatus, ResponseBufferItem

from apis.tracing import Traced
from telemetry import metrics
from telemetry.logs import adopt_library_loggers, request_id

log = logging.getLogger("imageserver.serving")

POLL = 0.25  # seconds between the waiting request's looks at its worker
MONITOR_INTERVAL = 0.5  # seconds between the main process's looks at the workers
LOST_GRACE = 3.0  # seconds a request may stay unstarted after a later one started (START messages race)
RETRY_AFTER = "1"  # seconds; a full queue drains in about a batch's time
QUICK_DEATH = 30.0  # seconds: a worker dying sooner after its start is restarted with a growing delay
GRACEFUL_SECONDS = 3  # uvicorn's wait for open requests at shutdown (LitServe's 30 s outlasts a stop)
_arrival: contextvars.ContextVar[float | None] = contextvars.ContextVar("arrival", default=None)


class RequestClock:
    """Pure ASGI: notes when a request arrived, so its deadline covers reading the body and fetching a URL."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        token = _arrival.set(time.monotonic())
        try:
            await self.app(scope, receive, send)
        finally:
            _arrival.reset(token)


class QueueGate:
    """Pure ASGI: a request to a capability whose queue is full gets its 503 before its body is read.

    The handler's count is the authoritative one; this early look spares the HTTP process from reading
    (and parsing, and writing to the hand-off folder) megabytes of upload only to refuse them, which under
    an overload took the CPU the workers needed. The connection is closed after the answer, since the
    unread body cannot be skipped.
    """

    def __init__(self, app, server: "ImageServer", paths: dict[str, str]):
        self.app, self.server, self.paths = app, server, paths  # request path -> its LitAPI's path

    async def __call__(self, scope, receive, send):
        api_path = self.paths.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if api_path is not None and self.server.in_flight[api_path].value >= self.server.queue_limits[api_path]:
            from apis.error_shapes import error_body  # the route's own error shape

            metrics.rejected("overload")
            response = error_body(scope["path"], 503, self.server.busy_message(api_path),
                                  headers={"Retry-After": RETRY_AFTER, "Connection": "close"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def process_alive(pid: int) -> bool:
    """False once `pid` has exited, zombie included (kill(pid, 0) succeeds on a zombie until it is reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


class StartOrder:
    """Per HTTP process and API: the highest submission number that a worker has started, and the workers
    seen starting requests (with when each was first seen dead)."""

    def __init__(self):
        self.submitted = 0
        self.highest_started = 0
        self.waiting: dict[int, ResponseBufferItem] = {}  # this process's requests not answered yet
        self.workers: dict[int, float | None] = {}  # pid -> when it was first seen dead, None while alive

    def seen(self, pid: int) -> None:
        self.workers.setdefault(pid, None)

    def dead_for(self) -> float:
        """How long ago a worker seen here was first found dead (0 when none is); forgets long-dead ones."""
        now, longest = time.monotonic(), 0.0
        for pid, since in list(self.workers.items()):
            if since is None and not process_alive(pid):
                self.workers[pid] = since = now
            if since is not None:
                if now - since > 60:
                    del self.workers[pid]
                else:
                    longest = max(longest, now - since)
        return longest

    def next(self, item: ResponseBufferItem) -> int:
        self.submitted += 1
        self.waiting[self.submitted] = item
        return self.submitted

    def started(self, number: int) -> None:
        self.highest_started = max(self.highest_started, number)

    def missing(self, number: int, queued: int) -> bool:
        """Whether `number` is among the oldest unstarted requests that the queue, holding `queued`, can no
        longer hold (each request of this process that no worker has announced is either queued or lost)."""
        unstarted = [n for n, item in self.waiting.items() if item.worker_id is None and not item.event.is_set()]
        short = len(unstarted) - queued
        return short > 0 and number in sorted(unstarted)[:short]


class AdmittingHandler(RegularRequestHandler):
    """LitServe's handler with admission, a whole-request deadline and dead-worker detection."""

    def __init__(self, lit_api, server):
        super().__init__(lit_api, server)
        self.order = StartOrder()  # each forked HTTP process has its own copy

    async def handle_request(self, request, request_type):
        server, path = self.server, self.lit_api.api_path
        counter, limit = server.in_flight[path], server.queue_limits[path]
        with counter.get_lock():
            admitted = counter.value < limit
            if admitted:
                counter.value += 1
        if not admitted:
            metrics.rejected("overload")
            raise HTTPException(503, server.busy_message(path), headers={"Retry-After": RETRY_AFTER})
        try:
            return await self._answer(request, request_type)
        finally:
            with counter.get_lock():
                counter.value -= 1

    async def _answer(self, request, request_type):
        timeout = self.server.timeout
        deadline = (_arrival.get() or time.monotonic()) + timeout if timeout not in (None, False, -1) else None
        # the id and hand-off time go with the request, for the worker's log lines and queue-wait metric
        payload = Traced(request_id.get(), time.monotonic(), await self._prepare_request(request, request_type))
        uid, _ = await self._submit_request(payload)
        item = ResponseBufferItem(asyncio.Event())
        number = self.order.next(item)
        self.server.response_buffer[uid] = item
        try:
            await self._wait(item, deadline, number)
        finally:
            self.order.waiting.pop(number, None)
            self.server.response_buffer.pop(uid, None)  # a late answer finds no one waiting and is dropped
        response, status = item.response
        if status == LitAPIStatus.ERROR:
            self._handle_error_response(response)
        return response

    def _missing(self, number: int) -> bool:
        """Whether request `number`, not started yet, may have been taken by a worker that died before it
        could say so: a worker of this API is dead and the queue is short of this request."""
        if self.order.dead_for() <= 0.0:
            return False
        return self.order.missing(number, self.server._get_request_queue(self.lit_api.api_path).qsize())

    async def _wait(self, item: ResponseBufferItem, deadline: float | None, number: int) -> None:
        overtaken_at = None  # when a later request was first seen started while this one was not
        suspected = False  # whether the previous look found this request missing from the queue
        while True:
            step = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if step <= 0:
                metrics.rejected("timeout")
                raise HTTPException(504, f"no answer within REQUEST_TIMEOUT ({self.server.timeout:g} s)")
            try:
                await asyncio.wait_for(item.event.wait(), timeout=step)
            except asyncio.TimeoutError:
                pass
            if item.worker_id is not None:
                self.order.started(number)
                self.order.seen(item.worker_id)
            if item.event.is_set():
                self.order.started(number)  # answered, so it was taken from the queue
                return
            if item.worker_id is not None:
                if not process_alive(item.worker_id):
                    raise HTTPException(
                        503, "the worker processing this request stopped; it is being restarted, retry shortly",
                        headers={"Retry-After": RETRY_AFTER})
                continue
            if overtaken_at is None and self.order.highest_started > number:
                overtaken_at = time.monotonic()
            # missing at two looks in a row: a live worker that just took it would have said so by now
            missing, was_missing = self._missing(number), suspected
            suspected = missing
            overtaken = overtaken_at is not None and time.monotonic() - overtaken_at > LOST_GRACE
            if overtaken or (missing and was_missing):
                log.error("%s: a request taken from the queue never started (its worker died); answering 503",
                          self.lit_api.api_path)
                raise HTTPException(
                    503, "this request was lost by a worker that stopped; it is being restarted, retry shortly",
                    headers={"Retry-After": RETRY_AFTER})


class ImageServer(ls.LitServer):
    """LitServer with bounded queues, whole-request deadlines and supervised inference workers.

    `queue_limits`: api_path -> (most requests queued or in work, the variable that sets it);
    `gated_paths`: every request path that feeds a LitAPI's queue -> that LitAPI's path.
    """

    def __init__(self, lit_apis, *, queue_limits: dict[str, tuple[int, str]], gated_paths: dict[str, str], **kwargs):
        # read by _register_api_endpoints, which LitServer's __init__ calls; mp.Values are shared with
        # the HTTP processes, which LitServe forks from this one
        self.queue_limits = {path: limit for path, (limit, _) in queue_limits.items()}
        self.queue_variables = {path: name for path, (_, name) in queue_limits.items()}
        self.in_flight = {path: mp.Value("i", 0) for path in queue_limits}
        self._stopping = threading.Event()
        self._restart_lock = threading.Lock()
        self.restarts = 0
        gate = (QueueGate, {"server": self, "paths": {p: a for p, a in gated_paths.items() if a in self.in_flight}})
        kwargs["middlewares"] = [gate, *kwargs.get("middlewares", [])]  # innermost: after aliases are resolved
        super().__init__(lit_apis, restart_workers=True, **kwargs)  # restart_workers: workers send START
        self.uvicorn_graceful_timeout = GRACEFUL_SECONDS

    def busy_message(self, api_path: str) -> str:
        return (f"{api_path} is busy: {self.queue_limits[api_path]} requests are already queued or in work "
                f"({self.queue_variables[api_path]}); retry shortly")

    def _register_api_endpoints(self, lit_api, request_type, response_type):
        handler = AdmittingHandler(lit_api, self)

        async def endpoint_handler(request: request_type) -> response_type:
            return await handler.handle_request(request, request_type)

        self.app.add_api_route(lit_api.api_path, endpoint_handler, methods=["POST"],
                               dependencies=[Depends(self.setup_auth(lit_api))])

    # ---------------------------------------------------------------- supervision (main process)

    def _slot(self, index: int):
        """inference_workers[index] -> (its LitAPI, its worker id within that API)."""
        for lit_api in self.litapi_connector:
            count = len(self._inference_workers_config_for_api(lit_api.api_path))
            if index < count:
                return lit_api, index
            index -= count
        raise IndexError(index)

    def _init_manager(self, num_api_servers):
        # the first call run() makes after LitServe's configure_logging gave its logger a handler of its
        # own: send LitServe's lines through ours again (one format, request ids) before any fork
        adopt_library_loggers()
        return super()._init_manager(num_api_servers)

    def _start_worker_monitoring(self, manager, uvicorn_workers):
        thread = threading.Thread(target=self._supervise, daemon=True, name="worker-supervisor")
        thread.start()

    def _supervise(self) -> None:
        """Restart each inference worker that exits; one that keeps dying soon after its start waits longer."""
        started = {i: time.monotonic() for i in range(len(self.inference_workers))}
        deaths, due = {}, {}  # slot -> quick deaths in a row; slot -> when its restart is due
        while not self._stopping.wait(MONITOR_INTERVAL):
            for index, process in enumerate(list(self.inference_workers)):
                if process.is_alive():
                    continue
                now = time.monotonic()
                lit_api, worker_id = self._slot(index)
                if index not in due:
                    deaths[index] = deaths.get(index, 0) + 1 if now - started.get(index, 0) < QUICK_DEATH else 1
                    delay = 0.0 if deaths[index] == 1 else min(30.0, 0.5 * 2 ** deaths[index])
                    due[index] = now + delay
                    log.error("%s worker %d (pid %s) died (exit code %s); restarting it in %.1f s",
                              lit_api.api_path, worker_id, process.pid, process.exitcode, delay)
                    metrics.forget_process(process.pid)
                if now < due[index]:
                    continue
                with self._restart_lock:
                    if self._stopping.is_set():
                        return
                    self.inference_workers[index] = self.launch_single_inference_worker(lit_api, worker_id)
                started[index] = time.monotonic()
                del due[index]
                self.restarts += 1
                metrics.worker_restarted(getattr(lit_api, "capability", lit_api.api_path))

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason="normal"):
        self._stopping.set()  # no restarts while the workers are being stopped
        with self._restart_lock:
            super()._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)
