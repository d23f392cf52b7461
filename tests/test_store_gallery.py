"""The background-removal gallery of the Store, run against every backend in tests/store_backends.py:
per-user records with a limit that holds under concurrent adds, no access to another user's records,
and originals kept while a gallery record uses them. SQLite also keeps them through kill -9."""

import hashlib
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from store.base import GALLERY_NAME_MAX, GalleryFull, GalleryRecord, Record
from store.blobs import BlobStore
from store.library import ImageLibrary
from store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
ORIGINAL = hashlib.sha256(b"original").hexdigest()
PROCESSED = hashlib.sha256(b"processed").hexdigest()


def add(store, user="alice", name="cat", limit=10, original=ORIGINAL, processed=PROCESSED) -> GalleryRecord:
    return store.gallery_add(user, name, original, processed, limit)


def test_gallery_round_trip(store):
    before = time.time()
    made = add(store, name="my cat ✓")
    assert len(made.id) == 32 and int(made.id, 16) >= 0
    assert (made.user, made.name, made.original_sha256, made.processed_sha256) == ("alice", "my cat ✓", ORIGINAL,
                                                                                  PROCESSED)
    assert before - 1 <= made.created <= time.time() + 1
    assert store.gallery_get("alice", made.id) == made
    assert store.gallery_count("alice") == 1 and store.gallery_list("alice") == [made]


def test_gallery_list_is_newest_first_and_pages(store):
    made = [add(store, name=f"n{i}") for i in range(5)]
    newest_first = [r.id for r in reversed(made)]
    assert [r.id for r in store.gallery_list("alice")] == newest_first
    assert [r.id for r in store.gallery_list("alice", offset=1, limit=2)] == newest_first[1:3]
    assert store.gallery_list("alice", offset=5) == [] and store.gallery_list("alice", limit=0) == []
    with pytest.raises(ValueError):
        store.gallery_list("alice", offset=-1)


def test_another_users_record_is_invisible_and_untouchable(store):
    mine = add(store, user="alice")
    assert store.gallery_get("bob", mine.id) is None
    assert store.gallery_rename("bob", mine.id, "stolen") is False
    assert store.gallery_delete("bob", mine.id) is None
    assert store.gallery_list("bob") == [] and store.gallery_count("bob") == 0
    assert store.gallery_get("alice", mine.id) == mine  # unchanged, still there
    for unknown in ("0" * 32, "not-an-id", ""):  # ids come from URLs: unknown is not found, not an error
        assert store.gallery_get("alice", unknown) is None
        assert store.gallery_rename("alice", unknown, "x") is False
        assert store.gallery_delete("alice", unknown) is None


def test_gallery_rename(store):
    made = add(store, name="before")
    assert store.gallery_rename("alice", made.id, "after") is True
    got = store.gallery_get("alice", made.id)
    assert got.name == "after" and (got.id, got.created, got.original_sha256) == (made.id, made.created, ORIGINAL)
    assert store.gallery_list("alice")[0].name == "after"
    with pytest.raises(ValueError):
        store.gallery_rename("alice", made.id, " ")
    assert store.gallery_get("alice", made.id).name == "after"


def test_gallery_delete(store):
    kept, gone = add(store, name="kept"), add(store, name="gone")
    assert store.gallery_delete("alice", gone.id) == gone
    assert store.gallery_get("alice", gone.id) is None and store.gallery_delete("alice", gone.id) is None
    assert store.gallery_list("alice") == [kept] and store.gallery_count("alice") == 1


def test_gallery_limit_refuses_the_next_add_per_user(store):
    for i in range(3):
        add(store, name=f"n{i}", limit=3)
    with pytest.raises(GalleryFull):
        add(store, name="one too many", limit=3)
    assert store.gallery_count("alice") == 3 and "one too many" not in [r.name for r in store.gallery_list("alice")]
    add(store, user="bob", limit=3)  # another user's records do not count
    store.gallery_delete("alice", store.gallery_list("alice")[0].id)
    add(store, name="room again", limit=3)
    assert store.gallery_count("alice") == 3


