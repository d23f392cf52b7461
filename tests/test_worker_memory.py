"""After any refused or accepted request, each inference worker's RSS comes back within 10% of its
warmed-up baseline: every memory-heavy case is sent 10 times to each route that decodes it, on a real
server whose allow-list also admits ICO (the container whose bomb used to leak 1.44 GB per request)."""

import io
import struct
import time
import zlib

import numpy as np
import psutil
import pytest
from PIL import Image

from tests.conftest import start_server
from tests.test_workers import send, worker_pids

REPEATS = 10
TOLERANCE = 1.10
SETTLE_SECONDS = 20.0
ROUTES = {  # route -> (multipart field, form data)
    "/stats": ("content", {}),
    "/embed": ("image_file", {"model": "mobilenet_v2"}),
    "/search": ("image", {}),
}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height RGBA, with one tiny IDAT: a header bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def ico_around(embedded: bytes) -> bytes:
    """One-image ICO whose directory says 256x256 and whose image is the given PNG."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(embedded), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + embedded


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def cases() -> dict[str, bytes]:
    ramp = np.add.outer(np.arange(6000, dtype=np.uint32), np.arange(6000, dtype=np.uint32))
    big = Image.fromarray(np.stack([ramp % 251, (ramp // 3) % 253, ramp % 241], -1).astype(np.uint8))
    grey16 = Image.fromarray((np.add.outer(np.arange(2000), np.arange(3000)) * 13 % 65536).astype(np.uint16))
    return {
        "ico_png_20000x20000": ico_around(png_header_only(20000, 20000)),
        "ico_png_100000x100000": ico_around(png_header_only(100000, 100000)),
        "png_header_30000x30000": png_header_only(30000, 30000),
        "png_1x100000": encoded(Image.new("L", (1, 100000), 128), "PNG"),
        "png_36_megapixels_accepted": encoded(big, "PNG", compress_level=1),
        "png_16bit_grey_3000x2000_accepted": encoded(grey16, "PNG"),
    }


@pytest.fixture(scope="module")
def memory_server(cache_dir, server_logs, tmp_path_factory):
    server = start_server(
        server_logs, "memory", CAPABILITIES="stats,embed,search", CACHE_DIR=cache_dir, WORKERS_PER_DEVICE=1,
        DATA_DIR=tmp_path_factory.mktemp("memory-data"), IMAGE_FORMATS="JPEG,PNG,WEBP,GIF,BMP,TIFF,MPO,ICO,ICNS",
        MAX_IMAGE_PIXELS=40_000_000, MAX_UPLOAD_BYTES="60MB", REQUEST_TIMEOUT=60,
    )
    yield server
    server.stop()


def rss(pids) -> dict[int, int]:
    return {pid: psutil.Process(pid).memory_info().rss for pid in pids}


def settled(pids, limit: dict[int, float] | None = None) -> dict[int, int]:
    """RSS once it stops falling (or is within `limit`), polled for at most SETTLE_SECONDS."""
    deadline, last = time.monotonic() + SETTLE_SECONDS, rss(pids)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = rss(pids)
        if limit is not None and all(now[p] <= limit[p] for p in pids):
            return now
        if limit is None and all(abs(now[p] - last[p]) < 4 * 1024**2 for p in pids):
            return now
        last = now
    return last


def test_worker_rss_returns_to_baseline_after_memory_heavy_requests(memory_server):
    import httpx

    url = memory_server.url
    pids = worker_pids(memory_server.pid)
    assert len(pids) == 3
    for _ in range(3):  # warm up: every route, real photos
        for capability in ("stats", "embed", "search"):
            assert send(url, capability).status_code == 200
    baseline = settled(pids)
    failures, statuses = [], {}
    for name, data in cases().items():
        for route, (field, form) in ROUTES.items():
            for _ in range(REPEATS):
                response = httpx.post(url + route, files={field: ("x", data)}, data=form, timeout=60)
                statuses.setdefault((name, route), set()).add(response.status_code)
                if response.status_code >= 500:
                    failures.append((name, route, response.status_code, response.text[:200]))
        limit = {pid: baseline[pid] * TOLERANCE for pid in pids}
        after = settled(pids, limit)
        grown = {pid: f"{baseline[pid] / 2**20:.0f} -> {after[pid] / 2**20:.0f} MiB" for pid in pids
                 if after[pid] > limit[pid]}
        if grown:
            failures.append((name, "RSS above baseline + 10%", grown))
    assert not failures, failures
    for name in ("png_36_megapixels_accepted", "png_16bit_grey_3000x2000_accepted"):
        assert all(statuses[(name, route)] == {200} for route in ROUTES), statuses
    for name in ("ico_png_20000x20000", "ico_png_100000x100000", "png_header_30000x30000"):
        assert all(statuses[(name, route)] <= {400, 413, 415} for route in ROUTES), statuses
    assert send(url, "stats").status_code == 200
