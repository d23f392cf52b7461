"""Inference workers under faults, on a real server with every capability and one worker each: a killed
worker is restarted while every other capability keeps serving, the requests it held get a prompt 503,
and SIGTERM or SIGINT stops the whole process tree within 10 s even under load."""

import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from telemetry.logs import worker_name
from tests import photos
from tests.conftest import start_server

CAPABILITIES = ("stats", "analyze", "embed", "search")
PROMPT = 5.0  # seconds: how soon after a kill every request the dead worker held must be answered


def request_for(capability: str):
    """(path, multipart files, form data) of one good request to `capability`."""
    image = photos.read("chelsea")
    if capability == "stats":
        return "/stats", {"content": ("c.png", image)}, {}
    if capability == "analyze":
        return "/analyze", {"image_file": ("c.png", image)}, {
            "tasks_json": '[{"operation_id": "e", "type": "embed_mobilenet_v2"}]'}
    if capability == "embed":
        return "/embed", {"image_file": ("c.png", image)}, {"model": "mobilenet_v2"}
    return "/search", {"image": ("c.png", image)}, {}


def send(url: str, capability: str, timeout: float = 30.0) -> httpx.Response:
    path, files, data = request_for(capability)
    return httpx.post(url + path, files=files, data=data, timeout=timeout)


def worker_pids(server_pid: int) -> set[int]:
    """The inference workers: LitServe spawns them (the HTTP processes and the manager are forked)."""
    found = set()
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def worker_of(server_pid: int, capability: str) -> int:
    """The one worker serving `capability`: each names its process after its capability."""
    named = [pid for pid in worker_pids(server_pid) if process_name(pid) == worker_name(capability)]
    assert len(named) == 1, (capability, {pid: process_name(pid) for pid in worker_pids(server_pid)})
    return named[0]


def process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except psutil.NoSuchProcess:
        return None


@pytest.fixture(scope="module")
def all_capabilities(cache_dir, server_logs, tmp_path_factory):
    server = start_server(
        server_logs, "workers", CAPABILITIES=",".join(CAPABILITIES), CACHE_DIR=cache_dir, WORKERS_PER_DEVICE=1,
        DATA_DIR=tmp_path_factory.mktemp("workers-data"), REQUEST_TIMEOUT=60,
    )
    yield server
    server.stop()


class Load:
    """`clients` threads sending good requests to one capability until stopped; every answer is kept."""

    def __init__(self, url: str, capability: str, clients: int = 3):
        self.url, self.capability = url, capability
        self.results = []  # (started, finished, status or exception name, Retry-After)
        self.unexpected = []  # (seconds, status, body) of answers other than 200 and 503
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                response = send(self.url, self.capability, timeout=90)
                outcome, retry = response.status_code, response.headers.get("retry-after")
                if outcome not in (200, 503):
                    self.unexpected.append((round(time.monotonic() - started, 2), outcome, response.text[:200]))
            except httpx.HTTPError as exc:
                outcome, retry = type(exc).__name__, None
            self.results.append((started, time.monotonic(), outcome, retry))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=120)


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_killed_worker_is_restarted_its_requests_get_503_and_the_rest_keeps_serving(all_capabilities, capability):
    url, server_pid = all_capabilities.url, all_capabilities.pid
    victim = worker_of(server_pid, capability)
    assert send(url, capability).status_code == 200
    others = [c for c in CAPABILITIES if c != capability]
    with Load(url, capability) as load:
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # while it restarts, every other capability answers
        for other in others:
            response = send(url, other)
            assert response.status_code == 200, (other, response.status_code, response.text[:300])
        deadline = time.monotonic() + 120
        replacement = set()
        while time.monotonic() < deadline:
            replacement = worker_pids(server_pid) - {victim}
            fresh = [r for r in load.results if r[0] > killed_at + 0.5 and r[2] == 200]
            if fresh:
                break
            time.sleep(0.5)
        time.sleep(1.0)
    assert victim not in worker_pids(server_pid)
    assert len(replacement) == len(CAPABILITIES), "one worker per capability again"
    outcomes = [r[2] for r in load.results]
    assert set(outcomes) <= {200, 503}, load.unexpected
    assert any(r[2] == 200 and r[0] > killed_at for r in load.results), "the capability serves again after the restart"
    for started, finished, outcome, retry in load.results:
        if started < killed_at < finished and outcome == 503:
            assert finished - killed_at < PROMPT, f"503 came {finished - killed_at:.1f} s after the kill"
            assert retry, "a 503 says when to retry"
    held = [r for r in load.results if r[0] < killed_at < r[1]]
    assert held, "a request was in flight when the worker was killed"
    # each held request either finished normally (it was still queued) or got the prompt 503
    assert all(r[2] == 200 or r[1] - killed_at < PROMPT for r in held), held
    assert "died" in all_capabilities.log_tail(20000)



def test_request_lost_to_a_worker_killed_while_idle_gets_503_while_those_queued_behind_it_are_served(all_capabilities):
    """A worker killed while waiting for work leaves the queue's manager to hand the next request to a dead
    socket: that request never starts. It must get its 503 promptly even while later requests wait in
    the queue for the replacement worker (and those must be served, not refused)."""
    url, server_pid = all_capabilities.url, all_capabilities.pid
    victim = worker_of(server_pid, "search")
    time.sleep(0.5)  # idle: blocked in the queue's get
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    time.sleep(0.2)
    answers = []

    def ask():
        response = send(url, "search", timeout=90)
        answers.append((time.monotonic() - killed_at, response.status_code))

    clients = []
    for _ in range(3):
        clients.append(threading.Thread(target=ask))
        clients[-1].start()
        time.sleep(0.05)  # in order: the first is the one the manager hands to the dead worker
    for client in clients:
        client.join(timeout=120)
    refused = [a for a in answers if a[1] == 503]
    assert len(answers) == 3 and set(a[1] for a in answers) <= {200, 503}, answers
    # one is lost unless the kill fell in the instant between two of the worker's gets
    assert len(refused) <= 1, f"only the lost request is refused: {answers}"
    assert all(seconds < PROMPT for seconds, _ in refused), f"the lost request's 503 came late: {answers}"
    deadline = time.monotonic() + 120
    while len(worker_pids(server_pid)) < len(CAPABILITIES) and time.monotonic() < deadline:
        time.sleep(0.5)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_whole_tree_within_10_s_under_load(cache_dir, server_logs, signum):
    server = start_server(server_logs, f"stop-{signum.name}", CAPABILITIES="stats,embed", CACHE_DIR=cache_dir,
                          WORKERS_PER_DEVICE=1)
    try:
        tree = _tree(server.pid)
        with Load(server.url, "stats", clients=4), Load(server.url, "embed", clients=4):
            time.sleep(1.5)
            sent = time.monotonic()
            os.kill(server.pid, signum)  # the main process only, as a process manager does
            gone, alive = psutil.wait_procs(tree, timeout=10)
            elapsed = time.monotonic() - sent
        assert not alive, f"{[p.pid for p in alive]} still alive {elapsed:.1f} s after {signum.name}"
    finally:
        server.stop()
