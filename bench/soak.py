"""Soak: mixed traffic over every route for minutes, from this process to server.py on loopback.

Reports throughput, p50/p99 per route, answers not expected (by status), and the server tree's RSS over
time per process role, with its growth after the first 30 s and after the first minute. Goal: zero 5xx,
and RSS growth after the first minute under 5%. Exits 1 on any 5xx or connection failure.

Run from the repository root: `.venv/bin/python -m bench.soak` (`make bench-soak`: 10 minutes, 32 clients);
`--minutes 1` for a quick run. See bench/README.md, "Soak".
"""

import argparse
import asyncio
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import soak_traffic
from bench.serve import HOST, ROOT, free_port, machine, running_server
from bench.soak_memory import Sampler, Tree, at, growth
from bench.soak_setup import prepare_models, server_env
from tests import photos

GOAL_GROWTH_PCT = 5.0


def percentile(values: list, p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def route_rows(tally: soak_traffic.Tally, seconds: float) -> list[dict]:
    rows = []
    for label in sorted(tally.latencies, key=lambda l: (l.split(" ", 1)[1:], l)):
        lat = tally.latencies[label]
        statuses = tally.statuses[label]
        expected = tally.expected.get(label, soak_traffic.OK)
        rows.append({"route": label, "requests": len(lat), "rps": round(len(lat) / seconds, 3),
                     "p50_ms": round(percentile(lat, 50) * 1000, 1), "p99_ms": round(percentile(lat, 99) * 1000, 1),
                     "statuses": {str(k): v for k, v in sorted(statuses.items())},
                     "expected": sorted(expected),
                     "unexpected": sum(v for k, v in statuses.items() if k not in expected),
                     "skipped_at_cap": tally.skipped.get(label, 0),
                     "connection_failures": tally.failures.get(label, 0)})
    return rows


def print_report(rows, seconds, samples, idle, tree, growths) -> None:
    total = sum(r["requests"] for r in rows)
    print(f"\n{'route':<44} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses (expected)")
    for r in rows:
        mark = "" if not r["unexpected"] else "  <- unexpected"
        print(f"{r['route']:<44} {r['requests']:>8} {r['rps']:>7.2f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f}  "
              f"{' '.join(f'{k}:{v}' for k, v in r['statuses'].items())} ({','.join(map(str, r['expected']))}){mark}")
    print(f"{'all':<44} {total:>8} {total / seconds:>7.2f}")
    print("\nRSS per role, MiB (samples at load start, 30 s, 60 s, the end of the load, and after it idled)")
    points = [("start", samples[0]), ("30 s", at(samples, 30)), ("60 s", at(samples, 60)), ("end", samples[-1]),
              ("idle", idle)]
    points = [(name, s) for name, s in points if s is not None]
    roles = sorted({role for _, s in points for role in s["roles"]})
    print(f"{'role':<22}" + "".join(f"{name:>10}" for name, _ in points)
          + "".join(f"{'growth ' + k:>18}" for k in growths))
    for role in roles + ["total"]:
        cells = "".join(f"{(sum(s['roles'].values()) if role == 'total' else s['roles'].get(role, 0)) / 2**20:>10.0f}"
                        for _, s in points)
        grow = "".join(f"{g[role]['growth_mib']:>+9.0f} {g[role]['growth_pct']:>+6.1f}%" if role in g and
                       g[role]["growth_pct"] is not None else f"{'-':>18}" for g in growths.values())
        print(f"{role:<22}{cells}{grow}")
    print(f"load average (1 min) during the load: {min(s['load1'] for s in samples):.1f}-"
          f"{max(s['load1'] for s in samples):.1f}")
    for when, pid, role in tree.restarts:
        print(f"worker restarted: {role} pid {pid} at {when} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (default 10)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive clients (default 32)")
    parser.add_argument("--pool-cap", type=int, default=2,
                        help="at most this many requests in flight per model pool (analyze, embed, search, "
                             "background; 0: no cap); /stats is not capped (default 2)")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling interval (default 5)")
    parser.add_argument("--idle-seconds", type=float, default=15.0,
                        help="after the load, wait this long and sample once more: what an idle server keeps")
    parser.add_argument("--routes", default="", help="a regular expression: only the actions whose label matches "
                                                     "(to isolate a leak: 'search|similar|add')")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra server variables")
    parser.add_argument("--tag", default="", help="appended to the JSON's name: soak-<date>-<tag>.json")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}, {info['memory_gib']} GiB; Python {info['python']}; "
          f"load average {info['load_average_at_start']}")
    corpus = photos.corpus()
    model_dir = prepare_models()
    data_dir = Path(tempfile.mkdtemp(prefix="imageserver-soak-"))
    env = server_env(free_port(), model_dir, data_dir, **dict(e.split("=", 1) for e in args.env))
    port = int(env["PORT"])
    from settings import VARIABLES, load_settings

    settings_env = {k: env[k] for k in sorted(env) if k in VARIABLES or k.startswith("MALLOC_")}
    settings = load_settings(env)
    mix = soak_traffic.build_mix(HOST, port, corpus, settings.max_upload_bytes)
    if args.routes:
        mix = [a for a in mix if re.search(args.routes, a.label)]
    print(f"{len(corpus)} photos; {len(mix)} actions; {args.clients} clients for {args.minutes} min; data in {data_dir}")

    with running_server(env, timeout=600.0) as proc:
        tree = Tree(proc.pid, list(settings.capabilities), settings.workers_per_device)
        print("server tree: " + ", ".join(f"{role} {pid}" for pid, role in sorted(tree.roles.items())))
        # every action once, so the models have loaded and run before the first sample
        warm = asyncio.run(soak_traffic.warm_up(HOST, port, mix))
        print(f"warm-up, each action once: {dict(warm)}")
        tally = soak_traffic.Tally()
        sampler = Sampler(tree, args.sample_seconds)
        sampler.start()
        seconds = asyncio.run(soak_traffic.run(HOST, port, mix, args.clients, args.minutes * 60, tally,
                                                      args.pool_cap))
        sampler.stop()
        samples = sampler.samples + [tree.sample()]
        time.sleep(args.idle_seconds)
        idle = tree.sample()
        info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    shutil.rmtree(data_dir, ignore_errors=True)

    rows = route_rows(tally, seconds)
    growths = {"after 30 s": growth(samples, 30), "after 60 s": growth(samples, 60)}
    print_report(rows, seconds, samples, idle, tree, growths)
    statuses = {}
    for r in rows:
        for k, v in r["statuses"].items():
            if k not in map(str, r["expected"]) or k[0] != "2":
                statuses[k] = statuses.get(k, 0) + v
    five = sum(v for k, v in statuses.items() if k.startswith("5"))
    failures = sum(tally.failures.values())
    total_growth = growths["after 60 s"].get("total", {}).get("growth_pct")
    print(f"\nnon-2xx by status (expected and not): {dict(sorted(statuses.items()))}; connection failures: {failures}")
    for label, status, body in tally.surprises[:10]:
        print(f"  unexpected: {label}: {status} {body[:200]}")
    verdict = lambda ok: "met" if ok else "MISSED"
    print(f"goal: zero 5xx: {five} ({verdict(five == 0)}); RSS growth after the first minute under "
          f"{GOAL_GROWTH_PCT}%: " + (f"{total_growth:+.2f}% ({verdict(total_growth < GOAL_GROWTH_PCT)})"
                                     if total_growth is not None else "not measured (the load ran under 90 s)"))

    report = {"date": datetime.date.today().isoformat(), "machine": info, "args": vars(args), "server_env": settings_env,
              "seconds": round(seconds, 1), "requests": sum(r["requests"] for r in rows),
              "rps": round(sum(r["requests"] for r in rows) / seconds, 2), "routes": rows,
              "non_2xx_by_status": statuses, "five_xx": five, "connection_failures": failures,
              "unexpected": [{"route": l, "status": s, "body": b} for l, s, b in tally.surprises],
              "rss_growth": growths, "worker_restarts": tree.restarts,
              "roles": {str(pid): role for pid, role in tree.roles.items()},
              "rss_samples": [{"t": s["t"], "load1": s["load1"],
                               "roles_mib": {r: round(v / 2**20, 1) for r, v in s["roles"].items()}} for s in samples],
              "rss_idle_after_load": {r: round(v / 2**20, 1) for r, v in idle["roles"].items()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak-{report['date']}{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if five or failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
