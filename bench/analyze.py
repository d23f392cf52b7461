"""/embed and /analyze benchmark: MobileNetV2 and CLIP ViT-B-32 alone (no HTTP), then through server.py
at several batch sizes and concurrencies, and a 4-task /analyze; ratios against the goals.

Run from the repository root: `.venv/bin/python -m bench.analyze` (`make bench-analyze`). See bench/README.md.
"""

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from bench import loadgen
from bench.serve import HOST, ROOT, free_port, machine, running_server
from settings import load_settings
from tests import photos

CACHE = Path.home() / ".cache" / "imageserver-bench"
MODELS = ("mobilenet_v2", "clip_vit_b_32")
DIMS = {"mobilenet_v2": 1280, "clip_vit_b_32": 512}
# the production default, and short next to one CPU forward (18-100 ms an image): it adds at most 10 ms
# at concurrency 1, and under load the queue already holds a full batch when the worker asks for one
BATCH_TIMEOUT = 0.01
GOAL_VS_MODEL, GOAL_BATCHING = 0.8, 1.5
MISSING = "/nonexistent/imageserver-bench"  # models these runs do not need load as unavailable, at once
ANALYZE_TASKS = [
    {"operation_id": "face", "type": "detect_bounding_box",
     "params": {"target": "prominent_face", "face_context": "whole_image"}},
    {"operation_id": "mobilenet", "type": "embed_mobilenet_v2", "params": {"target": "whole_image"}},
    {"operation_id": "clip", "type": "embed_clip_vit_b_32", "params": {"target": "whole_image"}},
    {"operation_id": "face_mobilenet", "type": "embed_mobilenet_v2",
     "params": {"target": "prominent_face", "face_context": "whole_image"}},
]
ANALYZE_MODELS = ("face_detector", "mobilenet_v2", "clip_vit_b_32")


