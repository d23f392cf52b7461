"""Every hostile input of tests/bad_inputs/ against one real server process with every capability.

One server (stats, analyze, embed, search; one worker each; the main test server's limits from conftest's
MAIN_ENV; real MobileNetV2 and MTCNN weights, offline) takes every case on every route that takes it:
multipart, JSON base64 and raw body where the route reads one (large images: multipart everywhere, the other
forms on /stats only; see HEAVY_FAMILIES). Per request, a pass is a 4xx or a correct
200 (the route's documented shape, the image's real size, a sane GPS; 16-bit images agree with their 8-bit
equivalent), never a 5xx, never over 10 s. After each case the server must still be healthy (GET /health and
a good photo on every capability the case touched), no external program (Ghostscript) may have run, and
at the end every worker's resident memory must be back within 10% of its warmed-up baseline.

Guards, so that a case that breaks the server cannot take the shared machine down: the server runs under
an address-space limit (tests/bad_inputs/limited_server.py), a watchdog kills its process group past
baseline + 6 GiB resident, the first timeout ends a case (its worker is still busy), and a server that does
not recover is restarted (at most MAX_RESTARTS times; the case is failed and named). Families are sent
cheapest first, the ones most likely to hurt the server last.

A report of every failing request is written to .pytest_cache/d/bad_inputs/report.txt.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from tests import photos
from tests.bad_inputs import generate
from tests.conftest import MAIN_ENV, start_server

TIMEOUT = 10.0  # seconds per request, and the longest a request may take
RSS_TOLERANCE = 0.10
RSS_SETTLE_S = 10.0
MEMORY_GUARD = 6 * 1024**3  # resident bytes above the warmed-up total that stop the run
ADDRESS_SPACE_LIMIT = 12 * 1024**3  # per server process
RECOVERY_S = 60.0
MAX_RESTARTS = 6
CAPABILITIES = ("stats", "analyze", "embed", "search")
FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"}
PATHS = {"stats": "/stats", "analyze": "/analyze", "embed": "/embed", "add": "/add", "search": "/search",
         "compare": "/compare", "find_similar": "/find_similar/"}
CAPABILITY = {"stats": "stats", "analyze": "analyze", "embed": "embed", "add": "search", "search": "search",
              "compare": "search", "find_similar": "search", "images": "search"}
# programs an image library might start: all of them, first on the server's PATH, leave a mark
FAKE_PROGRAMS = ("gs", "gsc", "gsx", "gswin32c", "gswin64c", "magick", "rsvg-convert", "inkscape", "potrace")
EPS_MARKER = Path("/tmp/imageserver-bad-inputs-eps-ran")  # what eps_runs_a_program's PostScript would create
ENVELOPE = {"status", "error", "method", "result"}
RESULT_KEYS = {"status", "data", "cropped_image_bbox", "cropped_image_base64", "error_message"}
SIMILAR_KEYS = {"filepath", "filename", "similarity", "sha256", "metadata", "url"}

# Large images: their requests go one at a time, so that a slow answer is the case's own, and every route gets
# the multipart upload while only /stats (the cheapest) also gets the JSON base64 and raw forms: the form only
# changes how the HTTP process reads the bytes, and a 40 MP image costs seconds per request. Other cases get
# every form on every route, one queue per capability in parallel (each capability has its own worker).
HEAVY_FAMILIES = {"real_bombs", "scan_bombs", "sixteen_bit", "aspect_ratios"}

INDEX = generate.index()
BY_NAME = {entry["name"]: entry for entry in INDEX}


# ---------------------------------------------------------------- answers: what a correct 200 is


class Wrong(Exception):
    """A 200 whose body is not the route's correct answer."""


def strict_json(response: httpx.Response):
    def refuse(name):
        raise Wrong(f"the JSON holds {name}")

    try:
        return json.loads(response.content, parse_constant=refuse)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Wrong(f"the body is not JSON: {exc}") from None


def vector(value, dim: int = 1280) -> list:
    if not (isinstance(value, list) and len(value) == dim and all(isinstance(v, (int, float)) for v in value)):
        raise Wrong(f"not a {dim}-d vector: {str(value)[:80]}")
    if not all(math.isfinite(v) for v in value):
        raise Wrong("the vector holds non-finite values")
    return value


def cosine(a: list, b: list) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Wrong(message)


