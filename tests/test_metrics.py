"""GET /metrics against real server processes on loopback: several HTTP processes and workers write their
own samples, and every scrape, whichever HTTP process answers it, adds them all up.

Each test reads the counters before and after what it sends and checks the difference, so the requests
of other tests (and the scrapes themselves) do not blur it.
"""

import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer

import httpx
import psutil
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests import photos
from tests.conftest import API_KEY, QuietHandler, start_server
from tests.test_workers import worker_pids

MAX_UPLOAD = 2_000_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def metrics_server(cache_dir, server_logs, tmp_path_factory):
    """Two HTTP processes, two workers per capability, stats batched by up to 4; the index with no models."""
    server = start_server(
        server_logs, "metrics", CAPABILITIES="stats,search", SEARCH_MODELS="none", NUM_API_SERVERS=2,
        WORKERS_PER_DEVICE=2, STATS_MAX_BATCH_SIZE=4, STATS_BATCH_TIMEOUT=0.05, MAX_UPLOAD_BYTES=MAX_UPLOAD,
        MAX_IMAGE_PIXELS=MAX_PIXELS, CACHE_DIR=cache_dir, DATA_DIR=tmp_path_factory.mktemp("metrics-data"),
        LOG_LEVEL="INFO", FETCH_ALLOW_NETWORKS="",
    )
    yield server
    server.stop()


def scrape(url: str, **headers) -> dict:
    """{(sample name, sorted labels): value} of one GET /metrics, on a new connection each time."""
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def stats(url: str, data: bytes, request_id: str | None = None) -> httpx.Response:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return httpx.post(f"{url}/stats", files={"content": ("p.png", data)}, headers=headers, timeout=60)


def bomb() -> bytes:
    """A real PNG of 2000x2000 pixels (4 MP, over MAX_PIXELS) in a few kilobytes: one flat colour."""
    out = io.BytesIO()
    Image.new("RGB", (2000, 2000), (40, 90, 160)).save(out, format="PNG")
    assert len(out.getvalue()) < MAX_UPLOAD
    return out.getvalue()


def served_by(server, request_ids) -> dict[str, int]:
    """request id -> pid of the HTTP process whose access line names it (text format: `time LEVEL pid logger [id]`)."""
    time.sleep(0.3)  # the line is written just after the answer's last byte
    found = {}
    for line in server.log.read_text(errors="replace").splitlines():
        match = re.search(r" (\d+) imageserver\.access \[([^\]]+)\]: ", line)
        if match and match.group(2) in request_ids:
            found[match.group(2)] = int(match.group(1))
    return found


def test_request_counter_and_route_histogram_move_by_exactly_the_requests_sent_across_two_http_processes(
        metrics_server):
    url, sent, pids = metrics_server.url, 0, set()
    before = scrape(url)
    image = photos.read("chelsea")
    for round_ in range(6):  # until both HTTP processes have answered some (the kernel picks per connection)
        ids = [f"count-{round_}-{i}" for i in range(12)]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda rid: stats(url, image, rid), ids))
        assert [a.status_code for a in answers] == [200] * len(ids)
        sent += len(ids)
        pids |= set(served_by(metrics_server, ids).values())
        if len(pids) >= 2:
            break
    assert len(pids) == 2, f"one HTTP process answered all {sent} requests: {pids}"
    after = scrape(url)
    key = {"route": "/stats", "method": "POST", "status": 200}
    assert value(after, "imageserver_http_requests_total", **key) - value(
        before, "imageserver_http_requests_total", **key) == sent
    assert value(after, "imageserver_http_request_duration_seconds_count", route="/stats") - value(
        before, "imageserver_http_request_duration_seconds_count", route="/stats") == sent
    # every request was decoded by a worker (two of them) and waited in the stats queue: once each
    for name in ("imageserver_image_decode_seconds_count", "imageserver_queue_wait_seconds_count"):
        assert value(after, name, capability="stats") - value(before, name, capability="stats") == sent, name
    # the batches' sizes add up to the requests
    grew = value(after, "imageserver_batch_requests_sum", capability="stats") - value(
        before, "imageserver_batch_requests_sum", capability="stats")
    batches = value(after, "imageserver_batch_requests_count", capability="stats") - value(
        before, "imageserver_batch_requests_count", capability="stats")
    assert grew == sent and 1 <= batches <= sent


