"""Search benchmark: the embedded store (store/sqlite.py, store/vectors.py) at 10k, 100k and 1M records,
next to exact brute-force scans in the same run; ratios against the issue's goals.

Run from the repository root: `.venv/bin/python -m bench.search --sizes 10000,100000,1000000`
(`make bench-search`). The data and the stores are built once and cached under
~/.cache/imageserver-bench/search (17 GB with the 1M store); bench/README.md ("Search benchmark") says what
is measured, bench/search_corpus.py how the data is made.
"""

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import search_corpus as corpus
from signatures import goldberg as sg
from store.base import Record
from store.sqlite import SQLiteStore
from store.vectors import top_k

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mobilenet_v2"
STORE_VERSION = 1
ADDS = 500  # Store.add calls timed per size
BRUTE_QUERIES = 10  # single-query exact scans timed per size (about half a second each at 1M)
GOALS = {"signature_p50_ms": 10.0, "signature_p99_ms": 50.0, "recall_at_10": 0.95}


def ms(seconds: list[float]) -> dict:
    a = np.asarray(seconds) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3), "n": len(a)}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "gpu": shutil.which("nvidia-smi") is not None, "python": sys.version.split()[0], "numpy": np.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------- building (cached)


def build(n: int, data: dict, log) -> tuple[Path, dict]:
    """The store of records 0..n-1, bulk-loaded once and cached with the figures of that build."""
    folder = corpus.CACHE / f"store-v{STORE_VERSION}-{n}"
    done = folder / "build.json"
    if done.exists():
        return folder, {**json.loads(done.read_text()), "cached": True}
    shutil.rmtree(folder, ignore_errors=True)
    store = SQLiteStore(folder, synchronous="NORMAL")  # one commit anyway; the build can be redone

    def rows():
        for i in range(n):
            yield Record(path=f"r/{i:07d}", sha256=corpus.sha256_of(i), signature=data["signatures"][i],
                         words=data["words"][i], metadata={"i": i}, embeddings={MODEL: data["vectors"][i]})

    started = time.perf_counter()
    store.bulk_load(rows())
    load_s = time.perf_counter() - started
    log(f"  bulk_load of {n} records: {load_s:.0f} s ({n / load_s:.0f} records/s)")
    store.close()
    figures = {"bulk_load_s": round(load_s, 1), "bulk_load_records_per_s": round(n / load_s),
               "built_at": datetime.datetime.now().isoformat(timespec="seconds"),
               "load_average_during_build": [round(x, 2) for x in os.getloadavg()],
               "disk_mib": round(folder_size(folder) / 2**20)}
    done.write_text(json.dumps(figures))
    return folder, {**figures, "cached": False}


def build_indexes(folder: Path, base: dict, keep: bool, log) -> dict:
    """Time each index's first query on a fresh open: it builds the snapshot (deleted first unless `keep`)
    when more vectors wait than the in-memory tail holds."""
    if not keep:
        shutil.rmtree(folder / "vectors", ignore_errors=True)
    out = {}
    store = SQLiteStore(folder)
    for name, model, first in (("embeddings", MODEL, lambda: store.nearest(MODEL, base["query_vectors"][0])),
                               ("signatures", None, lambda: store.nearest_signatures([base["query_signatures"][0]]))):
        started = time.perf_counter()
        first()
        index = store.vector_index(model)
        out[name] = {"first_query_s": round(time.perf_counter() - started, 1), "snapshot_built": index.builds > 0,
                     "kind": "IVF snapshot + exact tail" if index.snapshot else "exact in memory",
                     "snapshot_rows": index.snapshot.n if index.snapshot else 0, "tail_rows": index.tail.n,
                     "nlist": len(index.snapshot.centroids) if index.snapshot else 0,
                     "reduced_dim": index.snapshot.basis.shape[1] if index.snapshot else 0,
                     "params": dataclasses.asdict(index.params)}
        log(f"  {name} index: first query {out[name]['first_query_s']} s ({out[name]['kind']}"
            f"{', built now' if index.builds else ''})")
    store.close()
    return out


# ---------------------------------------------------------------------- exact scans


