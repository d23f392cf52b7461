"""client.py index / search / compare / remove, run as a subprocess against a real server (CAPABILITIES=search)
on real photos. The server requires an API key, so every call also proves the client sends --api-key."""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import photos
from tests.conftest import API_KEY, ROOT, free_port, start_server

# the folder every index test starts from: relative path -> photo (None: not an image)
FOLDER = {
    "cats/chelsea.png": "chelsea",
    "food/coffee.png": "coffee",
    "rocket.jpg": "rocket",
    "people/astronaut.png": "astronaut",
    "camera-shot": "canon",  # a JPEG without a suffix: found by its first bytes
    "notes.txt": None,  # text: ignored
    ".thumbnails/chelsea.png": "chelsea",  # hidden folder: never walked
}
IMAGES = sorted(p for p, name in FOLDER.items() if name and not p.startswith("."))


@pytest.fixture(scope="module")
def search_server(tmp_path_factory, server_logs, cache_dir):
    data_dir = tmp_path_factory.mktemp("client-search-data")
    server = start_server(server_logs, "client-search", CAPABILITIES="search", DATA_DIR=data_dir,
                          CACHE_DIR=cache_dir, WORKERS_PER_DEVICE=1, API_KEY=API_KEY,
                          FETCH_ALLOW_NETWORKS="127.0.0.1/32")  # the loopback photo server's URLs
    yield server.url
    server.stop()


def make_folder(root: Path) -> Path:
    for relative, name in FOLDER.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if name:
            shutil.copyfile(photos.path(name), target)
        else:
            target.write_text("a shopping list, not a photo\n")
    return root


def client(url: str, *args: str, key: str | None = API_KEY) -> subprocess.CompletedProcess:
    auth = ["--api-key", key] if key else []
    return subprocess.run([sys.executable, "client.py", "--url", url, *auth, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})


def ok_json(done: subprocess.CompletedProcess):
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stored(url: str, filepath: str) -> list:
    response = httpx.get(f"{url}/get", params={"filepath": filepath}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def album(search_server, tmp_path_factory):
    """The folder indexed once under prefix "album", with two --metadata objects and 3 requests in flight."""
    folder = make_folder(tmp_path_factory.mktemp("album"))
    done = client(search_server, "index", str(folder), "--prefix", "album/", "--concurrency", "3",
                  "--metadata", '{"owner": "tests", "year": 2024}', "--metadata", '{"year": 2025}')
    return folder, done


def test_index_adds_every_image_by_its_relative_path_and_ignores_the_rest(search_server, album):
    folder, done = album
    summary = ok_json(done)
    assert summary == {"added": len(IMAGES), "skipped": 0, "ignored": 1, "failed": {}}
    assert "indexing" in done.stderr  # the progress bar
    for relative in IMAGES:
        [record] = stored(search_server, f"album/{relative}")
        assert record["sha256"] == sha256(folder / relative)
        assert record["metadata"]["owner"] == "tests" and record["metadata"]["year"] == 2025  # merged in order
    assert stored(search_server, "album/notes.txt") == []
    assert stored(search_server, "album/.thumbnails/chelsea.png") == []


def test_second_index_run_skips_everything_already_indexed(search_server, album):
    folder, _ = album
    summary = ok_json(client(search_server, "index", str(folder), "--prefix", "album",
                             "--metadata", '{"owner": "tests", "year": 2025}'))
    assert summary == {"added": 0, "skipped": len(IMAGES), "ignored": 1, "failed": {}}


def test_changed_file_and_changed_metadata_are_indexed_again(search_server, tmp_path):
    folder = make_folder(tmp_path / "changing")
    assert ok_json(client(search_server, "index", str(folder), "--prefix", "changing"))["added"] == len(IMAGES)

    edited = folder / "food/coffee.png"
    with Image.open(edited) as image:
        image.rotate(180).save(edited)  # new bytes under the same path
    summary = ok_json(client(search_server, "index", str(folder), "--prefix", "changing"))
    assert summary == {"added": 1, "skipped": len(IMAGES) - 1, "ignored": 1, "failed": {}}
    [record] = stored(search_server, "changing/food/coffee.png")
    assert record["sha256"] == sha256(edited)

    summary = ok_json(client(search_server, "index", str(folder), "--prefix", "changing", "--metadata", '{"tag": "x"}'))
    assert summary["added"] == len(IMAGES)  # metadata the index lacks is a change too
    assert stored(search_server, "changing/rocket.jpg")[0]["metadata"]["tag"] == "x"


def test_interrupted_index_keeps_what_it_added_and_the_next_run_resumes(search_server, tmp_path):
    TOTAL = 64  # noqa: N806
    folder = tmp_path / "many"
    folder.mkdir()
    names = ["chelsea", "coffee", "rocket", "astronaut"]
    # enough files that the run is still going when Ctrl+C arrives, on an idle machine too (~25 adds/s)
    for i in range(TOTAL):
        shutil.copyfile(photos.path(names[i % 4]), folder / f"{i:02d}-{names[i % 4]}.png")
    headers = {"X-API-Key": API_KEY}
    before = httpx.get(f"{search_server}/count", headers=headers).json()["result"][0]
    command = [sys.executable, "client.py", "--url", search_server, "--api-key", API_KEY, "index", str(folder),
               "--prefix", "many", "--concurrency", "1"]
    # a test run started in the background (`make test &`, CI harnesses) has SIGINT ignored, and children
    # inherit that: give the client the default Ctrl+C back, as a terminal would
    running = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while httpx.get(f"{search_server}/count", headers=headers).json()["result"][0] < before + 2:
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.05)
    running.send_signal(signal.SIGINT)  # Ctrl+C
    out, err = running.communicate(timeout=60)
    assert running.returncode == 1 and "interrupted" in err
    first = json.loads(out)
    assert 2 <= first["added"] < TOTAL and first["failed"] == {}

    again = ok_json(client(search_server, "index", str(folder), "--prefix", "many"))
    assert again == {"added": TOTAL - first["added"], "skipped": first["added"], "ignored": 0, "failed": {}}


