"""The server tree's resident memory over time, per process role.

Roles, from the tree server.py makes (LitServe 0.2.19): `main` (server.py itself); processes forked from
it, so with its command line: `manager` (multiprocessing's manager behind LitServe's queues, started
before the workers) and `http` (the uvicorn front ends, NUM_API_SERVERS, started after them; all inherit
the listening socket, so that does not tell them apart); `resource_tracker`; and the
spawned inference workers (`spawn_main` in their command line), one pool per capability, started in
CAPABILITIES order, WORKERS_PER_DEVICE each, so named `worker:<capability>` by start order. A worker
that appears later is a restart: it takes the role of the one that vanished.
"""

import os
import threading
import time

import psutil


class Tree:
    """Names each process of the tree once; `sample()` gives RSS (bytes) per pid and per role."""

    def __init__(self, root_pid: int, capabilities: list[str], workers_per_device: int):
        self.root = psutil.Process(root_pid)
        self.pools = [c for c in capabilities for _ in range(workers_per_device)]
        self.roles: dict[int, str] = {root_pid: "main"}
        self.restarts: list[tuple[float, int, str]] = []  # (time, new pid, role)
        self.started = time.monotonic()
        self._name(self.root.children(recursive=True), first=True)

    def _name(self, children, first: bool = False) -> None:
        workers, forked = [], []
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
                if "spawn_main" in cmdline:
                    workers.append(child)
                elif "resource_tracker" in cmdline:
                    self.roles[child.pid] = "resource_tracker"
                else:
                    forked.append(child)
            except psutil.NoSuchProcess:
                continue
        workers.sort(key=lambda p: (p.create_time(), p.pid))
        first_worker = workers[0].create_time() if workers else float("inf")
        for child in forked:
            self.roles[child.pid] = "manager" if first and child.create_time() < first_worker else "http"
        if first:
            for process, role in zip(workers, self.pools):
                self.roles[process.pid] = f"worker:{role}"
            for process in workers[len(self.pools):]:
                self.roles[process.pid] = "worker:?"
            return
        for process in workers:  # restarts: the role of a worker that is gone
            alive = {p.pid for p in self.root.children(recursive=True)}
            gone = [pid for pid, role in self.roles.items() if role.startswith("worker:") and pid not in alive]
            role = self.roles.pop(gone[0]) if gone else "worker:?"
            self.roles[process.pid] = role
            self.restarts.append((round(time.monotonic() - self.started, 1), process.pid, role))

    def sample(self) -> dict:
        """{"t": seconds since start, "load1": the machine's load, "pids": {pid: rss}, "roles": {role: rss summed}}."""
        children = self.root.children(recursive=True)
        new = [c for c in children if c.pid not in self.roles]
        if new:
            self._name(new)
        pids = {}
        for process in [self.root, *children]:
            try:
                pids[process.pid] = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        roles = {}
        for pid, rss in pids.items():
            role = self.roles.get(pid, "?")
            roles[role] = roles.get(role, 0) + rss
        return {"t": round(time.monotonic() - self.started, 1), "load1": round(os.getloadavg()[0], 2),
                "pids": pids, "roles": roles}


class Sampler:
    """Samples a Tree every `interval` seconds in a thread, from `start()` to `stop()`."""

    def __init__(self, tree: Tree, interval: float):
        self.tree, self.interval = tree, interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")

    def _loop(self) -> None:
        while True:
            try:
                self.samples.append(self.tree.sample())
            except psutil.NoSuchProcess:  # the server is gone: nothing more to sample
                return
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self.tree.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def at(samples: list[dict], seconds: float) -> dict | None:
    """The first sample taken at or after `seconds`; None when the run was shorter."""
    return next((s for s in samples if s["t"] >= seconds), None)


def growth(samples: list[dict], after: float) -> dict:
    """Per role (and "total"): RSS at `after` seconds and at the last sample, in MiB, and the growth in %;
    {} when the load did not run at least 30 s past `after`."""
    start, end = at(samples, after), samples[-1] if samples else None
    if start is None or end is None or end["t"] - start["t"] < 30:  # a shorter span says nothing of a trend
        return {}
    out = {}
    for role in sorted(set(start["roles"]) | set(end["roles"])) + ["total"]:
        a = sum(start["roles"].values()) if role == "total" else start["roles"].get(role, 0)
        b = sum(end["roles"].values()) if role == "total" else end["roles"].get(role, 0)
        out[role] = {"from_mib": round(a / 2**20, 1), "to_mib": round(b / 2**20, 1),
                     "growth_mib": round((b - a) / 2**20, 1), "growth_pct": round(100 * (b - a) / a, 2) if a else None}
    return out
