"""The soak's traffic: a weighted mix of every route's requests, pre-encoded, sent by keep-alive clients.

Each client cycles through its own shuffle of the mix until the deadline. An action is one request (most
are pre-encoded bytes, as bench/loadgen.py sends them) or a short sequence that needs an earlier
answer (a gallery record: create it, read it, rename it, fetch its image, delete it, with the client's
own user cookie). Bad inputs are in the mix on purpose: each names the 4xx it must get.
"""

import asyncio
import base64
import hashlib
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from bench.loadgen import multipart_form_request

OK = frozenset({200})
HEAVY = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "flower")  # models, search, background
COPIES = 4  # /add writes each photo under this many filepaths (and /delete removes them): a bounded index
TASKS_FACE = [  # MTCNN, MobileNetV2 (real weights), CLIP (tiny) on the face crop, a classifier
    {"operation_id": "face", "type": "detect_bounding_box", "params": {"target": "prominent_face", "face_context": "whole_image"}},
    {"operation_id": "mobilenet", "type": "embed_mobilenet_v2", "params": {"target": "whole_image"}},
    {"operation_id": "face_clip", "type": "embed_clip_vit_b_32", "params": {"target": "prominent_face", "face_context": "whole_image"}},
    {"operation_id": "in_7", "type": "classify", "params": {"collection_id": 7}},
]
TASKS_PERSON = [  # Faster R-CNN (random weights), BLIP and DINOv2 (tiny) on the person
    {"operation_id": "person", "type": "detect_bounding_box", "params": {"target": "prominent_person"}},
    {"operation_id": "caption", "type": "describe_image", "params": {"target": "prominent_person", "max_length": 20}},
    {"operation_id": "dino", "type": "embed_dino_v2", "params": {"target": "prominent_person"}},
]


