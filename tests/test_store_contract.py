"""The Store contract, run against every backend in tests/store_backends.py (SQLite; Elasticsearch on
osmem-server, whose lack of kNN skips the nearest() tests; and a real cluster when ELASTICSEARCH_URL is set),
then what only SQLite promises (an acknowledged add survives kill -9, a reopen keeps everything, the vector
index follows SQLite). What only Elasticsearch does (mapping, bulk, failures) is in test_store_elastic.py.

Records carry real data: Goldberg signatures of real photos (signatures.goldberg) and real MobileNetV2
embeddings (the packaged ImageNet weights), so ordering checks run on the values production sees.
"""

import hashlib
import io
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from images.decode import DecodeLimits, decode_image
from models.mobilenet import MobileNetEmbedder
from signatures import goldberg as sg
from settings import Settings
from store.base import Record, StoreError
from store.sqlite import SQLiteStore
from tests import photos

# distinct photos with features (the blue 80x80 camera thumbnails have an all-zero signature)
NAMES = ["astronaut", "chelsea", "coffee", "rocket", "camera", "brick", "flower", "iptc", "motorcycle_left", "ihc"]
MODEL = MobileNetEmbedder.name
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real():
    """name -> (sha256, signature, words, MobileNetV2 embedding) of the photo, computed once."""
    embedder = MobileNetEmbedder(Settings())
    embedder.load("cpu")
    out = {}
    for name in NAMES:
        data = photos.read(name)
        image = decode_image(data, DecodeLimits()).image.convert("RGB")
        sig = sg.signature(image)
        out[name] = (hashlib.sha256(data).hexdigest(), sig, sg.words(sig), embedder.forward([image])[0])
    return out


def record(real, name, path=None, metadata=None, embed=True) -> Record:
    sha, sig, words, vector = real[name]
    return Record(
        path=path or f"photos/{name}.jpg", sha256=sha, signature=sig, words=words,
        metadata={"name": name} if metadata is None else metadata,
        embeddings={MODEL: vector} if embed else {},
    )


