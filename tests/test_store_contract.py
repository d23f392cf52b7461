"""The Store contract, run against every backend in tests/store_backends.py, then what only SQLite promises
(an acknowledged add survives kill -9, a reopen keeps everything, the vector index follows SQLite).

Records carry real data: Goldberg signatures of real photos (search.signature) and real MobileNetV2
embeddings (the packaged ImageNet weights), so ordering checks run on the values production sees.
"""

import hashlib
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from images.decode import DecodeLimits, decode_image
from models.mobilenet import MobileNetEmbedder
from search import signature as sg
from settings import Settings
from store.base import Record, StoreError
from store.sqlite import SQLiteStore
from tests import photos
from tests.store_backends import BACKENDS

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


@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request, tmp_path):
    """factory() -> a Store on this test's directory; a second call reopens the same data."""
    opened = []

    def factory():
        opened.append(BACKENDS[request.param](tmp_path))
        return opened[-1]

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory):
    made = store_factory()
    if getattr(made, "knn_supported", True) is False:
        # osmem-server has no kNN: tests that query embeddings run on a real cluster instead
        # (tests/test_store_elastic.py, with ELASTICSEARCH_URL set); the rest of the contract runs here
        def no_knn(*args, **kwargs):
            pytest.skip("this Elasticsearch test server has no kNN; nearest() is checked against a real cluster")

        made.nearest = no_knn
    return made


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


def test_record_without_embeddings(store, real):
    store.add(record(real, "chelsea", embed=False))
    assert store.get("photos/chelsea.jpg").embeddings == {}
    assert store.nearest(MODEL, real["chelsea"][3], k=5) == []


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
    # and so did the old embedding: the path is found by chelsea's vector, once
    found = [n.path for n in store.nearest(MODEL, real["chelsea"][3], k=10)]
    assert found[0] == "same.jpg" and found.count("same.jpg") == 1
    # replacing is a fresh add: the path moves to the end of the insertion order
    assert store.list_paths() == ["photos/coffee.jpg", "same.jpg"]


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
    assert "photos/chelsea.jpg" not in [n.path for n in store.nearest(MODEL, real["chelsea"][3], k=10)]


def test_count_and_list_paths(store, real):
    assert store.count() == 0 and store.list_paths() == []
    paths = [f"photos/{name}.jpg" for name in NAMES]
    for name in NAMES:
        store.add(record(real, name))
    assert store.count() == len(NAMES)
    assert store.list_paths() == paths  # insertion order, default limit 20
    assert store.list_paths(limit=3) == paths[:3]
    assert store.list_paths(offset=3, limit=4) == paths[3:7]
    assert store.list_paths(offset=8, limit=20) == paths[8:]
    assert store.list_paths(offset=len(NAMES)) == []
    assert store.list_paths(limit=0) == []


def test_candidates_ordering(store, real):
    # words sharing exactly 63, 40, 20 and 5 positions with the query; the rest are values no real word has
    query = real["astronaut"][2]
    shares = {"all.jpg": 63, "forty.jpg": 40, "twenty.jpg": 20, "five.jpg": 5}
    for i, (path, shared) in enumerate(shares.items()):
        words = query.copy()
        words[shared:] = 3**16 + 1000 * i + np.arange(63 - shared)  # outside the 3^16 word space
        store.add(Record(path=path, sha256="0" * 64, signature=real["astronaut"][1], words=words))
    store.add(Record(path="none.jpg", sha256="0" * 64, signature=real["astronaut"][1], words=query + 3**16))
    found = store.candidates(query)
    assert [r.path for r in found] == ["all.jpg", "forty.jpg", "twenty.jpg", "five.jpg"]  # none.jpg shares none
    assert [r.path for r in store.candidates(query, limit=2)] == ["all.jpg", "forty.jpg"]
    assert np.array_equal(found[0].signature, real["astronaut"][1]) and np.array_equal(found[0].words, query)


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


def test_nearest_ordering_and_similarity(store, real):
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
    assert store.nearest("no-such-model", real["rocket"][3]) == []


def test_unicode_paths_and_metadata(store, real):
    paths = ["фото/猫 🐈.jpg", "a'b\"c%_[x].jpg", "naïve café/ü.png"]
    metadata = {"légende": "日本語のキャプション", "emoji": "🐈‍⬛", "quote": "'\"", "empty": ""}
    for path, name in zip(paths, ("chelsea", "coffee", "rocket")):
        store.add(record(real, name, path=path, metadata=metadata))
    assert store.list_paths() == paths
    for path in paths:
        assert store.get(path).metadata == metadata
    assert store.nearest(MODEL, real["chelsea"][3], k=1)[0].path == paths[0]
    assert store.candidates(real["coffee"][2])[0].path == paths[1]
    assert store.delete(paths[0]) and store.get(paths[0]) is None and store.count() == 2


def test_concurrent_adds_and_reads(store, real):
    errors = []

    def work(t):
        try:
            for i, name in enumerate(NAMES):
                store.add(record(real, name, path=f"t{t}/{i}-{name}.jpg"))
                store.nearest(MODEL, real[name][3], k=3)
                store.candidates(real[name][2], limit=5)
        except Exception as exc:  # noqa: BLE001 - surfaced below: a thread's error would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count() == 4 * len(NAMES)
    assert {n.path for n in store.nearest(MODEL, real["astronaut"][3], k=4)} == {
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
