"""The embedded store's vector indexes (store/vectors.py): recall of the IVF snapshot against exact search,
and agreement with SQLite through deletes, replaces, other processes' writes, a reopen and a crash; the
signature index's exact distances, and what it finds that shared words cannot.

Small parameters (snapshots past 60 vectors, 24 PCA dimensions) make the snapshot path run on a few
thousand clustered 48-d vectors in seconds; the code path is the one a million MobileNetV2 vectors take.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from store.base import Record
from store.sqlite import SQLiteStore
from signatures import goldberg as sg
from store.vector_snapshot import snapshot_folders
from store.vectors import VectorParams

MODEL = "m"
DIM = 48
PARAMS = VectorParams(tail_max=60, wait_factor=4, reduced_dim=24, nprobe=6, rerank=64, train_per_list=16)
ROOT = Path(__file__).resolve().parent.parent


def clustered(count: int, seed: int, clusters: int = 40) -> np.ndarray:
    """Unit vectors around `clusters` random centres (clusters are what IVF relies on, as real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((clusters, DIM))
    x = centres[rng.integers(clusters, size=count)] + 0.35 * rng.standard_normal((count, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def records(vectors: np.ndarray, prefix: str = "v", start: int = 0) -> list[Record]:
    words = np.random.default_rng(start).integers(0, 3**16, size=(len(vectors), 63))
    return [
        Record(path=f"{prefix}/{start + i}", sha256="ab" * 32, signature=np.zeros(648, np.int8), words=words[i],
               metadata={"i": start + i}, embeddings={MODEL: v})
        for i, v in enumerate(vectors)
    ]


def exact(store: SQLiteStore, query: np.ndarray, k: int = 10) -> list[str]:
    """Brute force over what SQLite holds now, read without the index."""
    rows = store._conn().execute(
        "SELECT r.path, e.vector FROM embeddings e JOIN records r ON r.id = e.record_id "
        "WHERE e.model = ? ORDER BY r.id",
        (MODEL,),
    ).fetchall()
    matrix = np.frombuffer(b"".join(v for _, v in rows), np.float32).reshape(len(rows), -1)
    sims = matrix @ (query / np.linalg.norm(query))
    return [rows[i][0] for i in np.argsort(-sims, kind="stable")[:k]]


def recall(store, queries, k=10) -> float:
    hits = [len({n.path for n in store.nearest(MODEL, q, k)} & set(exact(store, q, k))) for q in queries]
    return sum(hits) / (k * len(queries))


@pytest.fixture
def built(tmp_path):
    """A store of 3000 vectors whose first query built a snapshot (more than tail_max * wait_factor waited)."""
    store = SQLiteStore(tmp_path, vectors=PARAMS)
    store.bulk_load(records(clustered(3000, seed=1)))
    store.nearest(MODEL, clustered(1, seed=2)[0])
    yield store
    store.close()


def test_snapshot_recall_at_10_against_exact(built):
    index = built.vector_index(MODEL)
    assert index.snapshot is not None and index.snapshot.n == 3000 and index.tail.n == 0 and index.builds == 1
    assert recall(built, clustered(60, seed=3)) >= 0.95


def test_snapshot_similarities_are_exact(built):
    query = clustered(1, seed=4)[0]
    found = built.nearest(MODEL, query, k=10)
    for n in found:
        vector = built.get(n.path).embeddings[MODEL]
        assert n.similarity == pytest.approx(float(vector @ query), abs=1e-5)
    assert [n.similarity for n in found] == sorted((n.similarity for n in found), reverse=True)


def test_stored_vector_finds_itself(built):
    for i in (0, 777, 2999):
        vector = built.get(f"v/{i}").embeddings[MODEL]
        assert built.nearest(MODEL, vector, k=1)[0].path == f"v/{i}"


def test_deletes_and_replaces_by_another_store_are_never_returned(built, tmp_path):
    writer = SQLiteStore(tmp_path, vectors=PARAMS)  # another worker on the same file
    queries = clustered(20, seed=5)
    doomed = {n.path for q in queries for n in built.nearest(MODEL, q, k=3)}
    for path in doomed:
        writer.delete(path)
    # a replace: the path stays, its old vector goes and a new one (a query itself) comes
    replaced = next(f"v/{i}" for i in range(3000) if f"v/{i}" not in doomed)
    writer.add(Record(path=replaced, sha256="cd" * 32, signature=np.zeros(648, np.int8), words=np.arange(63),
                      embeddings={MODEL: queries[0]}))
    index = built.vector_index(MODEL)
    for q in queries:
        found = [n.path for n in built.nearest(MODEL, q, k=10)]
        assert not doomed & set(found)
    assert index.dead_count == len(doomed) + 1 and index.snapshot.n == 3000  # marked dead, not rebuilt
    assert built.nearest(MODEL, queries[0], k=1)[0].path == replaced
    assert recall(built, queries) >= 0.95
    writer.close()


def test_added_records_are_found_before_the_next_snapshot(built):
    new = clustered(30, seed=6)
    for record in records(new, prefix="new"):
        built.add(record)
    index = built.vector_index(MODEL)
    for i, v in enumerate(new):
        assert built.nearest(MODEL, v, k=1)[0].path == f"new/{i}"
    assert index.tail.n == 30 and index.snapshot.n == 3000


def test_background_merge_drops_the_dead_and_keeps_answers(built):
    index = built.vector_index(MODEL)
    gone = [f"v/{i}" for i in range(0, 3000, 100)]
    for path in gone:
        built.delete(path)
    for record in records(clustered(PARAMS.tail_max, seed=7), prefix="late"):
        built.add(record)
    built.nearest(MODEL, clustered(1, seed=8)[0])  # tail + dead > tail_max: a merge starts in the background
    index.wait_for_build(60)
    queries = clustered(30, seed=9)
    assert recall(built, queries) >= 0.95  # the first of these picks the new snapshot up
    assert index.builds == 2 and index.tail.n == 0 and index.dead_count == 0
    assert index.snapshot.n == 3000 - len(gone) + PARAMS.tail_max
    assert len(snapshot_folders(index.root)) == 1  # the old one was removed
    assert not set(gone) & {n.path for q in queries for n in built.nearest(MODEL, q, k=10)}


def test_reopen_uses_the_snapshot_on_disk(built, tmp_path):
    queries = clustered(10, seed=10)
    before = [[(n.path, round(n.similarity, 6)) for n in built.nearest(MODEL, q, k=10)] for q in queries]
    built.close()
    reopened = SQLiteStore(tmp_path, vectors=PARAMS)
    after = [[(n.path, round(n.similarity, 6)) for n in reopened.nearest(MODEL, q, k=10)] for q in queries]
    index = reopened.vector_index(MODEL)
    assert after == before and index.builds == 0 and index.snapshot is not None
    reopened.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from store.sqlite import SQLiteStore
    from tests.test_store_vectors import MODEL, PARAMS, clustered, records
    store = SQLiteStore(sys.argv[1], vectors=PARAMS)
    if sys.argv[2] == "build":
        store.bulk_load(records(clustered(2000, seed=11)))
        store.nearest(MODEL, clustered(1, seed=12)[0])  # builds the snapshot in this process
        for i in range(0, 2000, 50):
            store.delete(f"v/{i}")
        print("done", store.vector_index(MODEL).builds, flush=True)
    else:  # "crash": stop for good in the middle of writing a snapshot, to be killed there
        from store import vector_snapshot
        def stuck(*args, **kwargs):
            print("writing", flush=True)
            time.sleep(600)
        vector_snapshot.Builder._write = stuck
        store.nearest(MODEL, clustered(1, seed=12)[0])
    """
)


def test_snapshot_built_by_another_process_is_used_here(tmp_path):
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "build"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, check=False)
    assert child.returncode == 0 and child.stdout.split() == ["done", "1"], child.stderr
    store = SQLiteStore(tmp_path, vectors=PARAMS)
    queries = clustered(20, seed=13)
    found = {n.path for q in queries for n in store.nearest(MODEL, q, k=10)}
    index = store.vector_index(MODEL)
    assert index.builds == 0 and index.snapshot.n == 2000 and index.dead_count == 40
    assert not found & {f"v/{i}" for i in range(0, 2000, 50)}
    assert recall(store, queries) >= 0.95
    store.close()


def test_crash_while_building_leaves_sqlite_and_answers_intact(tmp_path):
    store = SQLiteStore(tmp_path, vectors=PARAMS)
    store.bulk_load(records(clustered(1500, seed=14)))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), "crash"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing", child.stderr.read()
    os.kill(child.pid, signal.SIGKILL)  # no cleanup: its temporary folder stays, the kernel drops its lock
    child.wait(timeout=30)
    root = store.vector_index(MODEL).root
    assert [p.name.startswith("tmp-") for p in root.iterdir() if p.name != "build.lock"] == [True]
    queries = clustered(20, seed=15)
    assert recall(store, queries) >= 0.95  # this process builds its own snapshot, removing the leftover
    assert [p.name.startswith("snapshot-") for p in root.iterdir() if p.name != "build.lock"] == [True]
    store.close()


def test_unreadable_snapshot_is_ignored_and_replaced(built, tmp_path):
    folder = built.vector_index(MODEL).snapshot.folder
    built.close()
    (folder / "ids.npy").write_bytes(b"not an array")  # a damaged disk, say
    reopened = SQLiteStore(tmp_path, vectors=PARAMS)
    queries = clustered(20, seed=16)
    assert recall(reopened, queries) >= 0.95
    index = reopened.vector_index(MODEL)
    assert index.builds == 1 and index.snapshot.n == 3000 and index.tail.n == 0
    reopened.close()


def test_small_index_stays_exact_in_memory(tmp_path):
    store = SQLiteStore(tmp_path)  # default parameters: exact up to 20,000 vectors, no snapshot
    store.bulk_load(records(clustered(500, seed=17)))
    for q in clustered(10, seed=18):
        assert [n.path for n in store.nearest(MODEL, q, k=10)] == exact(store, q)
    index = store.vector_index(MODEL)
    assert index.snapshot is None and index.tail.n == 500 and not snapshot_folders(index.root)
    store.close()


# ---------------------------------------------------------------------- the signature index


def signatures(count: int, seed: int) -> np.ndarray:
    """Signature-like int8 vectors: -2..2, a third of them zero."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.arange(-2, 3), p=[0.17, 0.16, 0.34, 0.16, 0.17], size=(count, 648)).astype(np.int8)


def moved(sigs: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    step = (rng.random(sigs.shape) < fraction) * rng.choice([-1, 1], sigs.shape)
    return np.clip(sigs.astype(np.int16) + step, -2, 2).astype(np.int8)


def signature_store(path, count=2000) -> tuple[SQLiteStore, np.ndarray]:
    store = SQLiteStore(path, signature_vectors=PARAMS)
    sigs = signatures(count, seed=20)
    store.bulk_load(Record(path=f"s/{i}", sha256="ef" * 32, signature=s, words=sg.words(s)) for i, s in enumerate(sigs))
    return store, sigs


def test_signature_index_distances_are_image_matchs_and_top1_is_exact(tmp_path):
    store, sigs = signature_store(tmp_path)
    queries = moved(sigs[:40:2], 0.1, seed=21)
    results = store.nearest_signatures(list(queries), limit=5)
    assert store.vector_index(None).snapshot is not None  # 2000 > tail_max * wait_factor: the IVF path
    for q, found in zip(queries, results):
        exact = sg.distances(q, sigs)
        assert found[0][1] == exact.min() and found[0][0].path == f"s/{int(exact.argmin())}"
        for record, d in found:
            assert d == sg.distance(q, record.signature)  # bit for bit
        assert [d for _, d in found] == sorted(d for _, d in found)
    store.close()


def test_signature_index_never_returns_deleted_records(tmp_path):
    store, sigs = signature_store(tmp_path)
    store.nearest_signatures([sigs[0]])  # builds the snapshot
    for i in range(0, 40, 2):
        store.delete(f"s/{i}")
    found = store.nearest_signatures(list(sigs[:40]), limit=10, max_distance=sg.CUTOFF)
    paths = {r.path for f in found for r, _ in f}
    assert not paths & {f"s/{i}" for i in range(0, 40, 2)}
    assert {f"s/{i}" for i in range(1, 40, 2)} <= paths  # the others still find themselves
    store.close()


def test_signature_search_finds_a_match_sharing_no_word(tmp_path):
    """A copy with one value per word moved across zero shares none of the 63 words (image_match's lookup
    misses it) but is within the cutoff: found through the signature index."""
    store = SQLiteStore(tmp_path)
    original = signatures(1, seed=22)[0]
    copy = original.copy()
    for start in np.linspace(0, 648, 63, endpoint=False).astype(int):  # image_match's word positions
        copy[start] = 0 if copy[start] else 1  # the word's first value changes its contrast class
    assert not (sg.words(copy) == sg.words(original)).any() and sg.distance(copy, original) < sg.CUTOFF
    store.add(Record(path="copy.jpg", sha256="0" * 64, signature=copy, words=sg.words(copy)))
    assert store.candidates(sg.words(original)) == []
    found = sg.search_signatures(store, [original])
    assert [(r.path, d) for r, d in found] == [("copy.jpg", sg.distance(original, copy))]
    store.close()


def test_two_stores_opening_a_large_index_at_once_build_one_snapshot(tmp_path):
    """Server workers start together: one builds under the lock, the other waits and picks its result up."""
    import threading

    SQLiteStore(tmp_path, vectors=PARAMS).bulk_load(records(clustered(2000, seed=23)))
    stores = [SQLiteStore(tmp_path, vectors=PARAMS) for _ in range(2)]
    query = clustered(1, seed=24)[0]
    answers = [None, None]

    def first_query(i):
        answers[i] = [n.path for n in stores[i].nearest(MODEL, query, k=10)]

    threads = [threading.Thread(target=first_query, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s.vector_index(MODEL).builds for s in stores) == [0, 1]
    assert answers[0] == answers[1] and len(snapshot_folders(stores[0].vector_index(MODEL).root)) == 1
    for s in stores:
        s.close()