def test_every_scrape_agrees_whichever_http_process_answers_it(metrics_server):
    url = metrics_server.url
    for _ in range(3):
        assert stats(url, photos.read("coffee")).status_code == 200
    counts, pids = {}, {}

    def scraped(rid):
        counts[rid] = value(scrape(url, **{"X-Request-ID": rid}), "imageserver_http_requests_total",
                            route="/stats", method="POST", status=200)

    for round_ in range(6):  # concurrent connections, until both HTTP processes have answered some
        ids = [f"scrape-{round_}-{i}" for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(scraped, ids))
        pids.update(served_by(metrics_server, ids))
        if len(set(pids.values())) >= 2:
            break
    assert len(set(pids.values())) == 2, f"every scrape went to one HTTP process: {pids}"
    assert len(set(counts.values())) == 1, f"scrapes disagree on the /stats count: {counts}"


def test_route_label_is_the_template_never_the_path(metrics_server):
    url = metrics_server.url
    before = scrape(url)
    missing = ["0" * 63 + str(i) for i in range(3)]
    for sha in missing:
        assert httpx.get(f"{url}/images/{sha}", timeout=30).status_code == 404
    assert httpx.get(f"{url}/no/such/route/42", timeout=30).status_code == 404
    after = scrape(url)
    template = {"route": "/images/{sha256}", "method": "GET", "status": 404}
    assert value(after, "imageserver_http_requests_total", **template) - value(
        before, "imageserver_http_requests_total", **template) == 3
    assert value(after, "imageserver_http_request_duration_seconds_count", route="/images/{sha256}") - value(
        before, "imageserver_http_request_duration_seconds_count", route="/images/{sha256}") == 3
    unmatched = {"route": "unmatched", "method": "GET", "status": 404}
    assert value(after, "imageserver_http_requests_total", **unmatched) - value(
        before, "imageserver_http_requests_total", **unmatched) == 1
    routes = {dict(labels).get("route") for (_, labels) in after}
    assert not any(sha in (route or "") for sha in missing for route in routes)
    assert "/no/such/route/42" not in routes


def test_413_body_bomb_and_bad_image_each_count_their_own_reject_reason(metrics_server):
    url = metrics_server.url
    reasons = ("too_large", "bomb", "bad_image", "timeout", "overload")
    before = scrape(url)
    assert stats(url, b"\0" * (MAX_UPLOAD + 1)).status_code == 413
    after_body = scrape(url)
    assert stats(url, bomb()).status_code == 413
    after_bomb = scrape(url)
    assert stats(url, b"this is text, not an image" * 10).status_code == 415
    after_bad = scrape(url)

    def moved(a, b):
        return {r: value(b, "imageserver_rejected_requests_total", reason=r)
                - value(a, "imageserver_rejected_requests_total", reason=r) for r in reasons}

    assert moved(before, after_body) == {**dict.fromkeys(reasons, 0), "too_large": 1}
    assert moved(after_body, after_bomb) == {**dict.fromkeys(reasons, 0), "bomb": 1}
    assert moved(after_bomb, after_bad) == {**dict.fromkeys(reasons, 0), "bad_image": 1}


def test_refused_url_fetch_counts_its_outcome(metrics_server):
    url = metrics_server.url
    before = scrape(url)
    answer = httpx.post(f"{url}/stats", json={"content": "http://10.0.0.1/photo.png"}, timeout=30)
    assert answer.status_code == 400
    answer = httpx.post(f"{url}/stats", json={"content": "ftp://example.org/photo.png"}, timeout=30)
    assert answer.status_code == 400
    after = scrape(url)
    assert value(after, "imageserver_url_fetches_total", outcome="blocked") - value(
        before, "imageserver_url_fetches_total", outcome="blocked") == 1
    assert value(after, "imageserver_url_fetches_total", outcome="invalid_url") - value(
        before, "imageserver_url_fetches_total", outcome="invalid_url") == 1
    assert value(after, "imageserver_url_fetch_duration_seconds_count") - value(
        before, "imageserver_url_fetch_duration_seconds_count") == 2


