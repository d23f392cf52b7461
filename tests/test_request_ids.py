"""Request ids in the answers and in the log lines of every process that handles the request, against a
real server (two HTTP processes, two workers per capability) logging LOG_FORMAT=json at DEBUG; and the two
line formats on real log records."""

import json
import logging
import re
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from telemetry.logs import JsonFormatter, RequestIdFilter, TextFormatter, request_id
from tests import photos
from tests.conftest import ROOT, server_env, start_server
from tests.test_workers import worker_pids

REQUIRED = {"time", "level", "logger", "pid", "message"}


@pytest.fixture(scope="module")
def json_server(cache_dir, server_logs, tmp_path_factory):
    server = start_server(
        server_logs, "request-ids", CAPABILITIES="stats,search", SEARCH_MODELS="none", NUM_API_SERVERS=2,
        WORKERS_PER_DEVICE=2, STATS_MAX_BATCH_SIZE=4, CACHE_DIR=cache_dir, LOG_LEVEL="DEBUG", LOG_FORMAT="json",
        DATA_DIR=tmp_path_factory.mktemp("request-ids-data"), FETCH_ALLOW_NETWORKS="",
    )
    yield server
    server.stop()


def lines_about(server, rid: str, wait_for: str = "imageserver.access") -> list[dict]:
    """The server's JSON lines naming request `rid`, once its access line (written last) is there."""
    deadline = time.monotonic() + 10
    while True:
        entries = [json.loads(line) for line in server.log.read_text(errors="replace").splitlines()
                   if rid in line]
        mine = [e for e in entries if rid in e.get("request_id", "").split(",")]
        if any(e["logger"] == wait_for for e in mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.2)


def test_the_id_sent_comes_back_and_one_is_made_when_none_or_an_unusable_one_is_sent(json_server):
    url, image = json_server.url, photos.read("chelsea")
    sent = httpx.post(f"{url}/stats", files={"content": ("c.png", image)}, headers={"X-Request-ID": "ops.42-a_b"},
                      timeout=60)
    assert sent.status_code == 200 and sent.headers["x-request-id"] == "ops.42-a_b"
    made = httpx.post(f"{url}/stats", files={"content": ("c.png", image)}, timeout=60)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    unusable = httpx.post(f"{url}/stats", files={"content": ("c.png", image)},
                          headers={"X-Request-ID": "two words\tand a tab"}, timeout=60)
    assert re.fullmatch(r"[0-9a-f]{32}", unusable.headers["x-request-id"])
    refused = httpx.post(f"{url}/stats", content=b"not an image", headers={"X-Request-ID": "refused-1",
                                                                             "Content-Type": "image/png"}, timeout=60)
    assert refused.status_code == 415 and refused.headers["x-request-id"] == "refused-1"


def test_worker_log_lines_carry_the_request_id_sent(json_server):
    rid = "worker-line-1"
    answer = httpx.post(f"{json_server.url}/stats", files={"content": ("c.png", photos.read("coffee"))},
                        headers={"X-Request-ID": rid}, timeout=60)
    assert answer.status_code == 200
    entries = lines_about(json_server, rid)
    workers = worker_pids(json_server.pid)
    in_workers = [e for e in entries if e["pid"] in workers]
    assert any(e["stage"] == "decode" and e["capability"] == "stats" and e["seconds"] > 0
               for e in in_workers if "stage" in e), entries
    access = [e for e in entries if e["logger"] == "imageserver.access"]
    assert len(access) == 1 and access[0]["pid"] not in workers and access[0]["pid"] != json_server.pid
    assert access[0]["route"] == "/stats" and access[0]["status"] == 200 and access[0]["duration_s"] > 0


def test_an_add_logs_its_decode_and_index_stages_in_the_worker_under_its_id(json_server):
    rid = "add-stages-1"
    answer = httpx.post(f"{json_server.url}/add", files={"image": ("c.png", photos.read("chelsea"))},
                        data={"filepath": "ids/chelsea.png"}, headers={"X-Request-ID": rid}, timeout=60)
    assert answer.status_code == 200, answer.text
    workers = worker_pids(json_server.pid)
    stages = {(e["stage"], e.get("operation")) for e in lines_about(json_server, rid)
              if "stage" in e and e["pid"] in workers}
    assert ("decode", None) in stages and ("store", "add") in stages, stages


def test_a_refused_url_fetch_is_logged_in_the_http_process_under_its_id(json_server):
    rid = "fetch-line-1"
    answer = httpx.post(f"{json_server.url}/stats", json={"content": "http://10.0.0.1/photo.png"},
                        headers={"X-Request-ID": rid}, timeout=60)
    assert answer.status_code == 400
    fetches = [e for e in lines_about(json_server, rid) if e.get("stage") == "fetch"]
    assert [e["outcome"] for e in fetches] == ["blocked"]


def test_every_line_of_every_process_is_one_json_object(json_server):
    httpx.get(f"{json_server.url}/health", timeout=30)
    pids = set()
    for number, line in enumerate(json_server.log.read_text(errors="replace").splitlines(), 1):
        entry = json.loads(line)  # raises on a line that is not JSON, naming it
        assert isinstance(entry, dict) and REQUIRED <= entry.keys(), (number, line)
        pids.add(entry["pid"])
    children = {p.pid for p in psutil.Process(json_server.pid).children(recursive=True)}
    # the main process, both HTTP processes and the workers all wrote some
    assert json_server.pid in pids and len(pids & worker_pids(json_server.pid)) >= 1
    assert len(pids & (children - worker_pids(json_server.pid))) >= 2


def test_a_configuration_error_is_one_json_line_too():
    result = subprocess.run([sys.executable, "server.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False, env=server_env(LOG_FORMAT="json", PORT="eighty"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message"].startswith("configuration error: PORT='eighty'")


# ---------------------------------------------------------------- the two formats, on real records

def _record(message: str, exc_info=None) -> logging.LogRecord:
    record = logging.getLogger("imageserver.test").makeRecord(
        "imageserver.test", logging.ERROR, __file__, 1, message, (), exc_info)
    RequestIdFilter().filter(record)
    return record


def test_text_lines_put_the_request_id_in_brackets_and_leave_it_out_when_there_is_none():
    token = request_id.set("abc-1")
    try:
        tagged = TextFormatter().format(_record("hello"))
    finally:
        request_id.reset(token)
    assert re.search(r" ERROR \d+ imageserver\.test \[abc-1\]: hello$", tagged)
    assert re.search(r" ERROR \d+ imageserver\.test: hello$", TextFormatter().format(_record("hello")))


def test_a_json_line_keeps_a_traceback_and_a_batch_of_ids_on_one_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        exc_info = sys.exc_info()
    token = request_id.set("r1,r2")
    try:
        line = JsonFormatter().format(_record("batch failed", exc_info))
    finally:
        request_id.reset(token)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["request_id"] == "r1,r2" and entry["request_ids"] == ["r1", "r2"]
    assert "ValueError: boom" in entry["exception"] and entry["level"] == "ERROR"
