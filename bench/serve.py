"""What every benchmark shares: the machine's description, a free loopback port, and server.py started
in its own process group, healthy before the first request and stopped cleanly after the last."""

import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback: measures the server, not a network


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().split() if Path("/proc/meminfo").exists() else ["", "0"]
    return {
        "cores": os.cpu_count(), "cpu": model, "memory_gib": round(int(meminfo[1]) / 1024**2, 1),
        "python": platform.python_version(), "pillow": PIL.__version__, "numpy": np.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def running_process(command: list, env: dict, ready, what: str, timeout: float, *, group_term: bool = False):
    """`command` in its own process group, yielding its Popen once `ready()` is true (exit with its log if it
    dies or `timeout` passes first). Stopped with SIGTERM (to the process, or its whole group when
    `group_term`), then SIGKILL to whatever is left of the group."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                sys.exit(f"{what} did not start:\n{log.read()[-3000:].decode(errors='replace')}")
            time.sleep(0.25)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM) if group_term else proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()


@contextmanager
def running_server(env: dict, timeout: float = 300.0):
    """server.py with `env` (PORT and HOST included), yielding its Popen once GET /health answers Healthy.

    SIGTERM makes server.py take LitServe's graceful shutdown (workers stopped, its /dev/shm folder removed)."""
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://{env['HOST']}:{env['PORT']}/health", timeout=2) as response:
                return response.read() == b'{"status":"Healthy"}'
        except OSError:  # not listening yet
            return False

    with running_process([sys.executable, "server.py"], env, healthy, "server.py", timeout) as proc:
        yield proc
