"""GET /metrics (Prometheus text format) and the HTTP side's measures: requests, latency, the access log.

The answer merges the sample files of every process of this server run (telemetry/metrics.py), whichever
HTTP process is asked, and adds what is read at scrape time rather than stored: each capability's queue
depth and admission count, from the queues and counters the HTTP processes share. API_KEY applies to
/metrics as to any route not in PUBLIC_ROUTES (apis/auth.py).
"""

import logging
import time

from fastapi import FastAPI, Response
from starlette.routing import Match

from telemetry import metrics

access_log = logging.getLogger("imageserver.access")
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
UNMATCHED = "unmatched"  # the route label of every path no route serves (404s): one series, not one per path


def route_of(scope, aliases) -> str:
    """The route template that serves this request (/images/{sha256}, never the path itself)."""
    path = scope.get("path", "")
    if path in aliases:  # a fixed alias path (/analyze_image/): its own name
        return path
    app = scope.get("app")
    partial = None
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.path
        if match == Match.PARTIAL and partial is None:  # the path is served, not with this method (405)
            partial = route.path
    return partial or UNMATCHED


class HttpMetrics:
    """Pure ASGI, just inside RequestIdMiddleware: counts every answer (the 401s, 413s and 503s of the
    middlewares inside it too), times it to its last byte, and writes one access line with the request id."""

    def __init__(self, app, aliases: dict | None = None):
        self.app, self.aliases = app, aliases or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), 500  # 500: nothing was sent when an exception escaped

        async def watched_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            seconds = time.perf_counter() - began
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            route = route_of(scope, self.aliases)
            metrics.http_request(route, method, status, seconds)
            # the path as sent, still percent-encoded: a decoded %0A would start a forged log line
            path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            access_log.info("%s %s %d %.4f s", scope["method"], path, status, seconds,
                            extra={"method": scope["method"], "path": path, "route": route,
                                   "status": status, "duration_s": round(seconds, 6)})


class QueueCollector:
    """Scrape-time gauges per capability: requests waiting in its queue, admitted ones (queued or in work)
    and its admission limit (<CAPABILITY>_MAX_QUEUE)."""

    def __init__(self, server, capabilities: dict[str, str]):
        self.server, self.capabilities = server, capabilities  # api_path -> capability

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        families = {
            "depth": GaugeMetricFamily(metrics.PREFIX + "queue_depth",
                                       "Requests waiting in a capability's queue for a worker", labels=["capability"]),
            "admitted": GaugeMetricFamily(metrics.PREFIX + "queue_admitted",
                                          "Requests admitted to a capability, queued or in work", labels=["capability"]),
            "limit": GaugeMetricFamily(metrics.PREFIX + "queue_limit",
                                       "Most requests a capability admits before answering 503 (<CAPABILITY>_MAX_QUEUE)",
                                       labels=["capability"]),
        }
        for path, capability in self.capabilities.items():
            families["admitted"].add_metric([capability], self.server.in_flight[path].value)
            families["limit"].add_metric([capability], self.server.queue_limits[path])
            try:
                depth = self.server._get_request_queue(path).qsize()
            except (OSError, EOFError):  # the queue's manager is gone (shutting down): no sample
                continue
            families["depth"].add_metric([capability], depth)
        return list(families.values())


def add_metrics_route(app: FastAPI, server, capabilities: dict[str, str]) -> None:
    """GET /metrics; `capabilities`: each LitAPI's path -> its capability name."""
    collector = QueueCollector(server, capabilities)

    def prometheus_metrics():
        # imported here, not above: prometheus_client must first be imported once metrics are on (main())
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
        from prometheus_client.multiprocess import MultiProcessCollector

        if metrics.folder() is None:
            return Response("metrics are off in this process\n", status_code=503, media_type="text/plain")
        registry = CollectorRegistry()  # a fresh one per scrape, as multiprocess mode requires
        MultiProcessCollector(registry, path=metrics.folder())
        registry.register(collector)
        # the 0.0.4 text format every Prometheus reads (our names need nothing newer)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    app.add_api_route("/metrics", prometheus_metrics, methods=["GET"], include_in_schema=True,
                      summary="Prometheus metrics of every HTTP process and worker (text format)")
