"""POST /stats over real HTTP against the real server process (see conftest.py for its configuration)."""

import base64
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from images.decode import DecodeLimits, decode_image
from stats.image_stats import ImageStats, StatsInput
from tests import photos
from tests.conftest import API_KEY, MAX_UPLOAD_BYTES, ROOT, free_port, server_env, start_server

HEX = re.compile(r"^#[0-9a-f]{6}$")


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model(cache_dir, server_process):  # after the server: it builds the shared colour table
    return ImageStats(cache_dir)


def reference(model, name: str, method: str = "arithmetic") -> dict:
    """What /stats must answer for a photo, computed in-process, as JSON would carry it."""
    limits = DecodeLimits(max_bytes=MAX_UPLOAD_BYTES, max_pixels=40_000_000)
    decoded = decode_image(photos.read(name), limits, max_side=512)
    return json.loads(json.dumps(model.one(StatsInput(decoded, method))))


def upload(client, url, name_or_bytes, *, filename="photo.jpg", field="content", data=None, headers=None):
    body = photos.read(name_or_bytes) if isinstance(name_or_bytes, str) else name_or_bytes
    return client.post(f"{url}/stats", files={field: (filename, body, "application/octet-stream")},
                       data=data, headers=headers)


def assert_ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def assert_detail(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]
    return body["detail"]