def test_store_operations_are_timed_by_backend_and_operation(metrics_server):
    url = metrics_server.url
    before = scrape(url)
    for _ in range(3):
        assert httpx.get(f"{url}/count", timeout=30).status_code == 200
    added = httpx.post(f"{url}/add", files={"image": ("c.png", photos.read("chelsea"))},
                       data={"filepath": "metrics/chelsea.png"}, timeout=60)
    assert added.status_code == 200, added.text
    after = scrape(url)
    count = {"backend": "sqlite", "operation": "count"}
    assert value(after, "imageserver_store_operation_seconds_count", **count) - value(
        before, "imageserver_store_operation_seconds_count", **count) == 3
    add = {"backend": "sqlite", "operation": "add"}  # in a worker process: its samples reach the scrape too
    assert value(after, "imageserver_store_operation_seconds_count", **add) - value(
        before, "imageserver_store_operation_seconds_count", **add) == 1


def test_queue_gauges_name_each_capability_and_its_limit(metrics_server):
    samples = scrape(metrics_server.url)
    for capability, limit in (("stats", 256), ("search", 64)):
        assert value(samples, "imageserver_queue_limit", capability=capability) == limit
        assert ("imageserver_queue_depth", (("capability", capability),)) in samples
        assert ("imageserver_queue_admitted", (("capability", capability),)) in samples


def test_killed_worker_counts_one_restart_and_keeps_what_it_counted(metrics_server):
    url = metrics_server.url
    before = scrape(url)
    workers = worker_pids(metrics_server.pid)
    victim = max(workers)  # any worker: which capability it serves is read back from the counter
    psutil.Process(victim).kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = scrape(url)
        moved = {c: value(after, "imageserver_worker_restarts_total", capability=c)
                 - value(before, "imageserver_worker_restarts_total", capability=c) for c in ("stats", "search")}
        if sum(moved.values()):
            break
        time.sleep(0.5)
    assert sorted(moved.values()) == [0, 1], moved
    for capability in ("stats", "search"):  # the dead worker's decodes still count
        name = "imageserver_image_decode_seconds_count"
        assert value(after, name, capability=capability) >= value(before, name, capability=capability)
    deadline = time.monotonic() + 60  # the module's other tests need every worker back
    while len(worker_pids(metrics_server.pid)) < len(workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stats(url, photos.read("chelsea")).status_code == 200


def test_text_log_access_lines_carry_the_request_id_and_the_path_as_sent(metrics_server):
    assert stats(metrics_server.url, photos.read("chelsea"), "text-line-7").status_code == 200
    forged = httpx.get(f"{metrics_server.url}/x%0A2026-01-01%20INFO%20forged", headers={"X-Request-ID": "text-line-8"},
                       timeout=30)
    assert forged.status_code == 404
    time.sleep(0.5)
    log = metrics_server.log.read_text(errors="replace").splitlines()
    lines = [line for line in log if "[text-line-7]" in line]
    assert any(re.search(r" INFO \d+ imageserver\.access \[text-line-7\]: POST /stats 200 [\d.]+ s$", line)
               for line in lines), lines
    assert any(line.endswith("[text-line-8]: GET /x%0A2026-01-01%20INFO%20forged 404") or
               "[text-line-8]: GET /x%0A2026-01-01%20INFO%20forged 404 " in line for line in log)
    assert not any(line.startswith("2026-01-01 INFO forged") for line in log)


# ---------------------------------------------------------------- overload and timeout, on a server of its own

class _SlowPhoto(QuietHandler):
    delay = 3.0

    def do_GET(self):
        time.sleep(self.delay)
        self._send(200, photos.read("chelsea"), [("Content-Type", "image/png")])


@pytest.fixture(scope="module")
def slow_photo():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SlowPhoto)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/photo.png"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def limited_server(cache_dir, server_logs):
    """One stats worker, one request admitted at a time, a 2 s deadline, loopback URLs allowed."""
    server = start_server(server_logs, "metrics-limits", CAPABILITIES="stats", WORKERS_PER_DEVICE=1,
                          STATS_MAX_QUEUE=1, REQUEST_TIMEOUT=2, FETCH_TIMEOUT=10, CACHE_DIR=cache_dir,
                          FETCH_ALLOW_NETWORKS="127.0.0.1/32", API_KEY=API_KEY)
    yield server
    server.stop()


def test_full_queue_503s_count_as_overload_one_for_one(limited_server):
    url, key = limited_server.url, {"X-API-Key": API_KEY}
    before = scrape(url, **key)
    image = photos.read("astronaut")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{url}/stats", files={"content": ("a.png", image)},
                                                      headers=key, timeout=60), range(16)))
    refused = sum(a.status_code == 503 for a in answers)
    assert refused >= 1 and refused + sum(a.status_code == 200 for a in answers) == 16
    after = scrape(url, **key)
    assert value(after, "imageserver_rejected_requests_total", reason="overload") - value(
        before, "imageserver_rejected_requests_total", reason="overload") == refused