def build_clip(model_dir: Path) -> Path:
    """Full-size ViT-B-32 with random weights, laid out as MODEL_DIR/open_clip/ViT-B-32/openai/ (built once).

    Random weights cost the same compute as OpenAI's, which cannot be downloaded here."""
    import open_clip
    from safetensors.torch import save_file

    folder = model_dir / "open_clip" / "ViT-B-32" / "openai"
    if (folder / "open_clip_config.json").is_file():
        return folder
    model_cfg = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-B-32.json").read_text())
    model_cfg["quick_gelu"] = True  # as the openai tag was trained
    tag = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    preprocess = {"size": 224, "mode": "RGB", "mean": list(tag["mean"]), "std": list(tag["std"]),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**model_cfg)
    partial = folder.with_name("openai.partial")  # renamed when complete: an interrupted build is not reused
    partial.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(partial / "open_clip_model.safetensors"))
    (partial / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    partial.rename(folder)
    return folder


def model_only(model_dir: Path, images: list, names, batches, total: int, device: str) -> dict:
    """images/s of the production classes' forward (preprocessing included), in this process."""
    from models.clip import ClipEmbedder
    from models.mobilenet import MobileNetEmbedder

    settings = load_settings({"MODEL_DIR": str(model_dir), "ALLOW_DOWNLOADS": "false"})
    out = {}
    for name in names:
        model = {"mobilenet_v2": MobileNetEmbedder, "clip_vit_b_32": ClipEmbedder}[name](settings)
        model.load(device)
        out[name] = {}
        for b in batches:
            model.forward(images[:b])  # warm-up: oneDNN picks its kernels per shape on the first call
            n = max(b, total // b * b)
            start = time.perf_counter()
            for i in range(0, n, b):  # consecutive photos, cycling: every batch mixes sizes
                model.forward([images[j % len(images)] for j in range(i, i + b)])
            out[name][b] = n / (time.perf_counter() - start)
            print(f"  {name:<14} batch {b:>3}: {out[name][b]:6.1f} images/s ({n} images)")
        del model
    return out


def server_env(port: int, model_dir: Path, **extra) -> dict:
    env = dict(os.environ, PORT=str(port), HOST=HOST, WORKERS_PER_DEVICE="1", ACCELERATOR="cpu",
               LOG_LEVEL="WARNING", MODEL_DIR=str(model_dir), ALLOW_DOWNLOADS="false", HF_HUB_OFFLINE="1",
               CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED="openai", DINO_MODEL=f"{MISSING}/dino")
    env.update({k: str(v) for k, v in extra.items()})
    env.pop("API_KEY", None)  # the bench sends no key
    return env


@contextmanager
def server(env: dict):
    """server.py with `env`, yielding its port once healthy (bench/serve.py)."""
    with running_server(env, timeout=300.0):
        yield int(env["PORT"])


def model_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}/model_stats", timeout=10) as response:
        return json.loads(response.read())


def check(port: int, request: bytes, needed, ok) -> None:
    """Stop unless the models load and one answer is right: a load of 503s or task errors measures nothing."""
    missing = {m: why for m, why in model_stats(port)["availability"].items() if m in needed and why}
    status, body = asyncio.run(loadgen.exchange(HOST, port, request))
    if missing or status != 200 or not ok(json.loads(body)):
        sys.exit(f"not measurable: unavailable {missing}; answer {status} {body[:500]!r}")


def measure(port: int, requests: list[bytes], concurrency: int, total: int, models) -> dict:
    before = model_stats(port)["models"]
    result = asyncio.run(loadgen.run(HOST, port, requests, concurrency, total))
    after = model_stats(port)["models"]
    batch = {}
    for m in models:  # images per forward call during this run alone
        calls = after.get(m, {}).get("forward_calls", 0) - before.get(m, {}).get("forward_calls", 0)
        images = after.get(m, {}).get("images", 0) - before.get(m, {}).get("images", 0)
        batch[m] = round(images / calls, 2) if calls else None
    for status, body in result.errors:
        print(f"        {status}: {body.decode(errors='replace')}")
    return {"concurrency": concurrency, "requests": total, "rps": result.rps, "p50_ms": result.percentile(50) * 1000,
            "p99_ms": result.percentile(99) * 1000, "non_200": total - result.statuses.get(200, 0),
            "mean_batch": batch}


def count(args, concurrency: int) -> int:
    return args.requests[0] if concurrency == 1 else args.requests[1]


def print_row(label: str, row: dict, batch: str) -> None:
    print(f"{label:<24} {row['concurrency']:>5} {row['requests']:>8} {row['rps']:>8.1f} {row['p50_ms']:>8.0f} "
          f"{row['p99_ms']:>8.0f} {batch:>14} {row['non_200']:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="EMBED_MAX_BATCH_SIZE values")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="WORKERS_PER_DEVICE values for /embed (TORCH_THREADS left at its default: cores / workers)")
    parser.add_argument("--analyze-batches", type=int, nargs="+", default=[1, 8], help="ANALYZE_MAX_BATCH_SIZE values")
    parser.add_argument("--analyze-concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs=2, default=(16, 96), metavar=("C1", "CN"),
                        help="requests per point at concurrency 1, and above 1 (default 16 96: 3 batches of 32)")
    parser.add_argument("--warmup", type=int, default=32, help="requests sent at the highest concurrency first")
    parser.add_argument("--model-images", type=int, default=96, help="images per model-only point")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--skip-analyze", action="store_true")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "cuda"), help="where the models run")
    parser.add_argument("--cache", default=str(CACHE), help="folder for the random-weight CLIP (built once)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    began = time.monotonic()
    info = machine() | {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    print(f"machine: {info['cores']} cores, {info['cpu']}, {info['memory_gib']} GiB; Python {info['python']}, "
          f"torch {info['torch']} ({info['torch_threads']} threads, torch's default); "
          f"load average {info['load_average_at_start']}")
    model_dir = Path(args.cache).expanduser() / "models"
    print(f"CLIP ViT-B-32 (full size, random weights): {build_clip(model_dir)}")
    corpus = photos.corpus()
    images = [Image.open(photos.path(n)).convert("RGB") for n in corpus]  # decoded once: not timed
    print(f"corpus: {len(corpus)} photos, {sum(map(len, corpus.values())) / 1e6:.1f} MB\n\nmodel only (no HTTP):")
    alone = model_only(model_dir, images, args.models, args.batches, args.model_images, args.accelerator)

    header = (f"{'':<24} {'conc':>5} {'requests':>8} {'{}/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>14} "
              f"{'non-200':>7}")
    print("\n/embed (images/s; mean batch = images per forward call, from /model_stats)")
    print(header.format("img"))
    embed = []
    for model in args.models:
        for w in args.workers:
            for b in args.batches:
                env = server_env(free_port(), model_dir, CAPABILITIES="embed", ACCELERATOR=args.accelerator,
                                 EMBED_MAX_BATCH_SIZE=b, EMBED_BATCH_TIMEOUT=BATCH_TIMEOUT, WORKERS_PER_DEVICE=w)
                with server(env) as port:
                    requests = [loadgen.multipart_form_request(HOST, port, "/embed", {"model": model, "normalize": "false"},
                                                               "image_file", n, d) for n, d in corpus.items()]
                    check(port, requests[0], [model], lambda a: a.get("dim") == DIMS[model])
                    asyncio.run(loadgen.run(HOST, port, requests, max(args.concurrency), args.warmup))
                    for c in args.concurrency:
                        row = {"model": model, "max_batch": b, "workers": w,
                               **measure(port, requests, c, count(args, c), [model])}
                        embed.append(row)
                        print_row(f"{model} b={b} w={w}", row, str(row["mean_batch"][model]))

    analyze = []
    if not args.skip_analyze:
        print("\n/analyze, 4 tasks (requests/s; mean batch: face_detector, mobilenet_v2, clip_vit_b_32)")
        print(header.format("req"))
        tasks = json.dumps(ANALYZE_TASKS)
        for b in args.analyze_batches:
            env = server_env(free_port(), model_dir, CAPABILITIES="analyze", ACCELERATOR=args.accelerator,
                             ANALYZE_MAX_BATCH_SIZE=b, ANALYZE_BATCH_TIMEOUT=BATCH_TIMEOUT,
                             PERSON_WEIGHTS=f"{MISSING}/person.pth", CAPTION_MODEL=f"{MISSING}/blip")
            with server(env) as port:
                requests = [loadgen.multipart_form_request(HOST, port, "/analyze", {"tasks_json": tasks},
                                                           "image_file", n, d) for n, d in corpus.items()]
                # astronaut has a face: every task, the face crop's embedding too, must succeed
                check(port, requests[list(corpus).index("astronaut")], ANALYZE_MODELS,
                      lambda a: all(r["status"] == "success" for r in a["results"].values()))
                asyncio.run(loadgen.run(HOST, port, requests, max(args.analyze_concurrency), args.warmup))
                for c in args.analyze_concurrency:
                    row = {"max_batch": b, **measure(port, requests, c, count(args, c), ANALYZE_MODELS)}
                    analyze.append(row)
                    print_row(f"analyze b={b}", row, "/".join(str(row["mean_batch"][m]) for m in ANALYZE_MODELS))

    # ratios: the server at the highest concurrency against the model alone
    top = max(args.concurrency)
    summary = {}
    print(f"\nratios (server at concurrency {top})")
    for model in args.models:
        rows = [r for r in embed if r["model"] == model and r["concurrency"] == top]
        best = max(rows, key=lambda r: r["rps"])
        alone_b = max(alone[model], key=alone[model].get)
        share = best["rps"] / alone[model][alone_b]
        summary[model] = {"best_server_batch": best["max_batch"], "best_server_workers": best["workers"],
                          "best_server_rps": best["rps"],
                          "best_model_only_batch": alone_b, "best_model_only_ips": alone[model][alone_b],
                          "server_vs_model_only": share}
        # the max batch size that gave the most images/s at each concurrency: what a default should follow
        by_c = {c: max((r for r in embed if r["model"] == model and r["concurrency"] == c), key=lambda r: r["rps"])
                for c in args.concurrency}
        summary[model]["best_batch_by_concurrency"] = {c: [r["max_batch"], r["workers"]] for c, r in by_c.items()}
        ok = "ok" if share >= GOAL_VS_MODEL else "BELOW GOAL"
        print(f"  {model}: /embed {best['rps']:.1f} images/s (b={best['max_batch']} w={best['workers']}) = {share:.0%} of the model alone "
              f"{alone[model][alone_b]:.1f} (batch {alone_b}) (goal >= {GOAL_VS_MODEL:.0%}: {ok})\n"
              f"    best EMBED_MAX_BATCH_SIZE by concurrency: "
              + ", ".join(f"c={c}: b={r['max_batch']} w={r['workers']} ({r['rps']:.1f}/s)" for c, r in by_c.items()))
    # batching gain with one worker, as the goal is stated (the same worker count on both sides)
    rps = {(r["model"], r["max_batch"]): r["rps"] for r in embed if r["concurrency"] == top and r["workers"] == min(args.workers)}
    batched = [b for b in args.batches if b > 1 and ("clip_vit_b_32", b) in rps]
    if ("clip_vit_b_32", 1) in rps and batched:
        b = max(batched, key=lambda b: rps["clip_vit_b_32", b])
        gain = rps["clip_vit_b_32", b] / rps["clip_vit_b_32", 1]
        summary["clip_batched_vs_unbatched"] = {"batch": b, "ratio": gain}
        ok = "ok" if gain >= GOAL_BATCHING else "BELOW GOAL"
        print(f"  CLIP batched (b={b}) vs unbatched (b=1): {rps['clip_vit_b_32', b]:.1f} / "
              f"{rps['clip_vit_b_32', 1]:.1f} = {gain:.2f}x (goal >= {GOAL_BATCHING}x: {ok})")

    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["seconds"] = round(time.monotonic() - began)
    report = {"date": datetime.date.today().isoformat(), "machine": info, "args": vars(args),
              "batch_timeout": BATCH_TIMEOUT, "analyze_tasks": ANALYZE_TASKS, "model_only_ips": alone,
              "embed": embed, "analyze": analyze, "summary": summary}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"analyze-{report['date']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({info['seconds']} s)")
    if any(r["non_200"] for r in embed + analyze):
        sys.exit(1)  # a benchmark of failing requests is not a result


if __name__ == "__main__":
    main()
