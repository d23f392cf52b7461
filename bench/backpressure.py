"""Back-pressure benchmark: 64 clients on one worker, with a bounded queue against an unbounded one.

Each client sends real photos to one capability, one request at a time; a client answered 503 waits the
Retry-After the server sent, as a well-behaved client does. Two servers are measured in one run on the
same machine: the baseline with a queue too large to fill (100000, what LitServe had) and the bounded
one (`--queue`, default 8). It prints, for each, the latency percentiles of the admitted requests and how
fast the overflow's 503s came, and the ratio of the bounded p99 to the baseline's.

Run from the repository root: `.venv/bin/python -m bench.backpressure` (`make bench-backpressure`).
"""

import argparse
import asyncio
import datetime
import json
import os
import time
from pathlib import Path

from bench import loadgen
from bench.serve import HOST, ROOT, free_port, machine, running_server
from tests import photos

ROUTES = {  # capability -> (path, multipart field, text fields, variable of its queue)
    "stats": ("/stats", "content", {}, "STATS_MAX_QUEUE"),
    "embed": ("/embed", "image_file", {"model": "mobilenet_v2"}, "EMBED_MAX_QUEUE"),
}
UNBOUNDED = 100000


async def clients(port: int, requests: list[bytes], concurrency: int, seconds: float) -> dict:
    """`concurrency` keep-alive clients for `seconds`; 503s honour Retry-After."""
    admitted, refused, other = [], [], {}
    stop = time.monotonic() + seconds

    async def client(k: int):
        reader, writer = await asyncio.open_connection(HOST, port)
        i = k
        try:
            while time.monotonic() < stop:
                start = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, _ = await _response(reader)
                elapsed = time.perf_counter() - start
                i += 1
                if status == 200:
                    admitted.append(elapsed)
                elif status == 503:
                    refused.append(elapsed)
                    writer.close()  # the server closes a refused request's connection (its body was not read)
                    await asyncio.sleep(1.0)  # the server's Retry-After
                    reader, writer = await asyncio.open_connection(HOST, port)
                else:
                    other[status] = other.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return {"admitted": admitted, "refused": refused, "other": other}


async def _response(reader):
    return await loadgen._read_response(reader)  # noqa: SLF001 - the one HTTP reader the benches share


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(outcome: dict, seconds: float) -> dict:
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    admitted, refused = outcome["admitted"], outcome["refused"]
    return {
        "admitted": len(admitted), "refused_503": len(refused), "other_statuses": outcome["other"],
        "admitted_per_s": round(len(admitted) / seconds, 1),
        "admitted_p50_ms": ms(percentile(admitted, 50)), "admitted_p99_ms": ms(percentile(admitted, 99)),
        "admitted_max_ms": ms(max(admitted) if admitted else None),
        "refused_p99_ms": ms(percentile(refused, 99)),
    }


def measure(capability: str, queue: int, concurrency: int, seconds: float) -> dict:
    path, field, fields, variable = ROUTES[capability]
    port = free_port()
    env = dict(os.environ, PORT=str(port), HOST=HOST, CAPABILITIES=capability, WORKERS_PER_DEVICE="1",
               LOG_LEVEL="WARNING", ACCELERATOR="cpu", REQUEST_TIMEOUT="600", ALLOW_DOWNLOADS="false",
               **{variable: str(queue)})
    env.pop("API_KEY", None)
    corpus = photos.corpus()
    requests = [loadgen.multipart_form_request(HOST, port, path, fields, field, name, data)
                for name, data in corpus.items()]
    with running_server(env):
        asyncio.run(clients(port, requests[:4], 2, 3.0))  # warm-up
        outcome = asyncio.run(clients(port, requests, concurrency, seconds))
    return summary(outcome, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--capability", choices=sorted(ROUTES), default="stats")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--queue", type=int, default=8, help="the bounded run's queue limit")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    report = {"machine": machine(), "started": started.isoformat(timespec="seconds"), "capability": args.capability,
              "clients": args.clients, "seconds": args.seconds}
    for name, queue in (("unbounded", UNBOUNDED), ("bounded", args.queue)):
        report[name] = {"queue": queue, **measure(args.capability, queue, args.clients, args.seconds)}
        print(name, json.dumps(report[name]), flush=True)
    base, bounded = report["unbounded"]["admitted_p99_ms"], report["bounded"]["admitted_p99_ms"]
    report["p99_bounded_over_unbounded"] = round(bounded / base, 3) if base and bounded else None
    print(f"admitted p99: bounded {bounded} ms vs unbounded {base} ms = {report['p99_bounded_over_unbounded']}x; "
          f"503s: {report['bounded']['refused_503']} (p99 {report['bounded']['refused_p99_ms']} ms)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"backpressure-{args.capability}-{started:%Y-%m-%d}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
