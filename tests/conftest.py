"""Shared fixtures: the real server process (started once per session), a second allow-listed one
(started only by the modules that ask for it) and a loopback HTTP server that serves real photos.

Test tiers (markers registered in pyproject.toml): a test that starts a server process is marked `server`
and one that drives a browser `browser`, here at collection, from its own source and its fixtures' (see
pytest_collection_modifyitems); `slow` is written by hand on in-process tests that cost seconds each.
`make test-fast` runs `-m "not server and not browser and not slow"` with IMAGESERVER_FAST_TIER=1, under
which starting a server or a browser raises, so a test the marking missed fails loudly instead of running."""

import functools
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from settings import VARIABLES
from tests import photos
from tests.store_backends import BACKENDS, dispose

ROOT = Path(__file__).resolve().parent.parent
HEALTH_TIMEOUT = 120.0

# the main server's configuration (tests read the limits from here)
MAIN_ENV = {
    "WORKERS_PER_DEVICE": "2",
    "STATS_MAX_BATCH_SIZE": "4",
    "STATS_BATCH_TIMEOUT": "0.05",
    "MAX_UPLOAD_BYTES": "8MB",
    "MAX_IMAGE_PIXELS": "40000000",
    "FETCH_ALLOW_NETWORKS": "",
}
MAX_UPLOAD_BYTES = 8_000_000
API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(**overrides) -> dict:
    """os.environ without any of our variables (a developer's API_KEY must not leak in), plus overrides."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update({k: str(v) for k, v in overrides.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to server.py (its graceful shutdown stops LitServe's workers, manager and uvicorn and
        removes its hand-off folder), then SIGKILL to whatever of the process group is left."""
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the group (children outlive a main process that exited)
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait(timeout=10)


def start_server(log_dir: Path, name: str, script: str = "server.py", **overrides) -> ServerProcess:
    """Start `server.py` (or a test launcher of it) on a free loopback port; wait until GET /health answers
    {"status": "Healthy"} (every worker ready)."""
    _refuse_in_fast_tier("server", [script])
    port = free_port()
    # the /stats tests need no models: CAPABILITIES=stats unless a test asks for more; never download
    defaults = {"CAPABILITIES": "stats", "ALLOW_DOWNLOADS": "false"}
    env = server_env(**{"HOST": "127.0.0.1", "PORT": port, "LOG_LEVEL": "WARNING", **defaults, **overrides})
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, script], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            # a test run started in the background has SIGINT ignored, and children inherit that: the
            # server must get Ctrl+C's default behaviour for the SIGINT tests to mean anything
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + HEALTH_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server {name} exited with {process.returncode}:\n{server.log_tail()}")
            try:
                response = httpx.get(f"{server.url}/health", timeout=2)
                if response.status_code == 200 and response.text.startswith("{") and \
                        response.json() == {"status": "Healthy"}:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {name} not healthy after {HEALTH_TIMEOUT} s:\n{server.log_tail()}")
            time.sleep(0.25)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """CACHE_DIR shared by every server start and the in-process model (the first user builds the table)."""
    return str(tmp_path_factory.mktemp("imageserver-cache"))


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def server_process(cache_dir, server_logs):
    """The main server: 2 workers, batches of up to 4, loopback URLs forbidden."""
    server = start_server(server_logs, "main", CACHE_DIR=cache_dir, **MAIN_ENV)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server(server_process) -> str:
    """Base URL of the main server."""
    return server_process.url


@pytest.fixture(scope="module")
def allowlisted_server(cache_dir, server_logs, server_process):
    """A second server that may fetch from 127.0.0.1 and requires X-API-Key; one worker, no batching.

    Depends on the main server so that the main one builds the colour table first.
    """
    server = start_server(
        server_logs, "allowlisted", CACHE_DIR=cache_dir, WORKERS_PER_DEVICE=1,
        FETCH_ALLOW_NETWORKS="127.0.0.1/32", API_KEY=API_KEY, MAX_UPLOAD_BYTES="8MB",
    )
    yield server
    server.stop()


# ---------------------------------------------------------------- the loopback photo server

TEXT_BODY = b"this is a plain text file, not an image\n" * 4