class ExactSignatures:
    """Exact normalised distances to every stored signature: a float32 matrix product over the int8
    signatures (integer values, so every dot product and norm is exact), then image_match's formula."""

    def __init__(self, signatures: np.ndarray, chunk: int = 100_000):
        self.chunks = []
        for start in range(0, len(signatures), chunk):
            x = np.asarray(signatures[start : start + chunk], np.float32)
            self.chunks.append((start, x, np.einsum("ij,ij->i", x, x).astype(np.float64)))

    def best(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(smallest distance, its record index) per query row."""
        q = np.asarray(queries, np.float32)
        qn2 = np.einsum("ij,ij->i", q, q).astype(np.float64)
        best_d, best_i = np.full(len(q), np.inf), np.zeros(len(q), np.int64)
        for start, x, xn2 in self.chunks:
            d2 = xn2[:, None] + qn2[None, :] - 2 * (x @ q.T).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                d = np.sqrt(np.maximum(d2, 0)) / (np.sqrt(xn2)[:, None] + np.sqrt(qn2)[None, :])
            d[np.isnan(d)] = 1.0  # 0/0: two featureless signatures, as image_match's driver
            i = np.argmin(d, axis=0)
            better = d[i, np.arange(len(q))] < best_d
            best_d[better], best_i[better] = d[i, np.arange(len(q))][better], start + i[better]
        return best_d, best_i


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int = 10, chunk: int = 100_000) -> np.ndarray:
    """Record indices of the k most similar stored vectors per query, best first."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_s, best_i = np.full((len(q), 0), -np.inf, np.float32), np.zeros((len(q), 0), np.int64)
    for start in range(0, len(vectors), chunk):
        sims = q @ np.asarray(vectors[start : start + chunk]).T
        ids = np.broadcast_to(start + np.arange(sims.shape[1]), sims.shape)
        s, i = np.concatenate([best_s, sims], axis=1), np.concatenate([best_i, ids], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


# ---------------------------------------------------------------------- measurements on one store


class WordsOnly:
    """The store seen through the Store interface alone: search_signatures then uses shared words only."""

    def __init__(self, store):
        self.candidates = store.candidates


def signature_search(store, queries: list[list[np.ndarray]]) -> tuple[list, list]:
    """search_signatures over each query's signatures: (seconds, best (distance, path) or None) per query."""
    seconds, best = [], []
    for sigs in queries:
        started = time.perf_counter()
        found = sg.search_signatures(store, sigs)
        seconds.append(time.perf_counter() - started)
        best.append((found[0][1], found[0][0].path) if found else None)
    return seconds, best


def agreement(found: list, exact_d: np.ndarray, exact_i: np.ndarray, kinds: list[str]) -> dict:
    """Same top-1 as the exact scan: the best distance under the cutoff equal (a tie with another record
    at the very same distance counts), or both finding nothing under the cutoff."""
    agree, misses = 0, []
    for q, (got, d, i, kind) in enumerate(zip(found, exact_d, exact_i, kinds)):
        want = (float(d), f"r/{i:07d}") if d < sg.CUTOFF else None
        same = (got is None and want is None) or (got is not None and want is not None and abs(got[0] - want[0]) < 1e-9)
        agree += same
        if not same:
            misses.append({"query": q, "kind": kind, "found": got, "exact": want})
    return {"same_top1": agree, "of": len(found), "found_under_cutoff": sum(w < sg.CUTOFF for w in exact_d),
            "misses": misses[:20]}


def add_throughput(store, data: dict, n: int) -> dict:
    """ADDS Store.add calls (durable, one transaction each) of records copied from the data, then deleted."""
    seconds = []
    for j in range(ADDS):
        i = (j * 7919) % n
        record = Record(path=f"bench-add/{j}", sha256=corpus.sha256_of(i), signature=data["signatures"][i],
                        words=data["words"][i], metadata={"i": i}, embeddings={MODEL: data["vectors"][i]})
        started = time.perf_counter()
        store.add(record)
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    for j in range(ADDS):
        store.delete(f"bench-add/{j}")
    delete_s = time.perf_counter() - started
    return {"adds_per_s": round(ADDS / sum(seconds)), "add_ms": ms(seconds), "deletes_per_s": round(ADDS / delete_s)}


def photo_add_pass(store, embedder) -> dict:
    """The whole work of /add on the real photos: decode, signature, words, MobileNetV2, Store.add."""
    from images.decode import DecodeLimits, decode_image
    from tests import photos

    stages = {"decode": 0.0, "signature": 0.0, "embedding": 0.0, "add": 0.0}
    names = photos.CORPUS

    def timed(stage, work, *args):
        started = time.perf_counter()
        value = work(*args)
        stages[stage] += time.perf_counter() - started
        return value

    embedder.forward([decode_image(photos.read(names[0]), DecodeLimits()).image])  # warm-up
    started = time.perf_counter()
    for name in names:
        image = timed("decode", lambda: decode_image(photos.read(name), DecodeLimits()).image.convert("RGB"))
        sig, words = timed("signature", lambda: (lambda s: (s, sg.words(s)))(sg.signature(image)))
        vector = timed("embedding", lambda: embedder.forward([image])[0])
        timed("add", store.add, Record(path=f"bench-photos/{name}", sha256="0" * 64, signature=sig, words=words,
                                       metadata={"name": name}, embeddings={MODEL: vector}))
    total = time.perf_counter() - started
    for name in names:
        store.delete(f"bench-photos/{name}")
    return {"images": len(names), "images_per_s": round(len(names) / total, 2),
            "ms_per_image": {k: round(v / len(names) * 1000, 1) for k, v in stages.items()}}


WORKER = """
import json, sys, time
import numpy as np, psutil
from signatures import goldberg as sg
from store.sqlite import SQLiteStore
folder, queries = sys.argv[1], np.load(sys.argv[2])
before = psutil.Process().memory_full_info()
started = time.perf_counter()
store = SQLiteStore(folder)
store.nearest("mobilenet_v2", queries["vectors"][0], k=10)
first = time.perf_counter() - started
for v in queries["vectors"]:
    store.nearest("mobilenet_v2", v, k=10)
for s in queries["signatures"]:
    sg.search_signatures(store, [s])
after = psutil.Process().memory_full_info()
index = store.vector_index("mobilenet_v2")
print(json.dumps({"first_query_s": round(first, 2), "uss_mib": round(after.uss / 2**20),
                  "uss_growth_mib": round((after.uss - before.uss) / 2**20), "pss_mib": round(after.pss / 2**20),
                  "rss_mib": round(after.rss / 2**20), "tail": index.tail.n,
                  "snapshot_rows": index.snapshot.n if index.snapshot else 0}))
"""


def worker_memory(folder: Path, base: dict, workers: int = 2) -> list[dict]:
    """`workers` processes open the store at once and query it, as server workers do: what each holds."""
    queries = folder.parent / f"worker-queries-{os.getpid()}.npz"
    np.savez(queries, vectors=base["query_vectors"][:50], signatures=base["query_signatures"][:50])
    try:
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(queries)], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True) for _ in range(workers)]
        return [json.loads(p.communicate(timeout=1800)[0].strip().splitlines()[-1]) for p in procs]
    finally:
        queries.unlink(missing_ok=True)