def huge_png(width=30000, height=30000) -> bytes:
    """A valid, tiny PNG whose header declares width x height RGB pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3)  # one row's worth; the header is all that is read
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------ good input


def test_multipart_upload_answers_the_documented_shape(client, server, model):
    body = assert_ok(upload(client, server, "canon"))
    assert set(body) == {"exif_data", "color_data", "gps", "image"}
    assert body["image"] == {"format": "JPEG", "width": 80, "height": 80}
    assert body["exif_data"]["Make"] == "Canon"
    assert body["gps"] is None and "GPSInfo" not in body["exif_data"]
    avg, dominant = body["color_data"]["avg_color"], body["color_data"]["dominant_color"]
    assert set(avg) == {"rgb", "hex", "method"} and avg["method"] == "arithmetic"
    assert set(dominant) == {"rgb", "hex", "share", "hsv_bin"}
    for colour in (avg, dominant):
        assert len(colour["rgb"]) == 3 and all(isinstance(c, float) and 0 <= c <= 1 for c in colour["rgb"])
        assert HEX.match(colour["hex"])
    assert 0 < dominant["share"] <= 1
    assert len(dominant["hsv_bin"]) == 3 and all(isinstance(b, int) and 0 <= b <= 9 for b in dominant["hsv_bin"])
    assert body == reference(model, "canon")


def test_large_photo_reports_its_full_size_not_the_thumbnail_size(client, server):
    body = assert_ok(upload(client, server, "xmp_camera"))
    assert body["image"] == {"format": "JPEG", "width": 2000, "height": 1072}


def test_gps_photo_gives_decimal_position_over_http(client, server):
    body = assert_ok(upload(client, server, "gps_tiff", filename="x.tiff"))
    assert body["image"]["format"] == "TIFF"
    assert body["gps"]["latitude"] == pytest.approx(35.5999986, abs=1e-6)
    assert body["gps"]["longitude"] == pytest.approx(-111.6618272, abs=1e-6)
    assert body["gps"]["altitude"] == pytest.approx(1845.656, abs=1e-3)
    assert "GPSInfo" in body["exif_data"]


def test_transparent_photo_over_http_matches_the_model(client, server, model):
    assert assert_ok(upload(client, server, "dice_rgba", filename="x.png")) == reference(model, "dice_rgba")


def test_every_input_form_gives_the_same_colour_data(client, server):
    data = photos.read("chelsea")
    b64 = base64.b64encode(data).decode()
    answers = {
        "multipart file": upload(client, server, data, filename="chelsea.png"),
        "multipart base64 text": client.post(f"{server}/stats", files={"content": (None, b64)}),
        "form-urlencoded base64": client.post(f"{server}/stats", data={"content": b64}),
        "json base64": client.post(f"{server}/stats", json={"content": b64}),
        "json data url": client.post(f"{server}/stats", json={"content": f"data:image/png;base64,{b64}"}),
        "json base64 with line breaks": client.post(
            f"{server}/stats", json={"content": "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))}
        ),
        "raw body": client.post(f"{server}/stats", content=data, headers={"Content-Type": "image/png"}),
    }
    colours = {form: assert_ok(r)["color_data"] for form, r in answers.items()}
    first = colours["multipart file"]
    assert first is not None
    for form, colour in colours.items():
        assert colour == first, form


@pytest.mark.parametrize("form", ["multipart", "urlencoded"])
def test_base64_text_field_over_1mib_within_max_upload_bytes_is_accepted(client, server, form):
    """A 2.4 MB base64 text field is well within MAX_UPLOAD_BYTES (8 MB) and must be read like a file."""
    b64 = base64.b64encode(photos.read("xmp_camera")).decode()
    assert 1024**2 < len(b64) < MAX_UPLOAD_BYTES
    kwargs = {"files": {"content": (None, b64)}} if form == "multipart" else {"data": {"content": b64}}
    body = assert_ok(client.post(f"{server}/stats", **kwargs))
    assert body == assert_ok(upload(client, server, "xmp_camera"))


def test_exif_orientation_swaps_the_reported_size(client, server):
    image = Image.open(photos.path("coffee"))  # 600 x 400
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    body = assert_ok(client.post(f"{server}/stats", content=out.getvalue(), headers={"Content-Type": "image/jpeg"}))
    assert body["image"] == {"format": "JPEG", "width": 400, "height": 600}
    assert body["exif_data"]["Orientation"] == 6


def test_raw_jpeg_body_matches_multipart(client, server):
    data = photos.read("rocket")
    raw = assert_ok(client.post(f"{server}/stats", content=data, headers={"Content-Type": "image/jpeg"}))
    b64 = assert_ok(client.post(f"{server}/stats", json={"content": base64.b64encode(data).decode()}))
    multipart = assert_ok(upload(client, server, data))
    assert raw == b64 == multipart


def test_averaging_method_per_request_is_honoured(client, server, model):
    data = photos.read("astronaut")
    by_method = {"arithmetic": assert_ok(upload(client, server, data))["color_data"]["avg_color"]}
    by_method["geometric"] = assert_ok(
        upload(client, server, data, data={"averaging_method": "geometric"})
    )["color_data"]["avg_color"]
    by_method["harmonic"] = assert_ok(
        client.post(f"{server}/stats", json={"content": base64.b64encode(data).decode(), "averaging_method": "harmonic"})
    )["color_data"]["avg_color"]
    for method, avg in by_method.items():
        assert avg["method"] == method
        assert avg == reference(model, "astronaut", method)["color_data"]["avg_color"]
    # on a real photo the three means differ, in the order the inequality of means requires
    for channel in range(3):
        h, g, a = (by_method[m]["rgb"][channel] for m in ("harmonic", "geometric", "arithmetic"))
        assert h < g < a


@pytest.mark.parametrize("method", ["median", "GEOMETRIC", ""])
def test_invalid_averaging_method_is_422(client, server, method):
    assert_detail(upload(client, server, "canon", data={"averaging_method": method}), 422, "averaging_method")


def test_invalid_averaging_method_in_json_is_422(client, server):
    payload = {"content": base64.b64encode(photos.read("canon")).decode(), "averaging_method": 3}
    assert_detail(client.post(f"{server}/stats", json=payload), 422, "averaging_method")


# ------------------------------------------------------------------------------------- bad input

def _chunks(total: int, size: int = 65536):
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"\xff" * n


BAD_INPUTS = {
    # id: (request builder (client, main url, photo server) -> response, status, words in detail)
    "empty body": (lambda c, u, p: c.post(f"{u}/stats"), 400, ["empty"]),
    "empty json content type": (
        lambda c, u, p: c.post(f"{u}/stats", content=b"  ", headers={"Content-Type": "application/json"}), 400,
        ["empty"],
    ),
    "json without content": (lambda c, u, p: c.post(f"{u}/stats", json={"image": "x"}), 422, ["missing field"]),
    "wrong multipart field": (lambda c, u, p: upload(c, u, "canon", field="image"), 422, ["missing field", "image"]),
    "content given twice": (
        lambda c, u, p: c.post(f"{u}/stats", files=[("content", ("a.jpg", photos.read("canon"))),
                                                    ("content", ("b.jpg", photos.read("canon")))]),
        422, ["more than once"],
    ),
    "multipart without boundary": (
        lambda c, u, p: c.post(f"{u}/stats", content=b"data", headers={"Content-Type": "multipart/form-data"}),
        400, ["boundary"],
    ),
    "text file upload": (lambda c, u, p: upload(c, u, b"just some text\n" * 10, filename="a.txt"), 415, []),
    "truncated camera jpeg": (lambda c, u, p: upload(c, u, "truncated_camera"), 400, ["truncated"]),
    "zero-byte upload": (lambda c, u, p: upload(c, u, b""), 400, ["empty"]),
    "zero-byte raw body": (
        lambda c, u, p: c.post(f"{u}/stats", content=b"", headers={"Content-Type": "image/jpeg"}), 400, ["empty"],
    ),
    "body over limit with content-length": (
        lambda c, u, p: c.post(f"{u}/stats", content=b"\xff" * (MAX_UPLOAD_BYTES + 1),
                               headers={"Content-Type": "image/jpeg"}), 413, ["MAX_UPLOAD_BYTES"],
    ),
    "body over limit chunked": (
        lambda c, u, p: c.post(f"{u}/stats", content=_chunks(MAX_UPLOAD_BYTES + 65536),
                               headers={"Content-Type": "image/jpeg"}), 413, ["MAX_UPLOAD_BYTES"],
    ),
    "multipart over limit": (
        lambda c, u, p: upload(c, u, b"\xff" * (MAX_UPLOAD_BYTES + 10)), 413, ["MAX_UPLOAD_BYTES"],
    ),
    "base64 over limit": (
        lambda c, u, p: c.post(f"{u}/stats", json={"content": "A" * (MAX_UPLOAD_BYTES // 3 * 4 + 8)}), 413, [],
    ),
    "non-json body": (
        lambda c, u, p: c.post(f"{u}/stats", content=b"{not json", headers={"Content-Type": "application/json"}),
        400, ["JSON"],
    ),
    "non-utf8 body": (
        lambda c, u, p: c.post(f"{u}/stats", content=b"\xff\xfe\x00garbage", headers={"Content-Type": "application/json"}),
        400, ["JSON"],
    ),
    "json array": (lambda c, u, p: c.post(f"{u}/stats", json=[{"content": "x"}]), 422, ["object"]),
    "json content is a number": (lambda c, u, p: c.post(f"{u}/stats", json={"content": 12}), 422, []),
    "invalid base64": (lambda c, u, p: c.post(f"{u}/stats", json={"content": "not base64 !!"}), 422, ["base64"]),
    "base64 of text": (
        lambda c, u, p: c.post(f"{u}/stats", json={"content": base64.b64encode(b"hello world").decode()}), 415, [],
    ),
    "loopback url": (
        lambda c, u, p: c.post(f"{u}/stats", json={"content": f"http://127.0.0.1:{p.port}/x"}), 400, ["loopback"],
    ),
    "loopback url to a real photo": (
        lambda c, u, p: c.post(f"{u}/stats", data={"content": f"{p.url}/photo/canon"}), 400, ["loopback"],
    ),
    "metadata url": (
        lambda c, u, p: c.post(f"{u}/stats", json={"content": "http://169.254.169.254/latest/meta-data"}), 400,
        ["link-local"],
    ),
    "unspecified address url": (
        lambda c, u, p: c.post(f"{u}/stats", json={"content": "http://0.0.0.0/"}), 400, ["unspecified"],
    ),
    "private address url": (
        lambda c, u, p: c.post(f"{u}/stats", json={"content": "http://10.0.0.1/x"}), 400, ["private"],
    ),
    "ipv6 mapped loopback url": (
        lambda c, u, p: c.post(f"{u}/stats", json={"content": f"http://[::ffff:127.0.0.1]:{p.port}/x"}), 400,
        ["loopback"],
    ),
    "ftp url": (lambda c, u, p: c.post(f"{u}/stats", json={"content": "ftp://example.com/a.jpg"}), 400, ["scheme"]),
    "file url": (lambda c, u, p: c.post(f"{u}/stats", json={"content": "file:///etc/passwd"}), 400, ["scheme"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_gets_its_4xx_and_the_server_keeps_answering(client, server, photo_server, case):
    build, status, words = BAD_INPUTS[case]
    assert_detail(build(client, server, photo_server), status, *words)
    assert assert_ok(upload(client, server, "canon"))["image"]["width"] == 80


def test_png_declaring_30000x30000_pixels_is_413_quickly(client, server):
    data = huge_png()
    assert len(data) < 200
    # a well-formed PNG header (read by hand: Pillow's own bomb guard refuses to open it, as it should)
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (30000, 30000)
    started = time.monotonic()
    response = upload(client, server, data, filename="bomb.png")
    elapsed = time.monotonic() - started
    assert_detail(response, 413, "MAX_IMAGE_PIXELS")
    assert elapsed < 2.0
    assert assert_ok(upload(client, server, "canon"))


# ------------------------------------------------------------------ URLs, via the allow-listed server


def test_url_to_a_photo_is_fetched_when_its_network_is_allowed(client, allowlisted_server, photo_server, server):
    headers = {"X-API-Key": API_KEY}
    fetched = assert_ok(client.post(f"{allowlisted_server.url}/stats",
                                    json={"content": f"{photo_server.url}/photo/canon"}, headers=headers))
    uploaded = assert_ok(upload(client, server, "canon"))
    assert fetched == uploaded
    as_form_text = assert_ok(client.post(f"{allowlisted_server.url}/stats",
                                         data={"content": f"{photo_server.url}/redirect-loopback/canon"}, headers=headers))
    assert as_form_text == uploaded


@pytest.mark.parametrize(
    "path, status, word",
    [
        ("/text", 415, ""),
        ("/redirect-private", 400, "private"),
        ("/redirect-other-loopback", 400, "loopback"),
        ("/missing", 400, "404"),
    ],
)
def test_bad_url_on_the_allowlisted_server(client, allowlisted_server, photo_server, path, status, word):
    headers = {"X-API-Key": API_KEY}
    response = client.post(f"{allowlisted_server.url}/stats", json={"content": f"{photo_server.url}{path}"},
                           headers=headers)
    assert_detail(response, status, word)
    assert assert_ok(upload(client, allowlisted_server.url, "canon", headers=headers))


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY + "x"}, {"X-API-Key": ""}],
                         ids=["missing", "wrong", "longer", "empty"])
def test_api_key_is_required_when_set(client, allowlisted_server, headers):
    response = upload(client, allowlisted_server.url, "canon", headers=headers)
    assert_detail(response, 401, "X-API-Key")
    ok = assert_ok(upload(client, allowlisted_server.url, "canon", headers={"X-API-Key": API_KEY}))
    assert ok["exif_data"]["Make"] == "Canon"


def test_main_server_needs_no_api_key(client, server):
    assert_ok(upload(client, server, "canon", headers={"X-API-Key": "anything"}))


# ------------------------------------------------------------------------------- batches, load


def test_one_bad_request_in_a_batch_never_fails_its_neighbours(client, server, model):
    jobs = [
        ("canon", 200), ("truncated_camera", 400), ("olympus", 200), ("text", 415),
        ("sony", 200), ("chelsea", 200), ("truncated_camera", 400), ("rocket", 200),
        ("flower", 200), ("text", 415), ("iptc", 200), ("dice_rgba", 200),
        ("truncated_camera", 400), ("astronaut", 200), ("text", 415), ("coffee", 200),
    ]
    expected = {name: reference(model, name) for name, status in jobs if status == 200}
    barrier = threading.Barrier(len(jobs))

    def send(job):
        name, _ = job
        body = b"plain text, not an image\n" * 20 if name == "text" else photos.read(name)
        barrier.wait(timeout=30)
        return upload(client, server, body)

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(send, jobs))
    for (name, status), response in zip(jobs, responses):
        assert response.status_code == status, (name, response.text)
        if status == 200:
            assert response.json() == expected[name], name
        else:
            assert isinstance(response.json()["detail"], str)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cpu_seconds(processes) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def test_idle_server_does_not_busy_spin(server_process):
    processes = _tree(server_process.pid)
    assert len(processes) >= 4  # main, manager/uvicorn and two workers: the whole tree is measured
    time.sleep(2.0)
    before, started = _cpu_seconds(processes), time.monotonic()
    time.sleep(3.0)
    used = (_cpu_seconds(processes) - before) / (time.monotonic() - started)
    assert used < 0.10, f"idle server used {used:.0%} of one core"


def test_sigterm_stops_every_process_and_removes_the_handoff_folder(cache_dir, server_logs):
    """docker stop / systemd send SIGTERM: it must take the same clean path as Ctrl+C."""
    before = set(Path("/dev/shm").glob("imageserver-*"))
    server = start_server(server_logs, "sigterm", CACHE_DIR=cache_dir)
    try:
        created = set(Path("/dev/shm").glob("imageserver-*")) - before
        assert len(created) == 1, created
        tree = _tree(server.pid)
        assert len(tree) >= 3
        os.kill(server.pid, signal.SIGTERM)  # the main process only, as a process manager does
        server.process.wait(timeout=30)
        gone, alive = psutil.wait_procs(tree, timeout=15)
        assert not alive, [p.pid for p in alive]
        assert not created.pop().exists()
    finally:
        server.stop()


# -------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "name, value",
    [("WORKERS_PER_DEVICE", "zero"), ("AVERAGING_METHOD", "median"), ("PORT", "70000"),
     ("MAX_UPLOAD_BYTES", "lots"), ("FETCH_ALLOW_NETWORKS", "10.0.0.0/33")],
)
def test_bad_env_value_exits_2_with_one_line_naming_it(name, value):
    env = server_env(**{"HOST": "127.0.0.1", "PORT": str(free_port()), name: value})
    process = subprocess.Popen([sys.executable, "server.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    started = time.monotonic()
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"server.py with {name}={value} did not exit")
    elapsed = time.monotonic() - started
    assert process.returncode == 2, err.decode()
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"configuration error: {name}={value!r}: expected"), lines[0]
    assert elapsed < 15