def test_concurrent_adds_never_exceed_the_limit(store):
    start = threading.Barrier(8)
    accepted, refused, failed = [], [], []

    def adder(i):
        start.wait()
        try:
            accepted.append(add(store, name=f"n{i}", limit=3).id)
        except GalleryFull:
            refused.append(i)
        except Exception as exc:  # noqa: BLE001 - any other outcome fails the test below
            failed.append(exc)

    threads = [threading.Thread(target=adder, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failed and len(accepted) + len(refused) == 8
    stored = {r.id for r in store.gallery_list("alice")}
    assert stored == set(accepted) and len(stored) <= 3 and store.gallery_count("alice") == len(stored)
    if isinstance(store, SQLiteStore):  # one transaction counts and inserts: exactly the limit
        assert len(stored) == 3


def test_a_second_store_on_the_same_place_sees_the_gallery(store_factory):
    """Another worker process (or a restart) sees what the first wrote, both ways."""
    first = store_factory()
    made = [add(first, name=f"n{i}", limit=3) for i in range(3)]
    second = store_factory()
    assert second.gallery_list("alice") == list(reversed(made))
    with pytest.raises(GalleryFull):  # the limit counts the first store's records
        add(second, limit=3)
    second.gallery_delete("alice", made[0].id)
    assert first.gallery_count("alice") == 2 and first.gallery_get("alice", made[0].id) is None


@pytest.mark.parametrize("bad", [
    {"user": ""}, {"user": "   "}, {"user": None}, {"name": ""}, {"name": "x" * (GALLERY_NAME_MAX + 1)},
    {"original": "abc"}, {"original": ORIGINAL.upper()}, {"processed": ORIGINAL + "0"}, {"original": ORIGINAL + "\n"},
    {"limit": 0},
    {"limit": "3"},
])
def test_bad_input_is_a_value_error_and_stores_nothing(store, bad):
    with pytest.raises(ValueError):
        add(store, **bad)
    assert store.gallery_count("alice") == 0 and store.gallery_list("alice") == []


def test_originals_are_kept_while_a_gallery_record_uses_them(store, tmp_path):
    library = ImageLibrary(store, BlobStore(tmp_path / "blobs"), tmp_path / "locks")
    rng = np.random.default_rng(0)
    data = b"the photo's bytes"
    sha = hashlib.sha256(data).hexdigest()
    library.add(Record(path="a.jpg", sha256=sha, signature=rng.integers(-2, 3, 648).astype(np.int8),
                          words=rng.integers(0, 1000, 63)), data)
    made = add(store, original=sha, processed=PROCESSED)
    assert store.sha256_referenced(sha) and store.sha256_referenced(PROCESSED)
    assert library.delete("a.jpg")
    assert library.blobs.path(sha).exists()  # the gallery record still uses it
    assert store.sha256_referenced(sha)
    store.gallery_delete("alice", made.id)
    assert not store.sha256_referenced(sha) and not store.sha256_referenced(PROCESSED)
    library.release(sha)
    assert not library.blobs.path(sha).exists()


CHILD = textwrap.dedent(
    """
    import os, sys
    from store.sqlite import SQLiteStore

    store = SQLiteStore(sys.argv[1])
    for i in range(5):
        store.gallery_add("alice", f"n{i}", "ab" * 32, "cd" * 32, limit=5)
        print(f"ok {i}", flush=True)  # acknowledged: the add returned
    os.kill(os.getpid(), 9)  # no close(), no checkpoint
    """
)


def test_sqlite_acknowledged_gallery_add_survives_kill_9(tmp_path):
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "db")], check=False, capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
    assert child.returncode == -9, child.stderr
    assert child.stdout.count("ok ") == 5
    store = SQLiteStore(tmp_path / "db")
    assert [r.name for r in store.gallery_list("alice")] == [f"n{i}" for i in reversed(range(5))]
    store.close()


def test_a_blob_name_is_exactly_64_hex_digits(tmp_path):
    """The name becomes a path: a trailing newline (which a "$" pattern lets through) is refused too."""
    blobs = BlobStore(tmp_path / "blobs")
    for bad in ("a" * 64 + "\n", "../" + "a" * 61, "A" * 64, "a" * 63):
        with pytest.raises(ValueError):
            blobs.path(bad)
    assert blobs.path("a" * 64).name == "a" * 64