def request(host: str, port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def json_request(host: str, port: int, method: str, path: str, payload, headers: dict | None = None) -> bytes:
    return request(host, port, method, path, json.dumps(payload).encode(),
                   {"Content-Type": "application/json", **(headers or {})})


def two_files(host: str, port: int, path: str, first: bytes, second: bytes) -> bytes:
    """/compare's multipart body: image1 and image2."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.img\"\r\n"
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for name, data in (("image1", first), ("image2", second))) + f"--{boundary}--\r\n".encode()
    return request(host, port, "POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


@dataclass
class Action:
    """One request (`requests`: variants a client cycles through) or, with `flow`, a sequence."""
    label: str
    requests: list = field(default_factory=list)
    expect: frozenset = OK
    weight: int = 1
    fresh: bool = False  # send on a connection of its own and close it (the server answers before reading)
    pool: str | None = None  # the capability whose workers answer it (its requests in flight are capped)
    flow: object = None  # async (client) -> None: a sequence of requests that depend on earlier answers


def build_mix(host: str, port: int, photos: dict[str, bytes], max_upload: int) -> list[Action]:
    """Every route, with weights that keep the cheap routes frequent and the 2-core machine not all models."""
    def mp(path, fields, name, field_name, **kw):
        return multipart_form_request(host, port, path, fields, field_name, f"{name}.img", photos[name], **kw)

    heavy = [n for n in HEAVY if n in photos]
    digests = [hashlib.sha256(photos[n]).hexdigest() for n in heavy]
    face, person = json.dumps(TASKS_FACE), json.dumps(TASKS_PERSON)
    too_large = request(host, port, "POST", "/stats", b"x" * 65536,
                        {"Content-Type": "application/octet-stream"}).replace(
        b"Content-Length: 65536", f"Content-Length: {max_upload + 1}".encode())
    add = [mp("/add", {"filepath": f"soak/{n}-{k}", "metadata": json.dumps({"k": k})}, n, "image")
           for n in heavy for k in range(COPIES)]
    return [
        Action("POST /stats", [mp("/stats", {}, n, "content") for n in photos], weight=8, pool="stats"),
        Action("POST /stats (not an image)", [multipart_form_request(host, port, "/stats", {}, "content", "notes.txt",
                                                                     b"plain text, not a picture\n" * 40)],
               expect=frozenset({415})),
        Action("POST /stats (body over MAX_UPLOAD_BYTES)", [too_large], expect=frozenset({413}), fresh=True),
        Action("POST /analyze", [mp("/analyze", {"tasks_json": face}, n, "image_file") for n in heavy], weight=2, pool="analyze"),
        Action("POST /analyze (person, caption, dino)", [mp("/analyze", {"tasks_json": person}, n, "image_file")
                                                          for n in heavy], pool="analyze"),
        Action("POST /analyze_image_upload/", [mp("/analyze_image_upload/", {"tasks_json": face}, n, "image_file")
                                               for n in heavy], pool="analyze"),
        Action("POST /analyze_image/ (JSON, base64)", [json_request(host, port, "POST", "/analyze_image/", {
            "image_base64": base64.b64encode(photos[n]).decode(), "tasks": TASKS_FACE}) for n in heavy], pool="analyze"),
        Action("GET /available_operations/", [request(host, port, "GET", "/available_operations/")]),
        Action("GET /model_stats", [request(host, port, "GET", "/model_stats")]),
        Action("POST /embed mobilenet_v2", [mp("/embed", {"model": "mobilenet_v2", "normalize": "true"}, n, "image_file")
                                            for n in heavy], weight=2, pool="embed"),
        Action("POST /embed clip_vit_b_32", [mp("/embed", {"model": "clip_vit_b_32"}, n, "image_file") for n in heavy], pool="embed"),
        Action("POST /embed dino_v2", [mp("/embed", {"model": "dino_v2"}, n, "image_file") for n in heavy], pool="embed"),
        Action("POST /embed (not an image)", [multipart_form_request(host, port, "/embed", {"model": "mobilenet_v2"},
                                                                     "image_file", "x.jpg", b"\xff\xd8 not a jpeg" * 50)],
               expect=frozenset({400, 415})),
        Action("POST /embed (unknown model)", [mp("/embed", {"model": "resnet9000"}, heavy[0], "image_file")],
               expect=frozenset({422})),
        Action("POST /add", add, weight=2, pool="search"),
        Action("POST /add (no filepath)", [mp("/add", {}, heavy[0], "image")], expect=frozenset({400})),
        Action("POST /search", [mp("/search", {}, n, "image") for n in heavy], weight=2, pool="search"),
        Action("POST /compare", [two_files(host, port, "/compare", photos[a], photos[b])
                                 for a, b in zip(heavy, heavy[1:] + heavy[:1])], pool="search"),
        Action("POST /find_similar/", [mp("/find_similar/", {"limit": "5"}, n, "file") for n in heavy], weight=2, pool="search"),
        Action("POST /find_similar (clip)", [mp("/find_similar", {"model": "clip_vit_b_32"}, n, "file") for n in heavy], pool="search"),
        Action("GET /count", [request(host, port, "GET", "/count")]),
        Action("GET /list", [request(host, port, "GET", "/list?offset=0&limit=50")]),
        Action("GET /get", [request(host, port, "GET", f"/get?filepath=soak/{n}-0") for n in heavy]),
        Action("GET /ping", [request(host, port, "GET", "/ping")]),
        Action("DELETE /delete", [request(host, port, "DELETE", f"/delete?filepath=soak/{n}-{k}")
                                  for n in heavy for k in range(1, COPIES)]),
        # an original is stored once /add has run; before that a 404 is the right answer
        Action("GET /images/{sha256}", [request(host, port, "GET", f"/images/{d}") for d in digests],
               expect=frozenset({200, 404})),
        Action("GET /images/{sha256}?size=128", [request(host, port, "GET", f"/images/{d}?size=128") for d in digests],
               expect=frozenset({200, 404})),
        Action("GET /images/{bad sha256}", [request(host, port, "GET", "/images/not-a-hash")], expect=frozenset({400})),
        Action("GET /", [request(host, port, "GET", "/")]),
        Action("POST /remove-background", [mp("/remove-background", {"model": "u2netp"}, n, "file") for n in heavy], pool="background"),
        Action("POST /api/remove", [mp("/api/remove", {"model": "u2netp"}, n, "file") for n in heavy], pool="background"),
        Action("records CRUD", flow=record_flow(host, port, photos, heavy), pool="background"),
        Action("GET /health", [request(host, port, "GET", "/health")]),
        Action("GET /no-such-route", [request(host, port, "GET", "/no-such-route")], expect=frozenset({404})),
    ]


def record_flow(host, port, photos, names):
    """POST /records, then GET, PATCH, GET its processed image, GET /records, DELETE: the client's cookie on each."""
    async def flow(client):
        name = names[client.rng.randrange(len(names))]
        cookie = {"Cookie": client.cookie}
        status, body = await client.send("POST /records", multipart_form_request(
            host, port, "/records", {"name": f"soak {name}", "model": "u2netp"}, "image", f"{name}.img", photos[name],
            headers=cookie))
        if status != 200:
            return
        record = json.loads(body)["id"]
        await client.send("GET /records/{id}", request(host, port, "GET", f"/records/{record}", headers=cookie))
        await client.send("PATCH /records/{id}", json_request(host, port, "PATCH", f"/records/{record}",
                                                               {"name": f"renamed {uuid.uuid4().hex[:6]}"}, cookie))
        await client.send("GET /records/{id}/processed", request(host, port, "GET", f"/records/{record}/processed",
                                                                  headers=cookie))
        await client.send("GET /records", request(host, port, "GET", "/records?limit=20", headers=cookie))
        await client.send("DELETE /records/{id}", request(host, port, "DELETE", f"/records/{record}", headers=cookie))
    return flow


@dataclass
class Tally:
    """Per label: latencies (s), statuses, a few bodies of answers not expected; completions per second."""
    latencies: dict = field(default_factory=lambda: defaultdict(list))
    statuses: dict = field(default_factory=lambda: defaultdict(Counter))
    expected: dict = field(default_factory=dict)  # label -> statuses it should get
    surprises: list = field(default_factory=list)  # (label, status, body) of the first unexpected answers
    failures: Counter = field(default_factory=Counter)  # label -> connection errors (no answer at all)
    skipped: Counter = field(default_factory=Counter)  # label -> turns passed over: its pool was at the cap
    done_at: list = field(default_factory=list)  # seconds since the start, one per answer

    def add(self, label: str, status: int, seconds: float, body: bytes, since: float) -> None:
        self.latencies[label].append(seconds)
        self.statuses[label][status] += 1
        self.done_at.append(since)
        if status not in self.expected.get(label, OK) and len(self.surprises) < 40:
            self.surprises.append((label, status, body[:400].decode(errors="replace")))


async def read_answer(reader) -> tuple[int, dict, bytes]:
    """status, headers (lower-cased names), body: Content-Length or chunked."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection without answering")
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
        return status, headers, bytes(body)
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


class Client:
    """One keep-alive connection (reopened when the server closes it), its own user cookie and shuffle."""

    def __init__(self, host: str, port: int, tally: Tally, started: float, seed: int):
        self.host, self.port, self.tally, self.started = host, port, tally, started
        self.rng = random.Random(seed)
        self.connection = None
        self.cookie = ""

    async def _open(self):
        if self.connection is None:
            self.connection = await asyncio.open_connection(self.host, self.port)
        return self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection[1].close()
            self.connection = None

    async def exchange(self, data: bytes, fresh: bool = False) -> tuple[int, dict, bytes]:
        if fresh:
            self.close()
        reader, writer = await self._open()
        try:
            writer.write(data)
            answer = await read_answer(reader)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            self.close()
            raise
        if fresh or answer[1].get("connection", "").lower() == "close":
            self.close()
        return answer

    async def send(self, label: str, data: bytes, fresh: bool = False) -> tuple[int, bytes]:
        start = time.perf_counter()
        try:
            status, _, body = await self.exchange(data, fresh)
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self.tally.failures[label] += 1
            if len(self.tally.surprises) < 40:
                self.tally.surprises.append((label, 0, repr(exc)))
            return 0, b""
        self.tally.add(label, status, time.perf_counter() - start, body, time.monotonic() - self.started)
        return status, body

    async def get_cookie(self) -> None:
        """The signed user cookie the server sets on a first visit (apis/identity.py)."""
        _, headers, _ = await self.exchange(request(self.host, self.port, "GET", "/records?limit=1"))
        self.cookie = headers.get("set-cookie", "").split(";", 1)[0]


async def warm_up(host: str, port: int, mix: list[Action]) -> Counter:
    """Each action once from one client, so every model has loaded and run: statuses counted."""
    tally = Tally(expected={a.label: a.expect for a in mix})
    client = Client(host, port, tally, time.monotonic(), seed=0)
    await client.get_cookie()
    for action in mix:
        await (action.flow(client) if action.flow is not None else client.send(action.label, action.requests[0], action.fresh))
    client.close()
    return sum(tally.statuses.values(), Counter())


async def run(host: str, port: int, mix: list[Action], clients: int, seconds: float, tally: Tally,
              pool_cap: int = 0) -> float:
    """`clients` clients until `seconds` have passed (a request under way is finished); the seconds taken.

    `pool_cap` (0: none): at most that many requests in flight per model pool. A client whose next action
    would pass it goes on to the following one. Without a cap, closed-loop clients pile up in the slowest
    pool (each waits there longest), until its queue waits past REQUEST_TIMEOUT: a measure of overload,
    which bench/backpressure.py makes, not of what a soak looks for (leaks, 5xx under a sustained load).
    """
    for action in mix:
        tally.expected[action.label] = action.expect
    started = time.monotonic()
    deadline = started + seconds
    in_flight = Counter()

    async def one(index: int) -> None:
        client = Client(host, port, tally, started, seed=index)
        await client.get_cookie()
        cycle = [a for a in mix for _ in range(a.weight)]
        turns = Counter()
        try:
            while time.monotonic() < deadline:
                client.rng.shuffle(cycle)
                for action in cycle:
                    if time.monotonic() >= deadline:
                        break
                    if pool_cap and action.pool and action.pool != "stats" and in_flight[action.pool] >= pool_cap:
                        tally.skipped[action.label] += 1
                        continue
                    in_flight[action.pool] += 1
                    try:
                        if action.flow is not None:
                            await action.flow(client)
                            continue
                        # each client walks each action's variants in its own order
                        variant = action.requests[(turns[action.label] + index) % len(action.requests)]
                        turns[action.label] += 1
                        await client.send(action.label, variant, action.fresh)
                    finally:
                        in_flight[action.pool] -= 1
        finally:
            client.close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return time.monotonic() - started