def test_deadline_504_counts_as_timeout_and_its_slow_fetch_as_ok(limited_server, slow_photo):
    url, key = limited_server.url, {"X-API-Key": API_KEY}
    before = scrape(url, **key)
    answer = httpx.post(f"{url}/stats", json={"content": slow_photo}, headers=key, timeout=60)
    assert answer.status_code == 504, answer.text
    after = scrape(url, **key)
    assert value(after, "imageserver_rejected_requests_total", reason="timeout") - value(
        before, "imageserver_rejected_requests_total", reason="timeout") == 1
    assert value(after, "imageserver_url_fetches_total", outcome="ok") - value(
        before, "imageserver_url_fetches_total", outcome="ok") == 1


def test_metrics_need_the_api_key_like_any_route_not_in_public_routes(limited_server):
    assert httpx.get(f"{limited_server.url}/metrics", timeout=30).status_code == 401
    assert httpx.get(f"{limited_server.url}/metrics", headers={"X-API-Key": API_KEY}, timeout=30).status_code == 200


# ---------------------------------------------------------------- models: one embed worker

@pytest.fixture(scope="module")
def embed_server(cache_dir, server_logs):
    server = start_server(server_logs, "metrics-embed", CAPABILITIES="embed", WORKERS_PER_DEVICE=1,
                          EMBED_MAX_BATCH_SIZE=4, EMBED_BATCH_TIMEOUT=0.5, CACHE_DIR=cache_dir,
                          LOG_LEVEL="DEBUG", LOG_FORMAT="json")
    yield server
    server.stop()


def test_model_batch_sizes_forward_times_and_availability(embed_server):
    url = embed_server.url
    before = scrape(url)
    image = photos.read("chelsea")
    ids = [f"embed-{i}" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda rid: httpx.post(f"{url}/embed", files={"image_file": ("c.png", image)},
                                                        data={"model": "mobilenet_v2"}, headers={"X-Request-ID": rid},
                                                        timeout=120), ids))
    assert [a.status_code for a in answers] == [200] * 4
    after = scrape(url)
    images = value(after, "imageserver_model_batch_images_sum", model="mobilenet_v2") - value(
        before, "imageserver_model_batch_images_sum", model="mobilenet_v2")
    calls = value(after, "imageserver_model_batch_images_count", model="mobilenet_v2") - value(
        before, "imageserver_model_batch_images_count", model="mobilenet_v2")
    forwards = value(after, "imageserver_model_forward_seconds_count", model="mobilenet_v2") - value(
        before, "imageserver_model_forward_seconds_count", model="mobilenet_v2")
    assert images == 4 and 1 <= calls < 4 and forwards == calls  # batched: fewer forwards than images
    # each forward's debug line names the requests whose images it ran, all four once
    time.sleep(0.3)
    forward_lines = [entry for entry in map(json.loads, embed_server.log.read_text(errors="replace").splitlines())
                     if entry.get("stage") == "forward" and set(entry.get("request_id", "").split(",")) & set(ids)]
    named = [rid for entry in forward_lines for rid in entry["request_id"].split(",")]
    assert sorted(named) == ids and all(e["images"] == len(e["request_id"].split(",")) for e in forward_lines)
    assert value(after, "imageserver_model_forward_seconds_sum", model="mobilenet_v2") > 0
    assert value(after, "imageserver_model_available", model="mobilenet_v2") == 1
    for name in ("clip_vit_b_32", "dino_v2"):  # loaded or not (weights this machine may lack): 1 or 0, never left out
        assert value(after, "imageserver_model_available", model=name) in (0, 1)
        assert ("imageserver_model_available", (("model", name),)) in after


def test_metrics_false_leaves_the_route_out(tmp_path):
    import server
    from settings import Settings

    routes = {}
    for on in (True, False):
        built = server.build_server(Settings(capabilities=("stats",), metrics=on, data_dir=str(tmp_path / "data"),
                                             cache_dir=str(tmp_path / "cache")))
        try:
            routes[on] = {route.path for route in built.app.router.routes}
        finally:
            built.app.state.handoff.close()
    assert "/metrics" in routes[True] and "/metrics" not in routes[False]