class QuietHandler(BaseHTTPRequestHandler):
    """A loopback test server's handler: HTTP/1.1 (so chunked answers are possible), no request log."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _PhotoHandler(QuietHandler):

    def do_GET(self):
        port = self.server.server_address[1]
        path = self.path.split("?")[0]
        if path.startswith("/photo/"):
            name = path.rsplit("/", 1)[1]
            try:
                data = photos.read(name)
            except KeyError:
                return self._send(404, b"no such photo")
            return self._send(200, data, [("Content-Type", "image/jpeg")])
        if path == "/text":
            return self._send(200, TEXT_BODY, [("Content-Type", "text/plain")])
        if path == "/redirect-private":
            return self._send(302, headers=[("Location", "http://10.0.0.1/x")])
        if path.startswith("/redirect-loopback/"):  # to the same server, by its loopback address
            name = path.rsplit("/", 1)[1]
            return self._send(302, headers=[("Location", f"http://127.0.0.1:{port}/photo/{name}")])
        if path == "/redirect-other-loopback":  # 127.0.0.2 is loopback but outside 127.0.0.1/32
            return self._send(302, headers=[("Location", f"http://127.0.0.2:{port}/photo/canon")])
        return self._send(404, b"not found")


@dataclass
class PhotoServer:
    url: str
    port: int


@pytest.fixture(scope="session")
def photo_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _PhotoHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # quick shutdown
    thread.start()
    port = httpd.server_address[1]
    yield PhotoServer(f"http://127.0.0.1:{port}", port)
    httpd.shutdown()
    httpd.server_close()


# Store fixtures, one run per backend in tests/store_backends.py (the contract and the gallery tests)

@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request, tmp_path):
    """factory() -> a Store on this test's directory; a second call reopens the same data."""
    opened = []

    def factory():
        opened.append(BACKENDS[request.param](tmp_path))
        return opened[-1]

    yield factory
    for made in opened:
        dispose(made)


@pytest.fixture
def store(store_factory):
    return store_factory()


# ---------------------------------------------------------------- test tiers

FAST_TIER = os.environ.get("IMAGESERVER_FAST_TIER") == "1"

# what, in a test's, fixture's or helper's source, starts a server process or a browser (false positives
# only move a test to `make test`; what this misses, the fast tier's guard below catches)
STARTS = {
    "server": re.compile(r"\bstart_server\(|[\"'/]server\.py[\"']|\w+_server(_main)?\.py[\"']"),
    "browser": re.compile(r"\bsync_playwright\(|\bchromium\.launch\("),
}
# what, in a command line, is a server process or a browser (the fast tier's guard on subprocess.Popen)
COMMANDS = {
    "server": re.compile(r"(^|/)(server|\w+_server|\w+_server_main)\.py$"),
    "browser": re.compile(r"playwright|chrom(e|ium)", re.IGNORECASE),
}


def _refuse_in_fast_tier(kind: str, command) -> None:
    if FAST_TIER:
        raise RuntimeError(
            f"IMAGESERVER_FAST_TIER=1 (make test-fast) and this test starts a {kind} process ({' '.join(command)}): "
            f"mark it pytest.mark.{kind} (tests/conftest.py marks what calls start_server or sync_playwright)")


class _FastTierPopen(subprocess.Popen):
    """subprocess.Popen that refuses server.py, its test launchers, Playwright's driver and chromium."""

    def __init__(self, args, *rest, **kwargs):
        command = [str(args)] if isinstance(args, (str, bytes, os.PathLike)) else [str(a) for a in args]
        for kind, pattern in COMMANDS.items():
            if any(pattern.search(part) for part in command):
                _refuse_in_fast_tier(kind, command)
        super().__init__(args, *rest, **kwargs)


def pytest_configure(config):
    if FAST_TIER:  # asyncio (Playwright's driver) and subprocess.run look subprocess.Popen up at each call
        subprocess.Popen = _FastTierPopen


def _source(obj) -> str:
    unwrap = getattr(obj, "_get_wrapped_function", None)  # a @pytest.fixture object, not its function
    if unwrap is not None:
        obj = unwrap()
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


_MODULE_STARTERS: dict = {}


def _starters(module) -> dict[str, set[str]]:
    """Per kind, the names of the module's own functions and classes that start one, directly or through
    another of them (test_bad_inputs' Runner, test_web_page's indexed_server)."""
    if module.__name__ not in _MODULE_STARTERS:
        sources = {name: _source(value) for name, value in vars(module).items()
                   if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module.__name__}
        found = {}
        for kind, pattern in STARTS.items():
            names = {name for name, text in sources.items() if pattern.search(text)}
            while True:
                calls = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\(") if names else None
                more = {name for name, text in sources.items() if calls and name not in names and calls.search(text)}
                if not more:
                    break
                names |= more
            found[kind] = names
        _MODULE_STARTERS[module.__name__] = found
    return _MODULE_STARTERS[module.__name__]


@functools.cache
def _starts(function, kind: str) -> bool:
    text = _source(function)
    if STARTS[kind].search(text):
        return True
    module = inspect.getmodule(function)
    names = _starters(module)[kind] if module else set()
    return any(re.search(rf"\b{re.escape(name)}\(", text) for name in names)


def pytest_collection_modifyitems(config, items):
    """Marks `server` / `browser` every test whose own source, or one of whose fixtures' (all it depends on,
    conftest's server_process and allowlisted_server included), starts a server process / a browser."""
    for item in items:
        functions = [getattr(item, "function", None)]
        info = getattr(item, "_fixtureinfo", None)
        for name in item.fixturenames:
            for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
                functions.append(fixturedef.func)
        for kind in STARTS:
            if kind not in {mark.name for mark in item.iter_markers()} and any(
                    f is not None and _starts(f, kind) for f in functions):
                item.add_marker(kind)