def check_stats(body: dict, size) -> None:
    expect(isinstance(body, dict) and set(body) == {"exif_data", "color_data", "gps", "image"},
           f"keys {sorted(body) if isinstance(body, dict) else type(body).__name__}")
    image = body["image"]
    expect(isinstance(image, dict) and image.get("format") in FORMATS, f"image {image}")
    width, height = image.get("width"), image.get("height")
    expect(isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0, f"image {image}")
    if size:
        expect((width, height) == tuple(size), f"reports {width}x{height}; the image is {size[0]}x{size[1]}")
    expect(isinstance(body["exif_data"], dict), "exif_data is not an object")
    colour = body["color_data"]
    if colour is not None:
        for key in ("avg_color", "dominant_color"):
            rgb = colour.get(key, {}).get("rgb")
            expect(isinstance(rgb, list) and len(rgb) == 3 and all(isinstance(c, (int, float)) and 0 <= c <= 1
                                                                     for c in rgb), f"{key} {colour.get(key)}")
    gps = body["gps"]
    if gps is not None:
        lat, lon, alt = gps.get("latitude"), gps.get("longitude"), gps.get("altitude")
        expect(isinstance(lat, (int, float)) and -90 <= lat <= 90, f"gps latitude {lat}")
        expect(isinstance(lon, (int, float)) and -180 <= lon <= 180, f"gps longitude {lon}")
        expect(alt is None or (isinstance(alt, (int, float)) and math.isfinite(alt) and abs(alt) < 1e6),
               f"gps altitude {alt}")


def check_envelope(body, method: str) -> list:
    expect(isinstance(body, dict) and set(body) == ENVELOPE and body["status"] == "ok" and body["error"] == []
           and body["method"] == method and isinstance(body["result"], list),
           f"not the near-duplicate routes' ok envelope: {str(body)[:200]}")
    return body["result"]


def check_search(body) -> None:
    for hit in check_envelope(body, "search"):
        expect(isinstance(hit, dict) and set(hit) == {"score", "filepath", "metadata", "url"}, f"hit {str(hit)[:200]}")
        expect(isinstance(hit["score"], (int, float)) and 0 <= hit["score"] <= 100, f"score {hit['score']}")


def check_compare(body) -> float:
    result = check_envelope(body, "compare")
    expect(len(result) == 1 and set(result[0]) == {"score"}, f"result {result}")
    score = result[0]["score"]
    expect(isinstance(score, (int, float)) and 0 <= score <= 100, f"score {score}")
    return score


def check_similar(body) -> None:
    expect(isinstance(body, dict) and set(body) == {"filename", "model", "similar_images", "total_indexed"},
           f"keys {sorted(body) if isinstance(body, dict) else body}")
    expect(isinstance(body["total_indexed"], int) and isinstance(body["similar_images"], list), f"{str(body)[:200]}")
    for hit in body["similar_images"]:
        expect(isinstance(hit, dict) and set(hit) == SIMILAR_KEYS, f"hit {str(hit)[:200]}")
        expect(isinstance(hit["similarity"], (int, float)) and -1.001 <= hit["similarity"] <= 1.001,
               f"similarity {hit['similarity']}")


def check_embed(body, strict_model: bool) -> list:
    expect(isinstance(body, dict) and set(body) == {"model", "dim", "normalized", "embedding"},
           f"keys {sorted(body) if isinstance(body, dict) else body}")
    if strict_model:
        expect(body["model"] == "mobilenet_v2", f"model {body['model']}")
    expect(isinstance(body["normalized"], bool), "normalized is not a boolean")
    expect(isinstance(body["embedding"], list) and body["dim"] == len(body["embedding"]), "dim is not the length")
    return vector(body["embedding"], body["dim"])


def check_analyze(body, tasks: list | None, size) -> dict:
    """tasks: the corpus's valid tasks (each must succeed or be skipped), or None for a hostile request."""
    expect(isinstance(body, dict) and set(body) == {"image_url", "results"} and isinstance(body["results"], dict),
           f"keys {sorted(body) if isinstance(body, dict) else body}")
    results = body["results"]
    for op_id, result in results.items():
        expect(isinstance(result, dict) and set(result) == RESULT_KEYS, f"{op_id}: {str(result)[:200]}")
        expect(result["status"] in ("success", "error", "skipped"), f"{op_id}: status {result['status']}")
    if tasks is None:
        return results
    expect(set(results) == {t["operation_id"] for t in tasks}, f"results for {sorted(results)}")
    for task in tasks:
        op_id, result = task["operation_id"], results[task["operation_id"]]
        if task["type"] == "detect_bounding_box":
            expect(result["status"] == "success", f"{op_id}: {result['status']} {result['error_message']}")
            box = result["data"]
            if box is not None:
                expect(isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box),
                       f"{op_id}: box {box}")
                if size:
                    expect(0 <= box[0] <= box[2] <= size[0] and 0 <= box[1] <= box[3] <= size[1],
                           f"{op_id}: box {box} outside the {size[0]}x{size[1]} image")
        elif result["status"] == "skipped":
            expect(task.get("params", {}).get("target") == "prominent_face", f"{op_id}: skipped")
        else:
            expect(result["status"] == "success", f"{op_id}: {result['status']} {result['error_message']}")
            vector(result["data"])
    return results