def unit(v):
    return (np.asarray(v, np.float64) / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def knn_store(store):
    """The store, for tests of nearest(); skipped (in the test's own thread) where the backend has no kNN."""
    if getattr(store, "knn_supported", True) is False:
        pytest.skip("osmem-server has no kNN search: set ELASTICSEARCH_URL to run this against a real cluster")
    return store


@pytest.fixture(scope="module")
def near_duplicates(real):
    """Signature words of the astronaut re-encoded as JPEG quality 30 (shares most of its 63 words with the
    original) and cropped by 4 px on each side (shares fewer)."""
    astronaut = decode_image(photos.read("astronaut"), DecodeLimits()).image.convert("RGB")
    buffer = io.BytesIO()
    astronaut.save(buffer, "JPEG", quality=30)
    width, height = astronaut.size
    variants = {"astronaut_jpeg": Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"),
                "astronaut_crop": astronaut.crop((4, 4, width - 4, height - 4))}
    return {name: sg.words(sg.signature(image)) for name, image in variants.items()}


# ---------------------------------------------------------------------- the contract


def test_add_get_round_trip(store, real):
    metadata = {"name": "astronaut", "tags": ["space", "portrait"], "size": [512, 512], "nested": {"a": 1.5, "b": None}}
    before = time.time()
    store.add(record(real, "astronaut", metadata=metadata))
    got = store.get("photos/astronaut.jpg")
    sha, sig, words, vector = real["astronaut"]
    assert got.path == "photos/astronaut.jpg" and got.sha256 == sha
    assert got.signature.dtype == np.int8 and np.array_equal(got.signature, sig)
    assert got.words.dtype == np.int64 and np.array_equal(got.words, words)
    assert got.metadata == metadata
    assert set(got.embeddings) == {MODEL}
    stored = got.embeddings[MODEL]
    assert stored.dtype == np.float32 and stored.shape == (1280,)
    np.testing.assert_allclose(stored, unit(vector), rtol=0, atol=1e-6)  # stored L2-normalised
    assert before - 1 <= got.created <= time.time() + 1
    assert store.get("photos/missing.jpg") is None
    assert store.count() == 1


def test_record_without_embeddings_or_metadata(store, real):
    store.add(record(real, "chelsea", embed=False, metadata={}))
    got = store.get("photos/chelsea.jpg")
    assert got.embeddings == {} and got.metadata == {}
    assert np.array_equal(got.signature, real["chelsea"][1])


def test_overwrite_by_same_path(store, real):
    store.add(record(real, "astronaut", path="same.jpg"))
    store.add(record(real, "coffee"))
    store.add(record(real, "chelsea", path="same.jpg"))  # replaces astronaut
    assert store.count() == 2
    got = store.get("same.jpg")
    assert np.array_equal(got.signature, real["chelsea"][1]) and got.metadata == {"name": "chelsea"}
    # the old words went with the old record: astronaut's words no longer find the path
    assert "same.jpg" not in [r.path for r in store.candidates(real["astronaut"][2])]
    assert store.candidates(real["chelsea"][2])[0].path == "same.jpg"
    # replacing is a fresh add: the path moves to the end of the insertion order
    assert store.list_paths() == ["photos/coffee.jpg", "same.jpg"]


def test_paths_are_exact_strings(store, real):
    """A phrase match on an analysed path would let 'a/b.jpg' and 'a b.jpg' collide. Here every path is its own."""
    paths = ["a/b.jpg", "a b.jpg", "A/B.JPG", "a/b.jpg ", "x" * 1000]
    for path, name in zip(paths, NAMES):
        store.add(record(real, name, path=path))
    assert store.count() == len(paths) and store.list_paths() == paths
    for path, name in zip(paths, NAMES):
        assert store.get(path).sha256 == real[name][0]
    assert store.delete("a b.jpg") and store.get("a/b.jpg") is not None and store.count() == len(paths) - 1


def test_delete(store, real):
    for name in ("astronaut", "chelsea", "coffee"):
        store.add(record(real, name))
    assert store.delete("photos/chelsea.jpg") is True
    assert store.delete("photos/chelsea.jpg") is False
    assert store.delete("photos/never-added.jpg") is False
    assert store.get("photos/chelsea.jpg") is None
    assert store.count() == 2
    assert store.list_paths() == ["photos/astronaut.jpg", "photos/coffee.jpg"]
    assert "photos/chelsea.jpg" not in [r.path for r in store.candidates(real["chelsea"][2])]


def test_paths_with_sha256_follow_adds_overwrites_and_deletes(store, real):
    """What decides whether a shared original may be deleted: every path still holding those bytes."""
    chelsea = real["chelsea"][0]
    store.add(record(real, "chelsea", path="a/chelsea.jpg"))
    store.add(record(real, "chelsea", path="b/chelsea-copy.jpg"))
    store.add(record(real, "coffee"))
    assert sorted(store.paths_with_sha256(chelsea)) == ["a/chelsea.jpg", "b/chelsea-copy.jpg"]
    assert len(store.paths_with_sha256(chelsea, limit=1)) == 1
    store.add(record(real, "coffee", path="a/chelsea.jpg"))  # overwritten with other bytes
    assert store.paths_with_sha256(chelsea) == ["b/chelsea-copy.jpg"]
    store.delete("b/chelsea-copy.jpg")
    assert store.paths_with_sha256(chelsea) == []
    assert sorted(store.paths_with_sha256(real["coffee"][0])) == ["a/chelsea.jpg", "photos/coffee.jpg"]


def test_count_and_list_paths(store, real):
    assert store.count() == 0 and store.list_paths() == []
    paths = [f"photos/{name}.jpg" for name in NAMES]  # not alphabetical: the order is insertion order
    for name in NAMES:
        store.add(record(real, name))
    assert store.count() == len(NAMES)
    assert store.list_paths() == paths  # default limit 20
    assert store.list_paths(limit=3) == paths[:3]
    assert store.list_paths(offset=3, limit=4) == paths[3:7]
    assert store.list_paths(offset=8, limit=20) == paths[8:]
    assert store.list_paths(offset=len(NAMES)) == []
    assert store.list_paths(limit=0) == []


def test_reopen_sees_the_same_records(store_factory, real):
    """A second store on the same place (another worker process) sees what the first wrote, both ways."""
    first = store_factory()
    for name in NAMES[:4]:
        first.add(record(real, name))
    second = store_factory()
    assert second.count() == 4 and second.list_paths() == first.list_paths()
    got = second.get("photos/coffee.jpg")
    assert np.array_equal(got.signature, real["coffee"][1]) and got.created == first.get("photos/coffee.jpg").created
    second.delete("photos/chelsea.jpg")
    second.add(record(real, "rocket", path="photos/from-second.jpg"))
    assert first.count() == 4 and first.get("photos/chelsea.jpg") is None
    found = [r.path for r in first.candidates(real["rocket"][2], limit=2)]
    assert found == ["photos/rocket.jpg", "photos/from-second.jpg"]  # the same words: oldest first


def test_candidates_ordering(store, real):
    # words sharing exactly 63, 40, 20 and 5 positions with the query; the rest are values no real word has
    query = real["astronaut"][2]
    shares = {"all.jpg": 63, "forty.jpg": 40, "five.jpg": 5, "twenty.jpg": 20, "five-later.jpg": 5}
    for i, (path, shared) in enumerate(shares.items()):
        words = query.copy()
        words[shared:] = 3**16 + 1000 * i + np.arange(63 - shared)  # outside the 3^16 word space
        store.add(Record(path=path, sha256="0" * 64, signature=real["astronaut"][1], words=words))
    store.add(Record(path="none.jpg", sha256="0" * 64, signature=real["astronaut"][1], words=query + 3**16))
    found = store.candidates(query)
    # most shared first; equal counts oldest first; none.jpg shares none
    assert [r.path for r in found] == ["all.jpg", "forty.jpg", "twenty.jpg", "five.jpg", "five-later.jpg"]
    assert [r.path for r in store.candidates(query, limit=2)] == ["all.jpg", "forty.jpg"]
    assert store.candidates(query, limit=0) == []
    assert np.array_equal(found[0].signature, real["astronaut"][1]) and np.array_equal(found[0].words, query)
    assert found[0].embeddings == {}  # candidates carry no embeddings: get() has them


def test_candidates_match_position_and_value(store, real):
    words = real["astronaut"][2]
    store.add(record(real, "astronaut", path="base.jpg"))
    shifted = np.roll(words, 1)  # the same values at other positions share nothing
    assert not np.any(shifted == words)
    assert store.candidates(shifted) == []
    one = shifted.copy()
    one[10] = words[10]
    assert [r.path for r in store.candidates(one)] == ["base.jpg"]


def test_candidates_on_real_photos(store, real):
    for name in NAMES:
        store.add(record(real, name))
    for name in NAMES:
        query = real[name][2]
        found = store.candidates(query)
        assert found[0].path == f"photos/{name}.jpg"
        shared = [int(np.sum(r.words == query)) for r in found]
        assert shared == sorted(shared, reverse=True) and min(shared) >= 1
    assert store.candidates(np.full(63, 3**16 + 7, dtype=np.int64)) == []


def test_candidates_rank_near_duplicates_first(store, real, near_duplicates):
    for name in ("chelsea", "coffee", "rocket"):
        store.add(record(real, name))
    base = record(real, "astronaut", embed=False)
    for name, words in near_duplicates.items():
        store.add(Record(path=f"photos/{name}.jpg", sha256=name, signature=base.signature, words=words))
    store.add(base)
    query = real["astronaut"][2]
    shared = {name: int(np.sum(words == query)) for name, words in near_duplicates.items()}
    assert 63 > shared["astronaut_jpeg"] > shared["astronaut_crop"] > 10
    found = [r.path for r in store.candidates(query, limit=3)]
    assert found == ["photos/astronaut.jpg", "photos/astronaut_jpeg.jpg", "photos/astronaut_crop.jpg"]


def test_unicode_paths_and_metadata(store, real):
    paths = ["фото/猫 🐈.jpg", "a'b\"c%_[x].jpg", "naïve café/ü.png"]
    metadata = {"légende": "日本語のキャプション", "emoji": "🐈‍⬛", "quote": "'\"", "empty": ""}
    for path, name in zip(paths, ("chelsea", "coffee", "rocket")):
        store.add(record(real, name, path=path, metadata=metadata))
    assert store.list_paths() == paths
    for path in paths:
        assert store.get(path).metadata == metadata
    assert store.candidates(real["coffee"][2])[0].path == paths[1]
    assert store.delete(paths[0]) and store.get(paths[0]) is None and store.count() == 2


def _in_threads(work, n: int = 4) -> list:
    """Run work(t) in n threads; every exception, BaseException included, comes back in the list.

    (A pytest.skip() inside a worker thread once ended each worker silently after its first add: Skipped is
    a BaseException, the thread died, and the test saw 4 of 40 records. Nothing may vanish that way.)"""
    errors = []

    def run(t):
        try:
            work(t)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_adds_and_reads(store, real):
    def work(t):
        for i, name in enumerate(NAMES):
            store.add(record(real, name, path=f"t{t}/{i}-{name}.jpg"))
            assert store.get(f"t{t}/{i}-{name}.jpg").sha256 == real[name][0]
            assert f"t{t}/{i}-{name}.jpg" in [r.path for r in store.candidates(real[name][2], limit=10)]
            store.count()

    assert _in_threads(work) == []
    assert store.count() == 4 * len(NAMES)
    paths = store.list_paths(limit=100)
    assert sorted(paths) == sorted(f"t{t}/{i}-{n}.jpg" for t in range(4) for i, n in enumerate(NAMES))
    for t in range(4):  # each thread's adds keep their order
        assert [p for p in paths if p.startswith(f"t{t}/")] == [f"t{t}/{i}-{n}.jpg" for i, n in enumerate(NAMES)]
    assert {r.path for r in store.candidates(real["astronaut"][2], limit=4)} == {
        f"t{t}/0-astronaut.jpg" for t in range(4)
    }


# ---------------------------------------------------------------------- the contract: nearest()


def test_nearest_ordering_and_similarity(knn_store, real):
    store = knn_store
    for name in NAMES:
        store.add(record(real, name))
    matrix = np.stack([unit(real[name][3]) for name in NAMES])
    for name in NAMES:
        found = store.nearest(MODEL, real[name][3], k=4)
        assert len(found) == 4 and found[0].path == f"photos/{name}.jpg"
        assert found[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert found[0].sha256 == real[name][0] and found[0].metadata == {"name": name}
        expected = matrix @ unit(real[name][3])
        assert [n.path for n in found] == [f"photos/{NAMES[i]}.jpg" for i in np.argsort(-expected)[:4]]
        np.testing.assert_allclose([n.similarity for n in found], np.sort(expected)[::-1][:4], atol=1e-5)
    assert len(store.nearest(MODEL, real["rocket"][3], k=100)) == len(NAMES)
    assert store.nearest(MODEL, real["rocket"][3], k=0) == []
    assert store.nearest("no-such-model", real["rocket"][3]) == []


def test_nearest_leaves_out_records_without_that_model(knn_store, real):
    knn_store.add(record(real, "chelsea", embed=False))
    assert knn_store.nearest(MODEL, real["chelsea"][3], k=5) == []
    knn_store.add(record(real, "coffee", path="фото/☕.jpg"))
    assert [n.path for n in knn_store.nearest(MODEL, real["chelsea"][3], k=5)] == ["фото/☕.jpg"]


def test_nearest_follows_overwrite_and_delete(knn_store, real):
    store = knn_store
    store.add(record(real, "astronaut", path="same.jpg"))
    store.add(record(real, "coffee"))
    store.add(record(real, "rocket"))
    store.add(record(real, "chelsea", path="same.jpg"))  # the old vector goes with the old record
    found = [n.path for n in store.nearest(MODEL, real["chelsea"][3], k=10)]
    assert found[0] == "same.jpg" and found.count("same.jpg") == 1 and len(found) == 3
    assert store.nearest(MODEL, real["astronaut"][3], k=1)[0].similarity < 0.99
    store.delete("same.jpg")
    assert "same.jpg" not in [n.path for n in store.nearest(MODEL, real["chelsea"][3], k=10)]


def test_concurrent_adds_and_nearest(knn_store, real):
    def work(t):
        for i, name in enumerate(NAMES):
            knn_store.add(record(real, name, path=f"t{t}/{i}-{name}.jpg"))
            assert f"t{t}/{i}-{name}.jpg" in [n.path for n in knn_store.nearest(MODEL, real[name][3], k=4)]

    assert _in_threads(work) == []
    assert knn_store.count() == 4 * len(NAMES)
    assert {n.path for n in knn_store.nearest(MODEL, real["astronaut"][3], k=4)} == {
        f"t{t}/0-astronaut.jpg" for t in range(4)
    }


# ---------------------------------------------------------------------- SQLite only


def test_sqlite_failed_replace_leaves_the_old_record(tmp_path, real):
    store = SQLiteStore(tmp_path)
    store.add(record(real, "astronaut", path="a.jpg"))
    broken = record(real, "chelsea", path="a.jpg")
    broken.embeddings = {None: real["chelsea"][3]}  # model NULL: the INSERT fails inside the transaction
    with pytest.raises(StoreError):
        store.add(broken)
    got = store.get("a.jpg")
    assert np.array_equal(got.signature, real["astronaut"][1]) and set(got.embeddings) == {MODEL}
    assert [r.path for r in store.candidates(real["astronaut"][2])] == ["a.jpg"]
    assert store.candidates(real["chelsea"][2]) == []
    store.close()


def test_sqlite_rejects_malformed_records(tmp_path, real):
    store = SQLiteStore(tmp_path)
    good = record(real, "astronaut")
    for bad in (
        Record(path="x", sha256="0", signature=good.signature[:100], words=good.words),
        Record(path="x", sha256="0", signature=good.signature, words=good.words[:10]),
        Record(path="x", sha256="0", signature=good.signature, words=good.words, embeddings={MODEL: np.zeros(1280)}),
    ):
        with pytest.raises(ValueError):
            store.add(bad)
    assert store.count() == 0 and store.nearest(MODEL, good.embeddings[MODEL]) == []
    store.add(good)
    mixed = record(real, "chelsea")
    mixed.embeddings = {MODEL: np.ones(512)}  # another dimension under the same model name
    with pytest.raises(ValueError):
        store.add(mixed)
    assert store.count() == 1 and store.get(mixed.path) is None
    store.close()
    with pytest.raises(StoreError):
        store.count()


CHILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from store.base import Record
    from store.sqlite import SQLiteStore

    directory, arrays = sys.argv[1], np.load(sys.argv[2])
    store = SQLiteStore(directory)
    for i in range(len(arrays["signatures"])):
        store.add(Record(path=f"killed/{i}.jpg", sha256="ab" * 32, signature=arrays["signatures"][i],
                         words=arrays["words"][i], metadata={"i": i},
                         embeddings={"mobilenet_v2": arrays["vectors"][i]}))
        print(f"ok {i}", flush=True)  # acknowledged: the add returned
    os.kill(os.getpid(), 9)  # no close(), no checkpoint, no atexit
    """
)


def test_sqlite_acknowledged_add_survives_kill_9(tmp_path, real):
    arrays = tmp_path / "arrays.npz"
    np.savez(
        arrays,
        signatures=np.stack([real[n][1] for n in NAMES]),
        words=np.stack([real[n][2] for n in NAMES]),
        vectors=np.stack([real[n][3] for n in NAMES]),
    )
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "db"), str(arrays)],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert child.returncode == -9, child.stderr
    acknowledged = [line for line in child.stdout.splitlines() if line.startswith("ok ")]
    assert len(acknowledged) == len(NAMES)
    store = SQLiteStore(tmp_path / "db")
    assert store.count() == len(NAMES)
    for i, name in enumerate(NAMES):
        got = store.get(f"killed/{i}.jpg")
        assert got is not None and np.array_equal(got.signature, real[name][1]) and got.metadata == {"i": i}
        assert store.nearest(MODEL, real[name][3], k=1)[0].path == f"killed/{i}.jpg"
    store.close()


def snapshot(store, real):
    """Everything a reader can see, for comparing a store before and after a reopen."""
    paths = store.list_paths(limit=1000)
    records = {p: store.get(p) for p in paths}
    return {
        "count": store.count(),
        "paths": paths,
        "records": {p: (r.sha256, r.signature.tobytes(), r.words.tobytes(), r.metadata, r.created,
                        {m: v.tobytes() for m, v in r.embeddings.items()}) for p, r in records.items()},
        "candidates": [[r.path for r in store.candidates(real[n][2])] for n in NAMES],
        "nearest": [[(x.path, round(x.similarity, 5)) for x in store.nearest(MODEL, real[n][3], k=5)] for n in NAMES],
    }


def test_sqlite_reopen_keeps_everything(tmp_path, real):
    store = SQLiteStore(tmp_path)
    for name in NAMES:
        store.add(record(real, name, metadata={"name": name, "ü": "✓"}))
    store.delete("photos/coffee.jpg")
    store.add(record(real, "coffee", path="photos/rocket.jpg"))  # replace
    before = snapshot(store, real)
    store.close()
    reopened = SQLiteStore(tmp_path)
    assert snapshot(reopened, real) == before
    reopened.close()


def test_sqlite_vector_index_follows_sqlite(tmp_path, real):
    """The in-memory index of one store catches up with writes made through another (another worker
    process, or the data found on disk at open): nearest() always equals brute force over SQLite."""
    reader, writer = SQLiteStore(tmp_path), SQLiteStore(tmp_path)

    def brute(query, k=5, source=writer):
        paths = source.list_paths(limit=1000)
        vectors = np.stack([source.get(p).embeddings[MODEL] for p in paths])
        sims = vectors @ unit(query)
        return [paths[i] for i in np.argsort(-sims, kind="stable")[:k]]

    for name in NAMES[:5]:
        writer.add(record(real, name))
    assert [n.path for n in reader.nearest(MODEL, real["astronaut"][3], k=5)] == brute(real["astronaut"][3])
    writer.delete("photos/astronaut.jpg")
    writer.add(record(real, "astronaut", path="photos/camera.jpg"))  # replace: old vector out, new in
    for name in NAMES[5:]:
        writer.add(record(real, name))
    for name in NAMES:
        assert [n.path for n in reader.nearest(MODEL, real[name][3], k=5)] == brute(real[name][3])
    before = [[n.path for n in reader.nearest(MODEL, real[name][3], k=5)] for name in NAMES]
    reader.close()
    writer.close()
    reopened = SQLiteStore(tmp_path)  # the index is rebuilt from SQLite, the source of truth
    after = [[n.path for n in reopened.nearest(MODEL, real[name][3], k=5)] for name in NAMES]
    assert after == before == [brute(real[name][3], source=reopened) for name in NAMES]
    reopened.close()
