"""/stats benchmark: throughput and latency of server.py against a decode floor and the baseline.

The baseline is the original /stats algorithm (bench/baseline_stats.py); "seed" in the names and JSON keys
below means it.

Run from the repository root: `.venv/bin/python -m bench.stats` (`make bench`). See bench/README.md.
"""

import argparse
import asyncio
import datetime
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import psutil
from PIL import Image

from bench import baseline_stats, loadgen
from bench.serve import HOST, ROOT, free_port, machine, running_server
from settings import VARIABLES
from tests import photos

WORKERS = (1, 2)
CONCURRENCY = (1, 4, 16)
SEED_RPS = {1: 3.2, 2: 6.2}  # the baseline's published figures on this machine (rps, c=16)
GOAL_VS_SEED, GOAL_LATENCY_VS_FLOOR = 20.0, 1.5


def floor_ms(corpus: dict[str, bytes], repeats: int) -> dict[str, float]:
    """What any /stats server must do per photo: decode to 512 px, as Pillow's thumbnail does it.

    Not a strict lower bound: thumbnail's reducing_gap=2 drafts a JPEG to >= 1024 px, so a server that
    drafts to >= 512 px can beat it on JPEGs over 1024 px (retina, xmp_camera)."""
    def once(data):
        image = Image.open(io.BytesIO(data))
        image.thumbnail((512, 512))
        image.load()

    for data in corpus.values():
        once(data)  # first calls warm Pillow's plugin imports and the allocator
    # passes over the whole corpus rather than one photo at a time: a burst of other work on the
    # machine then spreads over every photo instead of inflating a few
    total = dict.fromkeys(corpus, 0.0)
    for _ in range(repeats):
        for name, data in corpus.items():
            start = time.perf_counter()
            once(data)
            total[name] += time.perf_counter() - start
    return {name: seconds / repeats * 1000 for name, seconds in total.items()}


def server_env(workers: int, port: int) -> dict:
    """The caller's environment (so a setting can be benchmarked), with what the bench relies on fixed."""
    env = dict(os.environ, PORT=str(port), HOST=HOST, WORKERS_PER_DEVICE=str(workers), LOG_LEVEL="WARNING",
               ACCELERATOR="cpu", THUMBNAIL_SIZE="512")
    env.pop("API_KEY", None)  # the bench sends no key
    return env


