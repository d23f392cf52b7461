"""Prometheus metrics, correct across every HTTP process and model worker (prometheus_client multiprocess mode).

Each process writes its samples to files of its own in one folder per server run (the hand-off folder's
metrics/, wiped with it); GET /metrics merges every file (apis/metrics.py). prometheus_client chooses
multiprocess mode when it is first imported and names its files from PROMETHEUS_MULTIPROC_DIR, so:
- `enable(folder)` sets that variable in the main process before any worker or HTTP process starts (the
  spawned workers inherit the environment, the forked HTTP processes its memory too);
- prometheus_client is imported lazily, by `_metrics()`, never at a module's top: the main process
  imports the whole server before the folder exists. Without the variable (a test calling the code
  in-process, METRICS=false) every record function here does nothing.

Counters and histograms of a process that died stay in its files, so totals survive worker restarts.
The one gauge written by processes, model availability, uses a live mode and the supervisor hands a dead
worker's file back (`forget_process`). Queue depth is read when scraped (apis/metrics.py), not stored.
"""

import functools
import logging
import os
import time
from contextlib import contextmanager
from types import SimpleNamespace

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "imageserver_"
REJECT_REASONS = ("too_large", "bomb", "bad_image", "timeout", "overload")
FETCH_OUTCOMES = ("ok", "blocked", "invalid_url", "too_large", "timeout", "http_error", "connect_error", "error")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

log = logging.getLogger("imageserver.stages")


def enable(path: str) -> None:
    """Turn metrics on for this process and every process it starts from now on (main process only)."""
    os.makedirs(path, exist_ok=True)
    os.environ[ENV] = path
    _metrics.cache_clear()


def folder() -> str | None:
    return os.environ.get(ENV) or None


@functools.cache
def _metrics() -> SimpleNamespace | None:
    """The metric objects of this process, or None when metrics are off. Cached: a forked process keeps
    them, and prometheus_client moves its values to files named by the new pid on their next update."""
    if not folder() or not os.path.isdir(folder()):
        return None
    from prometheus_client import Counter, Gauge, Histogram

    def counter(name, text, labels=()):
        return Counter(PREFIX + name, text, labels)

    def histogram(name, text, labels=(), buckets=LATENCY_BUCKETS):
        return Histogram(PREFIX + name, text, labels, buckets=buckets)

    return SimpleNamespace(
        http_requests=counter("http_requests_total", "HTTP requests answered, by route template, method and status",
                              ("route", "method", "status")),
        http_duration=histogram("http_request_duration_seconds",
                                "Time from a request's arrival to its answer's last byte, by route template", ("route",)),
        queue_wait=histogram("queue_wait_seconds",
                             "Time a request waited between its hand-off to a capability's queue and its worker "
                             "starting on it (batch assembly included)", ("capability",)),
        batch_requests=histogram("batch_requests", "Requests per batch a worker ran, by capability", ("capability",),
                                 SIZE_BUCKETS),
        model_batch=histogram("model_batch_images", "Images per model forward call, by model", ("model",), SIZE_BUCKETS),
        model_forward=histogram("model_forward_seconds", "Time of one model forward call, by model", ("model",)),
        model_available=Gauge(PREFIX + "model_available",
                              "1 when a live worker loaded the model, 0 when its workers could not (the reason is in "
                              "GET /available_operations/ and the worker's log)", ("model",), multiprocess_mode="livemax"),
        decode=histogram("image_decode_seconds", "Time to read and decode one image in a worker, by capability",
                         ("capability",)),
        worker_restarts=counter("worker_restarts_total", "Inference workers restarted after they died, by capability",
                                ("capability",)),
        rejected=counter("rejected_requests_total",
                         "Requests refused by a server limit: too_large (body, URL content or image bytes), bomb "
                         "(pixels, aspect, frames or JPEG scans), bad_image (undecodable or a format not accepted), "
                         "timeout (REQUEST_TIMEOUT, 504), overload (queue full, 503)", ("reason",)),
        store_operation=histogram("store_operation_seconds", "Time of one image-index operation, by backend and operation",
                                  ("backend", "operation")),
        url_fetches=counter("url_fetches_total", "Image URL fetches, by outcome", ("outcome",)),
        url_fetch_duration=histogram("url_fetch_duration_seconds", "Time of one image URL fetch, whatever its outcome"),
    )


def start(capabilities=()) -> None:
    """Create the series known in advance at zero, so a rate() has a start before the first event."""
    metrics = _metrics()
    if metrics is None:
        return
    for reason in REJECT_REASONS:
        metrics.rejected.labels(reason)
    for outcome in FETCH_OUTCOMES:
        metrics.url_fetches.labels(outcome)
    for capability in capabilities:
        metrics.worker_restarts.labels(capability)


def forget_process(pid: int) -> None:
    """A dead process's live gauges no longer count (its counters and histograms still do)."""
    if folder():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, folder())


def http_request(route: str, method: str, status: int, seconds: float) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics.http_requests.labels(route, method, str(status)).inc()
        metrics.http_duration.labels(route).observe(seconds)


def rejected(reason: str) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics.rejected.labels(reason).inc()


def worker_restarted(capability: str) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics.worker_restarts.labels(capability).inc()


def queue_wait(capability: str, seconds: float) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics.queue_wait.labels(capability).observe(max(0.0, seconds))


def batch(capability: str, requests: int) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics.batch_requests.labels(capability).observe(requests)


def model_available(model: str, available: bool) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics.model_available.labels(model).set(1 if available else 0)


def url_fetch(outcome: str, seconds: float) -> None:
    """One URL fetch: counted by outcome, timed, and a debug line (the fetch stage of its request)."""
    log.debug("stage fetch outcome=%s took %.4f s", outcome, seconds,
              extra={"stage": "fetch", "outcome": outcome, "seconds": round(seconds, 6)})
    metrics = _metrics()
    if metrics is not None:
        metrics.url_fetches.labels(outcome).inc()
        metrics.url_fetch_duration.observe(seconds)


@contextmanager
def stage(name: str, histogram: str | None = None, *labels: str, **facts):
    """Time one stage of the current request(s): a debug log line (tagged with the request id by
    telemetry.logs) and, when `histogram` names one, an observation with `labels`."""
    began = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - began
        if log.isEnabledFor(logging.DEBUG):
            shown = "".join(f" {key}={value}" for key, value in facts.items())
            log.debug("stage %s%s took %.4f s", name, shown, seconds,
                      extra={"stage": name, "seconds": round(seconds, 6), **facts})
        metrics = _metrics()
        if metrics is not None and histogram is not None:
            getattr(metrics, histogram).labels(*labels).observe(seconds)


def model_forward(model: str, images: int):
    """stage() for one model's forward over `images` images; also its batch size."""
    metrics = _metrics()
    if metrics is not None:
        metrics.model_batch.labels(model).observe(images)
    return stage("forward", "model_forward", model, model=model, images=images)