def test_search_finds_a_rotated_copy_only_when_orientations_are_searched(search_server, album, tmp_path):
    rotated = tmp_path / "chelsea-rotated.png"
    with Image.open(photos.path("chelsea")) as image:
        image.transpose(Image.Transpose.ROTATE_90).save(rotated)

    body = ok_json(client(search_server, "search", str(rotated)))
    assert body["status"] == "ok"
    best = body["result"][0]
    # any indexed copy of the photo: byte-identical copies (many/NN-chelsea.png) tie in no guaranteed order
    assert best["filepath"] in ("album/cats/chelsea.png", "changing/cats/chelsea.png") or (
        best["filepath"].startswith("many/") and best["filepath"].endswith("-chelsea.png"))
    assert 55 < best["score"] <= 100

    plain = ok_json(client(search_server, "search", str(rotated), "--no-orientations"))
    assert not any(r["filepath"].endswith("cats/chelsea.png") for r in plain["result"])

    limited = ok_json(client(search_server, "search", str(photos.path("chelsea")), "--limit", "1"))
    assert len(limited["result"]) == 1 and limited["result"][0]["score"] == pytest.approx(100, abs=1e-6)


def test_search_similar_ranks_the_same_photo_first_by_embedding(search_server, album):
    body = ok_json(client(search_server, "search", str(photos.path("astronaut")), "--similar", "--limit", "3"))
    assert 1 <= len(body["similar_images"]) <= 3
    best = body["similar_images"][0]
    # the same photo: people/astronaut.png, or one of the byte-identical copies the interrupted-index test
    # adds as many/NN-astronaut.png, which tie with it at similarity 1.0 in no guaranteed order
    assert best["filepath"].endswith(("people/astronaut.png", "-astronaut.png"))
    assert best["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert body["total_indexed"] >= len(IMAGES)


def test_compare_gives_100_for_the_same_photo_and_less_for_another(search_server):
    same = ok_json(client(search_server, "compare", str(photos.path("rocket")), str(photos.path("rocket"))))
    assert same["result"] == [{"score": pytest.approx(100.0)}]
    other = ok_json(client(search_server, "compare", str(photos.path("rocket")), str(photos.path("coffee"))))
    assert other["result"][0]["score"] < 55


def test_search_and_compare_send_urls_for_the_server_to_fetch(search_server, album, photo_server):
    url = f"{photo_server.url}/photo/chelsea"
    # the photo itself, or a byte-identical copy another test indexes as many/NN-chelsea.png (they tie)
    same_photo = ("cats/chelsea.png", "-chelsea.png")
    body = ok_json(client(search_server, "search", url))
    assert body["result"][0]["filepath"].endswith(same_photo)
    body = ok_json(client(search_server, "search", url, "--similar", "--limit", "1"))
    assert body["filename"] == url and body["similar_images"][0]["filepath"].endswith(same_photo)
    body = ok_json(client(search_server, "compare", url, str(photos.path("chelsea"))))  # a URL beside a file
    assert body["result"] == [{"score": pytest.approx(100.0)}]


def test_remove_takes_the_image_out_of_the_index_and_search(search_server, tmp_path):
    folder = tmp_path / "removable"
    folder.mkdir()
    shutil.copyfile(photos.path("motorcycle_left"), folder / "bike.png")
    assert ok_json(client(search_server, "index", str(folder), "--prefix", "removable"))["added"] == 1
    assert stored(search_server, "removable/bike.png")

    assert ok_json(client(search_server, "remove", "removable/bike.png"))["status"] == "ok"
    assert stored(search_server, "removable/bike.png") == []
    hits = ok_json(client(search_server, "search", str(folder / "bike.png")))["result"]
    assert not any(r["filepath"] == "removable/bike.png" for r in hits)


def test_index_reports_the_files_that_failed_and_exits_non_zero(search_server, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copyfile(photos.path("flower"), folder / "flower.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)  # sniffs as JPEG, is not one
    done = client(search_server, "index", str(folder), "--prefix", "mixed")
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["added"] == 1 and list(summary["failed"]) == ["mixed/broken.jpg"]
    assert "HTTP 4" in summary["failed"]["mixed/broken.jpg"]
    assert "1 of 2 images failed" in done.stderr
    assert stored(search_server, "mixed/flower.jpg")


@pytest.mark.parametrize("args, message", [
    (["search", "no/such/photo.jpg"], "no such file"),
    (["compare", "no/such/photo.jpg", "also-missing.png"], "no such file"),
    (["index", "no/such/folder"], "not a folder"),
    (["index", ".", "--metadata", "[1, 2]"], "expected a JSON object"),
    (["search", "--limit", "3", "no/such/photo.jpg", "--similar"], "no such file"),
])
def test_bad_arguments_fail_with_one_line_on_stderr(search_server, args, message):
    done = client(search_server, *args)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: ") and message in done.stderr


def test_server_refusals_fail_with_the_servers_reason(search_server, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo at all\n" * 20)
    for args in (["search", str(text)], ["search", str(text), "--similar"], ["compare", str(text), str(text)]):
        done = client(search_server, *args)
        assert done.returncode == 1 and done.stdout == "", args
        assert done.stderr.startswith("error: HTTP 4"), done.stderr

    done = client(search_server, "search", str(photos.path("chelsea")), key=None)
    assert done.returncode == 1 and "HTTP 401" in done.stderr
    done = client(search_server, "index", str(tmp_path), key="wrong-key")  # refused once, before any file
    assert done.returncode == 1 and "HTTP 401" in done.stderr and done.stdout == ""


def test_unreachable_server_is_one_error(tmp_path):
    done = client(f"http://127.0.0.1:{free_port()}", "index", str(tmp_path))
    assert done.returncode == 1 and "cannot reach" in done.stderr and done.stdout == ""