def server(workers: int, port: int):
    return running_server(server_env(workers, port), timeout=180.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (the HTTP process, manager and workers)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def load(pid: int, port: int, requests: list[bytes], concurrency: int, total: int):
    """Run the load; also return the server's and this client's CPU ms per request, since on two cores
    the client's share is taken from the server."""
    server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
    result = asyncio.run(loadgen.run(HOST, port, requests, concurrency, total))
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
    return result, server_cpu * 1000 / total, client_cpu * 1000 / total


def per_photo_ms(result: loadgen.Result, names: list[str]) -> dict[str, float]:
    by_index = {}
    for i, seconds in zip(result.indices, result.latencies):
        by_index.setdefault(i, []).append(seconds * 1000)
    return {names[i]: statistics.fmean(v) for i, v in sorted(by_index.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passes", type=int, nargs=2, default=(5, 20), metavar=("C1", "CN"),
                        help="passes over the corpus at concurrency 1, and at 4 and 16 (default 5 20)")
    parser.add_argument("--floor-repeats", type=int, default=10)
    parser.add_argument("--baseline-passes", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    corpus = photos.corpus()
    names = list(corpus)
    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}, {info['memory_gib']} GiB; Python {info['python']}, "
          f"Pillow {info['pillow']}, numpy {info['numpy']}; load average {info['load_average_at_start']}")
    print(f"corpus: {len(corpus)} photos, {sum(map(len, corpus.values())) / 1e6:.1f} MB\n")

    # In-process measurements first, while no server competes for the two cores.
    floor = floor_ms(corpus, args.floor_repeats)
    seed = baseline_stats.measure(corpus, args.baseline_passes)
    failed = [n for n, ms in seed.items() if math.isnan(ms)]  # the baseline's code raised on this photo
    floor_mean = statistics.fmean(floor.values())
    seed_mean = statistics.fmean(ms for ms in seed.values() if not math.isnan(ms))

    # Requests are encoded once, so the client spends its CPU on sockets only (see loadgen.py).
    runs, single = [], {}
    print(f"{'workers':>7} {'conc':>5} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>8}"
          f" {'srv CPU ms/req':>15} {'client CPU ms/req':>18}")
    for workers in WORKERS:
        port = free_port()
        requests = [loadgen.multipart_request(HOST, port, "/stats", "content", n, d) for n, d in corpus.items()]
        with server(workers, port) as proc:
            load(proc.pid, port, requests, workers, len(requests))  # warm-up: imports, bin table pages, allocator
            for concurrency in CONCURRENCY:
                total = len(requests) * (args.passes[0] if concurrency == 1 else args.passes[1])
                result, server_cpu, client_cpu = load(proc.pid, port, requests, concurrency, total)
                bad = total - result.statuses.get(200, 0)
                row = {"workers": workers, "concurrency": concurrency, "requests": total, "rps": result.rps,
                       "p50_ms": result.percentile(50) * 1000, "p99_ms": result.percentile(99) * 1000,
                       "non_200": bad, "statuses": result.statuses,
                       "server_cpu_ms_per_request": server_cpu, "client_cpu_ms_per_request": client_cpu}
                runs.append(row)
                print(f"{workers:>7} {concurrency:>5} {total:>8} {row['rps']:>8.1f} {row['p50_ms']:>8.1f} "
                      f"{row['p99_ms']:>8.1f} {bad:>8} {server_cpu:>15.1f} {client_cpu:>18.1f}")
                for status, body in result.errors:
                    print(f"        {status}: {body.decode(errors='replace')}")
                if workers == 1 and concurrency == 1:
                    single = per_photo_ms(result, names)

    rps = {(r["workers"], r["concurrency"]): r["rps"] for r in runs}
    latency_mean = statistics.fmean(single.values())
    print(f"\n{'photo':<20} {'floor ms':>9} {'ours ms':>9} {'ours/floor':>10} {'base ms':>9}   (ours: w=1, c=1)")
    for name in names:
        print(f"{name:<20} {floor[name]:>9.1f} {single[name]:>9.1f} {single[name] / floor[name]:>10.2f} "
              f"{seed[name]:>9.1f}")
    print(f"{'mean':<20} {floor_mean:>9.1f} {latency_mean:>9.1f} {latency_mean / floor_mean:>10.2f} {seed_mean:>9.1f}")

    print(f"\nfloor (open + thumbnail 512 + load, in process): {floor_mean:.1f} ms/photo -> ceiling "
          f"{1000 / floor_mean:.0f} req/s on 1 core, {2000 / floor_mean:.0f} req/s on 2 cores")
    print(f"baseline (bench/baseline_stats.py, in process): {seed_mean:.1f} ms/photo -> at most "
          f"{1000 / seed_mean:.1f} req/s with 1 worker, {2000 / seed_mean:.1f} with 2 (no HTTP counted)"
          + (f"; raised on {', '.join(failed)}" if failed else ""))
    print("single request (w=1, c=1): client-side latency over loopback, an upper bound of server time")

    ratios = {
        "latency_vs_floor": latency_mean / floor_mean,
        **{f"vs_seed_published_w{w}": rps[(w, 16)] / SEED_RPS[w] for w in WORKERS},
        **{f"vs_baseline_w{w}": rps[(w, 16)] / (1000 / seed_mean * w) for w in WORKERS},
    }
    print("\nratios (ours at concurrency 16)")
    for w in WORKERS:
        ok = "ok" if ratios[f"vs_seed_published_w{w}"] >= GOAL_VS_SEED else "BELOW GOAL"
        print(f"  {w} worker(s): {rps[(w, 16)]:6.1f} req/s = {ratios[f'vs_seed_published_w{w}']:5.1f}x the baseline's "
              f"published {SEED_RPS[w]} req/s (goal >= {GOAL_VS_SEED:.0f}x: {ok}); "
              f"{ratios[f'vs_baseline_w{w}']:5.1f}x the baseline measured here ({1000 / seed_mean * w:.1f} req/s)")
    ok = "ok" if ratios["latency_vs_floor"] <= GOAL_LATENCY_VS_FLOOR else "ABOVE GOAL"
    print(f"  single-request latency / floor: {latency_mean:.1f} / {floor_mean:.1f} ms = "
          f"{ratios['latency_vs_floor']:.2f}x (goal <= {GOAL_LATENCY_VS_FLOOR}x: {ok})")

    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    settings_env = {k: v for k, v in server_env(0, 0).items() if k in VARIABLES and k != "PORT"}
    report = {
        "date": datetime.date.today().isoformat(), "machine": info, "args": vars(args),
        "server_env": dict(settings_env, WORKERS_PER_DEVICE=list(WORKERS)),
        "runs": runs, "floor_ms": floor, "seed_ms": seed, "single_request_ms": single, "seed_failed": failed,
        "summary": {"floor_mean_ms": floor_mean, "seed_mean_ms": seed_mean, "single_request_mean_ms": latency_mean,
                    "seed_published_rps": SEED_RPS, **ratios},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"stats-{report['date']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if any(r["non_200"] for r in runs):
        sys.exit(1)  # a benchmark of failing requests is not a result


if __name__ == "__main__":
    main()