# ---------------------------------------------------------------- the server and the run


def _fake_programs(folder: Path, marker: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FAKE_PROGRAMS:
        program = folder / name
        program.write_text(f'#!/bin/sh\necho "$0 $*" >> "{marker}"\nexit 1\n')
        program.chmod(0o755)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def _snippet(response: httpx.Response) -> str:
    return response.text[:160].replace("\n", " ")


class Runner:
    """The server, the client and the bookkeeping of one run over the corpus."""

    def __init__(self, logs: Path, data_dir: Path, work: Path, cache_dir: str, photo_server):
        assert int(MAIN_ENV["MAX_IMAGE_PIXELS"]) == generate.PIXEL_LIMIT, "regenerate the bombs for the new limit"
        self.logs, self.data_dir, self.cache_dir = logs, data_dir, cache_dir
        self.photo_url = photo_server.url
        self.marker = work / "external-programs-ran.txt"
        self.fake_bin = work / "bin"
        _fake_programs(self.fake_bin, self.marker)
        self.cases = {case.name: case for case in generate.load()}
        self.good = photos.read("canon")  # 80x80 camera JPEG: the health probe on every capability
        self.failures: list[str] = []  # every failing request, for the report
        self.timings: list[tuple[float, str]] = []  # (seconds, "case route[form] status"), for the report
        self.rss_by_case: dict[str, dict[int, int]] = {}
        self.restarts: list[str] = []
        self.references: dict[tuple[str, str], object] = {}
        self.current = ""
        self.guard_tripped = ""
        self.server = None
        self.stopped = threading.Event()
        self.start()
        self.watchdog = threading.Thread(target=self._watch, daemon=True)
        self.watchdog.start()

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        # the main test server's limits; one worker per capability, each with one torch thread (three torch
        # workers on two cores oversubscribe them otherwise); no /stats batching (requests come one by one)
        env = {**MAIN_ENV, "WORKERS_PER_DEVICE": "1", "TORCH_THREADS": "1", "STATS_MAX_BATCH_SIZE": "1",
               "CAPABILITIES": ",".join(CAPABILITIES),
               "DATA_DIR": self.data_dir, "CACHE_DIR": self.cache_dir, "ALLOW_DOWNLOADS": "false",
               "BAD_INPUTS_AS_LIMIT": ADDRESS_SPACE_LIMIT, "PATH": f"{self.fake_bin}:{os.environ.get('PATH', '')}"}
        self.server = start_server(self.logs, f"bad-inputs-{len(self.restarts)}",
                                   script="tests/bad_inputs/limited_server.py", **env)
        self.client = httpx.Client(base_url=self.server.url, timeout=TIMEOUT)
        self.log_offset = 0
        self.tasks = self._choose_tasks()
        self._warm_up()
        self.labels = self._workers()
        self.baseline = self._settled_rss()
        self.rss_by_case = {}  # per-case steps are measured against this start's workers
        self.baseline_total = sum(_rss(p) for p in _tree(self.server.pid))

    def restart(self, why: str) -> None:
        self.restarts.append(f"after {self.current}: {why}")
        self.stop_server()
        if len(self.restarts) <= MAX_RESTARTS:
            try:
                self.start()
            except Exception as exc:  # noqa: BLE001 - recorded: every later case fails as "not run"
                self.restarts.append(f"the restart failed: {exc}"[:500])
                self.restarts += ["(giving up)"] * MAX_RESTARTS

    def stop_server(self) -> None:
        if self.server is not None:
            self.client.close()
            self.server.stop()

    def close(self) -> None:
        self.stopped.set()
        self.stop_server()

    def _watch(self) -> None:
        """Kill the server's process group when it holds more than baseline + MEMORY_GUARD resident."""
        while not self.stopped.wait(0.1):
            server = self.server
            if server is None or server.process.poll() is not None:
                continue
            total = sum(_rss(p) for p in _tree(server.pid))
            if total > self.baseline_total + MEMORY_GUARD:
                self.guard_tripped = f"{self.current}: {total / 2**30:.1f} GiB resident"
                try:
                    os.killpg(server.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _choose_tasks(self) -> list[dict]:
        """/analyze tasks whose models loaded: MobileNetV2 on the whole image, MTCNN (box and crop) when it loaded."""
        operations = self.client.get("/available_operations/").json()["operations"]
        assert operations["embed_mobilenet_v2"]["available"], operations["embed_mobilenet_v2"]
        tasks = [{"operation_id": "mobilenet", "type": "embed_mobilenet_v2"}]
        if "face_detector" not in operations["detect_bounding_box"]["unavailable_models"]:
            face = {"target": "prominent_face", "face_context": "whole_image"}
            tasks += [{"operation_id": "face", "type": "detect_bounding_box", "params": face},
                      {"operation_id": "face_mobilenet", "type": "embed_mobilenet_v2", "params": face}]
        return tasks

    def _warm_up(self) -> None:
        """A few good photos through every route; they must all answer 200 (else nothing here means anything)."""
        for round_, names in enumerate([("canon", "chelsea", "rocket"), ("canon",)]):
            for name in names:
                for route, form, method, path, kwargs in self.image_requests(
                        generate.IMAGE_ROUTES, photos.read(name), label=f"warm-{round_}-{name}"):
                    response = self.client.request(method, path, **kwargs)
                    assert response.status_code == 200, (route, form, name, response.text[:300])
        self.stored_sha = hashlib.sha256(photos.read("chelsea")).hexdigest()

    def _workers(self) -> dict[int, str]:
        """The inference workers (spawned in CAPABILITIES order, so their pids sort that way)."""
        spawned = []
        for process in _tree(self.server.pid):
            try:
                if "spawn_main" in " ".join(process.cmdline()):
                    spawned.append(process.pid)
            except psutil.NoSuchProcess:
                pass
        spawned.sort()
        names = CAPABILITIES if len(spawned) == len(CAPABILITIES) else [f"worker{i}" for i in range(len(spawned))]
        return {pid: f"{name} worker (pid {pid})" for pid, name in zip(spawned, names)}

    def worker_rss(self) -> dict[int, int]:
        return {pid: _rss(psutil.Process(pid)) if psutil.pid_exists(pid) else 0 for pid in self.labels}

    def _settled_rss(self) -> dict[int, int]:
        """Worker RSS once two readings a second apart agree within 2% (at most RSS_SETTLE_S)."""
        deadline = time.monotonic() + RSS_SETTLE_S
        previous = self.worker_rss()
        while time.monotonic() < deadline:
            time.sleep(1.0)
            current = self.worker_rss()
            if all(abs(current[p] - previous[p]) <= 0.02 * max(previous[p], 1) for p in current):
                return current
            previous = current
        return previous

    # ---------------------------------------------------------------- requests per route and form

    def image_requests(self, route_list, data: bytes, label: str, second: bytes | None = None,
                       all_forms: bool = True) -> list:
        """(route, form, request kwargs) for an image on every route that takes one, in every form it reads."""
        b64 = base64.b64encode(data).decode()
        second = second if second is not None else self.good
        upload = ("input", data, "application/octet-stream")
        raw = {"content": data, "headers": {"Content-Type": "application/octet-stream"}}
        tasks = json.dumps(self.tasks)
        plans = {
            "stats": [("multipart", {"files": {"content": upload}}), ("json", {"json": {"content": b64}}),
                      ("raw", raw)],
            "analyze": [("multipart", {"files": {"image_file": upload}, "data": {"tasks_json": tasks}}),
                        ("json", {"json": {"image_base64": b64, "tasks": self.tasks}})],
            "embed": [("multipart", {"files": {"image_file": upload}, "data": {"model": "mobilenet_v2"}}),
                      ("json", {"json": {"image_base64": b64, "model": "mobilenet_v2"}})],
            "add": [("multipart", {"files": {"image": upload}, "data": {"filepath": f"bad/{label}/multipart"}}),
                    ("json", {"json": {"image": b64, "filepath": f"bad/{label}/json"}})],
            "search": [("multipart", {"files": {"image": upload}}), ("json", {"json": {"image": b64}}), ("raw", raw)],
            "compare": [("multipart", {"files": {"image1": upload, "image2": ("second", second)}}),
                        ("json", {"json": {"image1": b64, "image2": base64.b64encode(second).decode()}})],
            "find_similar": [("multipart", {"files": {"file": upload}}), ("json", {"json": {"file": b64}}),
                             ("raw", raw)],
        }
        return [(route, form, "POST", PATHS[route], kwargs) for route in route_list for form, kwargs in plans[route]
                if all_forms or route == "stats" or form == "multipart"]

    def url_requests(self, url: str, label: str) -> list:
        good = ("good.jpg", self.good, "image/jpeg")
        return [
            ("stats", "json", "POST", "/stats", {"json": {"content": url}}),
            ("analyze", "json", "POST", "/analyze", {"json": {"image_url": url, "tasks": self.tasks}}),
            ("embed", "json", "POST", "/embed", {"json": {"image_url": url, "model": "mobilenet_v2"}}),
            ("add", "form", "POST", "/add", {"data": {"url": url, "filepath": f"bad/{label}"}}),
            ("search", "form", "POST", "/search", {"data": {"url": url}}),
            ("compare", "multipart", "POST", "/compare", {"data": {"url1": url}, "files": {"image2": good}}),
            ("find_similar", "form", "POST", "/find_similar/", {"data": {"image_url": url}}),
        ]

    def plan(self, case) -> list:
        """(route, form, method, path, request kwargs) for every request the case sends."""
        if case.kind == "image":
            return self.image_requests(case.routes, case.data, case.name, second=case.reference,
                                       all_forms=case.family not in HEAVY_FAMILIES)
        if case.kind == "url":
            return self.url_requests(case.url.replace("{photo_server}", self.photo_url), case.name)
        if case.kind == "size":
            return [("images", "query", "GET", f"/images/{self.stored_sha}", {"params": {"size": case.query}})]
        return [(route, "body", "POST", PATHS[route], {"content": payload, "headers": {"Content-Type": content_type}})
                for route, content_type, payload in case.requests]

    # ---------------------------------------------------------------- judging one answer

    def judge(self, case, route: str, response: httpx.Response, elapsed: float) -> str | None:
        status = response.status_code
        if elapsed > TIMEOUT:
            return f"took {elapsed:.1f} s (limit {TIMEOUT:g} s)"
        if status >= 500:
            return f"server error: {_snippet(response)}"
        if 400 <= status < 500:
            if case.expect == "200":
                return f"must be accepted, got {status}: {_snippet(response)}"
            if case.expect == "415" and status != 415:
                return f"expected 415: {_snippet(response)}"
            return None
        if status != 200:
            return f"unexpected status: {_snippet(response)}"
        if case.expect in ("4xx", "415"):
            return f"expected {case.expect}, got 200: {_snippet(response)}"
        try:
            if route == "images":
                self._check_preview(response, None)
            else:
                self._check_200(case, route, strict_json(response))
        except Wrong as exc:
            return f"wrong 200: {exc}"
        return None

    def _check_200(self, case, route: str, body) -> None:
        image = case.kind in ("image", "url")
        size = case.size if image else None
        if route == "stats":
            check_stats(body, size)
            if case.reference is not None:
                mine, theirs = body["color_data"], self.reference(case, "stats")["color_data"]
                expect((mine is None) == (theirs is None), "colour present for one of the two, not both")
                if mine is not None:
                    a, b = mine["avg_color"]["rgb"], theirs["avg_color"]["rgb"]
                    expect(max(abs(x - y) for x, y in zip(a, b)) <= 0.02,
                           f"average colour {a}, its 8-bit equivalent's {b}")
        elif route == "analyze":
            results = check_analyze(body, self.tasks if image else None, size)
            if case.reference is not None:
                similarity = cosine(results["mobilenet"]["data"], self.reference(case, "analyze"))
                expect(similarity >= 0.99, f"mobilenet cosine {similarity:.4f} to the 8-bit equivalent's")
        elif route == "embed":
            embedding = check_embed(body, strict_model=image)
            if case.reference is not None:
                similarity = cosine(embedding, self.reference(case, "embed"))
                expect(similarity >= 0.99, f"cosine {similarity:.4f} to the 8-bit equivalent's embedding")
        elif route == "add":
            expect(check_envelope(body, "add") == [], f"result {body['result']}")
        elif route == "search":
            check_search(body)
        elif route == "compare":
            score = check_compare(body)
            if case.reference is not None:  # as close as the equivalent is to itself (a flat picture scores 0)
                itself = self.reference(case, "compare")
                expect(score >= min(90.0, itself - 5), f"score {score} against its 8-bit equivalent, which scores "
                                                       f"{itself} against itself")
        elif route == "find_similar":
            check_similar(body)

    def _check_preview(self, response: httpx.Response, side: int | None) -> Image.Image:
        kind = response.headers.get("content-type", "")
        expect(kind in ("image/jpeg", "image/png"), f"preview content type {kind!r}")
        try:
            with Image.open(io.BytesIO(response.content)) as preview:
                preview.load()
                preview = preview.convert("RGB")
        except Exception as exc:
            raise Wrong(f"the preview does not decode: {exc}") from None
        expect(max(preview.size) <= (side or 1024), f"preview {preview.size} larger than {side or 1024} px")
        return preview

    def reference(self, case, route: str):
        """The same route's answer for the case's 8-bit equivalent (computed once)."""
        key = (case.name, route)
        if key not in self.references:
            data = case.reference
            if route == "stats":
                response = self.client.post("/stats", files={"content": ("ref", data)})
                value = response.json() if response.status_code == 200 else None
            elif route == "analyze":
                response = self.client.post("/analyze", files={"image_file": ("ref", data)},
                                            data={"tasks_json": json.dumps(self.tasks[:1])})
                value = response.json()["results"]["mobilenet"]["data"] if response.status_code == 200 else None
            elif route == "embed":
                response = self.client.post("/embed", files={"image_file": ("ref", data)},
                                            data={"model": "mobilenet_v2"})
                value = response.json()["embedding"] if response.status_code == 200 else None
            elif route == "compare":
                response = self.client.post("/compare", files={"image1": ("ref", data), "image2": ("ref", data)})
                value = response.json()["result"][0]["score"] if response.status_code == 200 else None
            else:  # "preview": the stored reference's 256 px preview
                response = self.client.post("/add", files={"image": ("ref", data)},
                                            data={"filepath": f"bad/{case.name}/reference"})
                digest = hashlib.sha256(data).hexdigest()
                preview = self.client.get(f"/images/{digest}", params={"size": 256})
                value = self._check_preview(preview, 256) if preview.status_code == 200 else None
            if value is None:
                raise Wrong(f"the 8-bit equivalent itself failed on {route}: "
                            f"{response.status_code} {_snippet(response)}")
            self.references[key] = value
        return self.references[key]

    def stored_original(self, case, form: str) -> list[tuple[str, str, int, float, str | None]]:
        """After an accepted /add: /get names the bytes, the original is served as sent, a preview renders."""
        digest = hashlib.sha256(case.data).hexdigest()
        checks = []

        def timed(what, send, check):
            started = time.monotonic()
            try:
                response = send()
            except httpx.TimeoutException:
                checks.append((what, "-", 0, TIMEOUT, "timed out"))
                return
            elapsed = time.monotonic() - started
            problem = None
            if elapsed > TIMEOUT:
                problem = f"took {elapsed:.1f} s"
            elif response.status_code != 200:
                problem = f"status {response.status_code}: {_snippet(response)}"
            else:
                try:
                    check(response)
                except Wrong as exc:
                    problem = f"wrong 200: {exc}"
            checks.append((what, form, response.status_code, elapsed, problem))

        def got(response):
            [record] = check_envelope(strict_json(response), "get") or [None]
            expect(isinstance(record, dict) and record.get("sha256") == digest, f"/get answered {str(record)[:200]}")

        def original(response):
            expect(response.content == case.data, "the served original differs from the bytes sent")
            kind = response.headers.get("content-type", "")
            expect(kind.startswith("image/"), f"the original is served as {kind!r}")
            expect(response.headers.get("x-content-type-options") == "nosniff", "no X-Content-Type-Options: nosniff")

        def preview(response):
            image = self._check_preview(response, 256)
            if case.reference is not None:
                theirs = self.reference(case, "preview")
                mine = image.resize(theirs.size)
                difference = sum(abs(a - b) for a, b in zip(mine.tobytes(), theirs.tobytes())) / len(mine.tobytes())
                expect(difference <= 10, f"the preview differs from its 8-bit equivalent's by {difference:.1f}/255")

        timed("get", lambda: self.client.get("/get", params={"filepath": f"bad/{case.name}/{form}"}), got)
        timed("images?size=256", lambda: self.client.get(f"/images/{digest}", params={"size": 256}), preview)
        timed("images", lambda: self.client.get(f"/images/{digest}"), original)
        return checks

    # ---------------------------------------------------------------- one case

    def run(self, name: str) -> list[str]:
        """Send the case; one line per failing request or check (empty: the case passed)."""
        case = self.cases[name]
        if self.server is None or len(self.restarts) > MAX_RESTARTS:
            line = f"not run: the server was restarted {len(self.restarts)} times ({'; '.join(self.restarts)})"
            self.failures.append(f"{name}: {line}")
            return [line]
        self.current, self.guard_tripped = name, ""
        groups: dict[str, list] = {}  # one queue of requests per capability (each has its own worker)
        for request in self.plan(case):
            groups.setdefault(CAPABILITY[request[0]], []).append(request)
        if case.family in HEAVY_FAMILIES or len(groups) == 1:
            results = [self._send_all(case, [r for group in groups.values() for r in group])]
        else:
            with ThreadPoolExecutor(len(groups)) as pool:
                results = list(pool.map(lambda group: self._send_all(case, group), groups.values()))
        lines = [line for group_lines, _ in results for line in group_lines]
        self.timings += [timing for _, group_timings in results for timing in group_timings]
        lines += self.after(case)
        self.failures += [f"{name}: {line}" for line in lines]
        return lines

    def _send_all(self, case, requests: list) -> tuple[list[str], list]:
        """The requests one after another. A timeout ends its capability's requests in this case (that worker
        is still busy with it); the other capabilities' requests still go."""
        lines, timings, stored, busy, skipped = [], [], False, set(), {}
        for route, form, method, path, kwargs in requests:
            capability = CAPABILITY[route]
            if capability in busy:
                skipped.setdefault(capability, []).append(f"{route}[{form}]")
                continue
            started = time.monotonic()
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TimeoutException:
                lines.append(f"{route}[{form}] -> no answer in {TIMEOUT:g} s")
                busy.add(capability)
                continue
            except httpx.HTTPError as exc:
                lines.append(f"{route}[{form}] -> connection failed after {time.monotonic() - started:.1f} s: {exc!r}")
                break
            elapsed = time.monotonic() - started
            timings.append((elapsed, f"{case.name} {route}[{form}] {response.status_code}"))
            problem = self.judge(case, route, response, elapsed)
            if problem:
                lines.append(f"{route}[{form}] -> {response.status_code} in {elapsed:.2f} s: {problem}")
            if route == "add" and not stored and case.kind == "image" and response.status_code == 200 and not problem:
                stored = True
                for what, how, status, seconds, issue in self.stored_original(case, form):
                    if issue:
                        lines.append(f"{what}[after add {how}] -> {status} in {seconds:.2f} s: {issue}")
        lines += [f"(not sent, the {capability} worker being busy: {', '.join(names)})"
                  for capability, names in skipped.items()]
        return lines, timings

    def after(self, case) -> list[str]:
        """External programs, memory guard, server log, health (with recovery, or a restart)."""
        lines = []
        if self.marker.exists():
            lines.append(f"an external program ran: {self.marker.read_text()[:300]!r}")
            self.marker.unlink()
        if EPS_MARKER.exists():
            lines.append(f"{EPS_MARKER} exists: PostScript from the upload was executed")
            EPS_MARKER.unlink()
        log = self._new_log()
        if "MemoryError" in log:
            lines.append("MemoryError in the server log: an allocation hit the test's "
                         f"{ADDRESS_SPACE_LIMIT // 2**30} GiB address-space limit")
        if self.guard_tripped:
            lines.append(f"memory guard: the server passed its baseline + {MEMORY_GUARD // 2**30} GiB "
                         f"({self.guard_tripped}); its process group was killed")
        capabilities = sorted({CAPABILITY[route] for route in case.routes})
        problem = self.health(capabilities)
        if problem:
            lines.append(f"server unhealthy after the case: {problem}")
            lines.append(self.recover())
        self.rss_by_case[case.name] = self.worker_rss()
        return lines

    def _new_log(self) -> str:
        try:
            with open(self.server.log, "rb") as handle:
                handle.seek(self.log_offset)
                text = handle.read()
                self.log_offset += len(text)
            return text.decode(errors="replace")
        except OSError:
            return ""

    def health(self, capabilities) -> str | None:
        """GET /health, then a good photo on each capability, in parallel; the first problem or None."""
        if self.server.process.poll() is not None:
            return f"the server process exited with {self.server.process.returncode}"
        probes = {
            "health": lambda: self.client.get("/health"),
            "stats": lambda: self.client.post("/stats", files={"content": ("good.jpg", self.good)}),
            "analyze": lambda: self.client.post("/analyze", files={"image_file": ("good.jpg", self.good)},
                                                data={"tasks_json": json.dumps(self.tasks[:1])}),
            "embed": lambda: self.client.post("/embed", files={"image_file": ("good.jpg", self.good)},
                                              data={"model": "mobilenet_v2"}),
            "search": lambda: self.client.post("/search", files={"image": ("good.jpg", self.good)}),
        }

        def probe(name):
            try:
                response = probes[name]()
            except httpx.HTTPError as exc:
                return f"{name}: {exc!r}"
            if response.status_code != 200 or (name == "health" and response.text != '{"status":"Healthy"}'):
                return f"{name}: {response.status_code} {_snippet(response)}"
            return None

        with ThreadPoolExecutor(len(capabilities) + 1) as pool:
            problems = [p for p in pool.map(probe, ["health", *capabilities]) if p]
        return "; ".join(problems) or None

    def recover(self) -> str:
        started = time.monotonic()
        while time.monotonic() - started < RECOVERY_S and self.server.process.poll() is None:
            time.sleep(2.0)
            if self.health(CAPABILITIES) is None:
                return f"(it recovered {time.monotonic() - started:.0f} s later)"
        waited = time.monotonic() - started
        self.restart(f"not healthy {RECOVERY_S:g} s after the case")
        if len(self.restarts) > MAX_RESTARTS:
            return f"(not healthy {waited:.0f} s later, after {MAX_RESTARTS} restarts: the remaining cases are not run)"
        return f"(not healthy {waited:.0f} s later: the server was restarted)"

    def rss_steps(self) -> dict[str, dict[int, int]]:
        """case -> worker pid -> RSS change over that case (the first against the baseline)."""
        steps, previous = {}, self.baseline
        for case, rss in self.rss_by_case.items():
            steps[case] = {pid: rss.get(pid, 0) - previous.get(pid, 0) for pid in self.labels}
            previous = rss
        return steps

    def report(self) -> str:
        lines = [f"{len(self.failures)} failing requests or checks; server restarts: {self.restarts or 'none'}"]
        slowest = [f"  {seconds:6.2f} s  {what}" for seconds, what in sorted(self.timings, reverse=True)[:40]]
        return "\n".join(lines + self.failures + ["", "slowest requests:"] + slowest)


@pytest.fixture(scope="module")
def runner(request, tmp_path_factory, server_logs, cache_dir, photo_server):
    EPS_MARKER.unlink(missing_ok=True)
    run = Runner(server_logs, tmp_path_factory.mktemp("bad-inputs-data"), tmp_path_factory.mktemp("bad-inputs"),
                 cache_dir, photo_server)
    yield run
    run.close()
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    folder = cache.mkdir("bad_inputs") if cache is not None else server_logs
    (folder / "report.txt").write_text(run.report() + "\n")


@pytest.mark.parametrize("name", [entry["name"] for entry in INDEX])
def test_bad_input_gets_a_4xx_or_a_correct_200_and_the_server_stays_healthy(runner, name):
    problems = runner.run(name)
    entry = BY_NAME[name]
    assert not problems, f"{name} ({entry['family']}: {entry['attack']}):\n  " + "\n  ".join(problems)


def test_worker_memory_returns_to_its_warmed_up_baseline(runner):
    """After every case, each worker's RSS is back within 10% of its baseline (polled for RSS_SETTLE_S)."""
    if runner.server is None or runner.server.process.poll() is not None:
        pytest.fail(f"the server is not running; restarts: {runner.restarts}")
    deadline = time.monotonic() + RSS_SETTLE_S
    while True:
        now = runner.worker_rss()
        over = {pid: rss for pid, rss in now.items() if rss == 0 or rss > runner.baseline[pid] * (1 + RSS_TOLERANCE)}
        if not over or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    steps = runner.rss_steps()
    lines = []
    for pid, label in runner.labels.items():
        base, current = runner.baseline[pid], now[pid]
        state = "exited" if current == 0 else f"{current / 2**20:.0f} MB ({(current / base - 1) * 100:+.0f}%)"
        largest = sorted(((step.get(pid, 0), case) for case, step in steps.items()), reverse=True)[:4]
        lines.append(f"{label}: baseline {base / 2**20:.0f} MB, now {state}; largest steps after: "
                     + (", ".join(f"{case} {step / 2**20:+.0f} MB" for step, case in largest if step > 0) or "none"))
    if runner.restarts:
        lines.append(f"(the server was restarted: {runner.restarts}; baselines are the last start's)")
    assert not over, "worker memory did not return within 10% of its baseline:\n  " + "\n  ".join(lines)