def measure(n: int, base: dict, data: dict, embedder, keep_indexes: bool, log) -> dict:
    folder, built = build(n, data, log)
    out = {"records": n, "build": built, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    out["indexes"] = build_indexes(folder, base, keep_indexes, log)
    started = time.perf_counter()
    store = SQLiteStore(folder)
    store.nearest(MODEL, base["query_vectors"][0], k=10)
    store.nearest_signatures([base["query_signatures"][0]])
    out["open_and_first_queries_s"] = round(time.perf_counter() - started, 2)
    out["add"] = add_throughput(store, data, n)
    out["photo_add_pass"] = photo_add_pass(store, embedder)
    log(f"  add: {out['add']['adds_per_s']} records/s; real photos: {out['photo_add_pass']['images_per_s']} images/s")

    # signature search: one signature, then all 8 orientations of the image queries
    picked, stored_sigs = corpus.stored_queries(n, data["signatures"])
    one = [*stored_sigs, *base["query_signatures"]]
    kinds = ["stored"] * len(stored_sigs) + ["copy"] * corpus.COPY_QUERIES + ["new"] * corpus.NEW_QUERIES
    eight = list(base["query_orientations"])
    # each set twice: the first pass reads from disk what the page cache lost to the build or another size
    first1, _ = signature_search(store, [[s] for s in one])
    first8, _ = signature_search(store, [list(s) for s in eight])
    t1, found1 = signature_search(store, [[s] for s in one])
    t8, found8 = signature_search(store, [list(s) for s in eight])
    words_only = WordsOnly(store)  # image_match's lookup alone, for comparison
    w1, wfound1 = signature_search(words_only, [[s] for s in one])
    w8, wfound8 = signature_search(words_only, [list(s) for s in eight])
    exact = ExactSignatures(data["signatures"][:n])
    d1, i1 = exact.best(np.stack(one))
    d8_all, i8_all = exact.best(np.concatenate(eight))
    d8_all, i8_all = d8_all.reshape(len(eight), 8), i8_all.reshape(len(eight), 8)
    d8, i8 = d8_all.min(axis=1), i8_all[np.arange(len(eight)), d8_all.argmin(axis=1)]
    exact_t1, exact_t8 = [], []
    for q in range(BRUTE_QUERIES):
        started = time.perf_counter()
        exact.best(np.stack(one[q : q + 1]))
        exact_t1.append(time.perf_counter() - started)
        started = time.perf_counter()
        exact.best(eight[corpus.COPY_QUERIES + q % corpus.NEW_QUERIES])
        exact_t8.append(time.perf_counter() - started)
    del exact
    own = sum(got is not None and got[1] == f"r/{i:07d}" for got, i in zip(found1, picked))
    out["signature"] = {
        "one": {"ms": ms(t1), "first_pass_ms": ms(first1), **agreement(found1, d1, i1, kinds),
                "stored_found_own_record": own},
        "all_orientations": {"ms": ms(t8), "first_pass_ms": ms(first8),
                             **agreement(found8, d8, i8, kinds[len(stored_sigs):])},
        "exact_scan_one_ms": ms(exact_t1), "exact_scan_eight_ms": ms(exact_t8),
        "words_only": {"one": {"ms": ms(w1), **agreement(wfound1, d1, i1, kinds)},
                       "all_orientations": {"ms": ms(w8), **agreement(wfound8, d8, i8, kinds[len(stored_sigs):])}},
    }
    s = out["signature"]
    log(f"  signature: one p50 {s['one']['ms']['p50']} p99 {s['one']['ms']['p99']} ms, same top-1 "
        f"{s['one']['same_top1']}/{s['one']['of']}; 8 orientations p50 {s['all_orientations']['ms']['p50']} p99 "
        f"{s['all_orientations']['ms']['p99']} ms, {s['all_orientations']['same_top1']}/{s['all_orientations']['of']}; "
        f"exact scan p50 {s['exact_scan_one_ms']['p50']} ms")
    w = s["words_only"]
    log(f"  words only (image_match): one p50 {w['one']['ms']['p50']} ms, same top-1 {w['one']['same_top1']}/"
        f"{w['one']['of']}; 8 orientations p50 {w['all_orientations']['ms']['p50']} ms, "
        f"{w['all_orientations']['same_top1']}/{w['all_orientations']['of']}")

    # embedding nearest neighbours, recall@10 against exact brute force over the same vectors
    queries = base["query_vectors"]
    passes = []
    for _ in range(2):  # as above: a first pass, then the timed one
        seconds, got = [], []
        for q in queries:
            started = time.perf_counter()
            found = store.nearest(MODEL, q, k=10)
            seconds.append(time.perf_counter() - started)
            got.append({int(x.path[2:]) for x in found})
        passes.append(seconds)
    vectors = data["vectors"][:n]
    truth = exact_neighbours(vectors, queries)
    recall = float(np.mean([len(g & set(t)) / 10 for g, t in zip(got, truth)]))
    brute = []
    ids = np.arange(n)
    for q in queries[:BRUTE_QUERIES]:
        unit = (q / np.linalg.norm(q)).astype(np.float32)
        started = time.perf_counter()
        top_k(ids, np.asarray(vectors) @ unit, 10)  # what store/vectors.py's exact path does, on all n
        brute.append(time.perf_counter() - started)
    out["embedding"] = {"ms": ms(seconds), "first_pass_ms": ms(passes[0]), "recall_at_10": round(recall, 4),
                        "exact_brute_force_ms": ms(brute)}
    log(f"  embedding: p50 {out['embedding']['ms']['p50']} p99 {out['embedding']['ms']['p99']} ms, recall@10 "
        f"{recall:.3f}; brute force p50 {out['embedding']['exact_brute_force_ms']['p50']} ms")
    store.close()
    out["disk_mib"] = {"sqlite": round(folder_size(folder) / 2**20 - folder_size(folder / "vectors") / 2**20),
                       "vector_snapshot": round(folder_size(folder / "vectors") / 2**20)}
    out["workers"] = worker_memory(folder, base)
    workers = out["workers"]
    log(f"  two worker processes: private (USS) {[w['uss_mib'] for w in workers]} MiB, "
        f"PSS {[w['pss_mib'] for w in workers]} MiB, first query {[w['first_query_s'] for w in workers]} s")
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def ratios(result: dict) -> dict:
    out = {}
    for n, r in result["sizes"].items():
        s, e = r["signature"], r["embedding"]
        out[n] = {
            "exact_scan / search, one signature (p50)": round(s["exact_scan_one_ms"]["p50"] / s["one"]["ms"]["p50"], 1),
            "exact_scan / search, 8 orientations (p50)":
                round(s["exact_scan_eight_ms"]["p50"] / s["all_orientations"]["ms"]["p50"], 1),
            "brute force / nearest (p50)": round(e["exact_brute_force_ms"]["p50"] / e["ms"]["p50"], 1),
        }
    return out


def goals(result: dict) -> dict:
    largest = result["sizes"][max(result["sizes"], key=int)]
    s, e = largest["signature"], largest["embedding"]
    return {
        "at": largest["records"],
        "signature p50 <= 10 ms": s["one"]["ms"]["p50"] <= GOALS["signature_p50_ms"],
        "signature p99 <= 50 ms": s["one"]["ms"]["p99"] <= GOALS["signature_p99_ms"],
        "same top-1 as the exact scan": s["one"]["same_top1"] == s["one"]["of"],
        "8 orientations p50 <= 10 ms": s["all_orientations"]["ms"]["p50"] <= GOALS["signature_p50_ms"],
        "8 orientations p99 <= 50 ms": s["all_orientations"]["ms"]["p99"] <= GOALS["signature_p99_ms"],
        "8 orientations same top-1": s["all_orientations"]["same_top1"] == s["all_orientations"]["of"],
        "embedding recall@10 >= 0.95": e["recall_at_10"] >= GOALS["recall_at_10"],
        "embedding p50 better than brute force": e["ms"]["p50"] < e["exact_brute_force_ms"]["p50"],
    }


def table(result: dict) -> str:
    head = (f"{'records':>9} | {'add/s':>6} {'img/s':>6} | {'sig p50':>7} {'p99':>6} {'top-1':>8} | {'8-or p50':>8} "
            f"{'p99':>6} {'top-1':>8} | {'exact':>7} | {'emb p50':>7} {'p99':>6} {'r@10':>5} | {'brute':>7} | "
            f"{'USS/worker':>10}")
    lines = [head, "-" * len(head)]
    for n, r in result["sizes"].items():
        one, eight, e = r["signature"]["one"], r["signature"]["all_orientations"], r["embedding"]
        cells = [
            f"{int(n):>9}", f"{r['add']['adds_per_s']:>6} {r['photo_add_pass']['images_per_s']:>6}",
            f"{one['ms']['p50']:>7.2f} {one['ms']['p99']:>6.1f} {one['same_top1']:>4}/{one['of']:<3}",
            f"{eight['ms']['p50']:>8.2f} {eight['ms']['p99']:>6.1f} {eight['same_top1']:>4}/{eight['of']:<3}",
            f"{r['signature']['exact_scan_one_ms']['p50']:>7.1f}",
            f"{e['ms']['p50']:>7.2f} {e['ms']['p99']:>6.1f} {e['recall_at_10']:>5.3f}",
            f"{e['exact_brute_force_ms']['p50']:>7.1f}", f"{max(w['uss_mib'] for w in r['workers']):>6} MiB",
        ]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="record counts, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--keep-indexes", action="store_true",
                        help="reuse the cached vector snapshots instead of timing their build")
    args = parser.parse_args(argv)
    sizes = sorted(int(x) for x in args.sizes.split(","))

    def log(message):
        print(message, flush=True)

    result = {"machine": machine(), "started": datetime.datetime.now().isoformat(timespec="seconds"), "sizes": {}}
    log(f"machine: {result['machine']}")
    base = corpus.bases(log)
    data = corpus.records(max(sizes), base, log)
    from models.mobilenet import MobileNetEmbedder
    from settings import Settings

    embedder = MobileNetEmbedder(Settings())
    embedder.load("cpu")
    for n in sizes:
        log(f"{n} records")
        result["sizes"][str(n)] = measure(n, base, data, embedder, args.keep_indexes, log)
    result["ratios"] = ratios(result)
    result["goals"] = goals(result)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(table(result))
    print()
    for n, r in result["ratios"].items():
        print(f"{n}: " + "; ".join(f"{k} {v}x" for k, v in r.items()))
    for n, r in result["sizes"].items():
        one, eight = r["signature"]["words_only"]["one"], r["signature"]["words_only"]["all_orientations"]
        print(f"{n}: words only (image_match's lookup, no signature index): one p50 {one['ms']['p50']} ms, "
              f"same top-1 {one['same_top1']}/{one['of']}; 8 orientations p50 {eight['ms']['p50']} ms, "
              f"{eight['same_top1']}/{eight['of']}")
    print("goals at", result["goals"]["at"], ":", {k: v for k, v in result["goals"].items() if k != "at"})
    out = Path(args.out) / f"search-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
