"""SQLiteStore.bulk_load: the import path (one transaction, postings inserted sorted at the end) gives the
same store as one `add` per record, replaces by path like `add`, and stores nothing when a record is bad."""

import numpy as np
import pytest

from signatures import goldberg as sg
from store.base import Record
from store.sqlite import SQLiteStore


def made(count: int, seed: int = 0, prefix: str = "p") -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        sig = rng.choice(np.arange(-2, 3), size=648).astype(np.int8)
        out.append(Record(path=f"{prefix}/{i}", sha256=f"{i:064x}", signature=sig, words=sg.words(sig),
                          metadata={"i": i, "ü": "✓"}, embeddings={"m": rng.standard_normal(32)}))
    return out


def everything(store: SQLiteStore, probes: list[Record]) -> dict:
    paths = store.list_paths(limit=10_000)
    return {
        "count": store.count(), "paths": paths,
        "records": [(r.sha256, r.signature.tobytes(), r.words.tobytes(), r.metadata, r.embeddings["m"].tobytes())
                    for r in map(store.get, paths)],
        "candidates": [[r.path for r in store.candidates(p.words, limit=5)] for p in probes],
        "nearest": [[n.path for n in store.nearest("m", p.embeddings["m"], k=5)] for p in probes],
    }


def test_bulk_load_gives_the_store_that_adds_give(tmp_path):
    rows = made(300)
    one_by_one, bulk = SQLiteStore(tmp_path / "add"), SQLiteStore(tmp_path / "bulk")
    for record in rows:
        one_by_one.add(record)
    assert bulk.bulk_load(iter(rows)) == 300
    assert everything(bulk, rows[::30]) == everything(one_by_one, rows[::30])
    postings = "SELECT position, word, record_id FROM words ORDER BY 1, 2, 3"
    assert bulk._conn().execute(postings).fetchall() == one_by_one._conn().execute(postings).fetchall()


def test_bulk_load_replaces_by_path_within_the_load_and_before_it(tmp_path):
    store = SQLiteStore(tmp_path)
    old = made(3, seed=1)
    store.add(old[0])
    new = made(3, seed=2)
    new[2].path = new[1].path  # the same path twice in one load: the later one wins
    assert store.bulk_load([new[0], new[1], new[2]]) == 3
    assert store.count() == 2 and store.list_paths() == ["p/0", "p/1"]
    assert np.array_equal(store.get("p/0").signature, new[0].signature)  # replaced the record added before
    assert np.array_equal(store.get("p/1").signature, new[2].signature)
    assert "p/0" not in [r.path for r in store.candidates(old[0].words)]  # the replaced postings went too
    # the overwritten one's postings never arrived: exactly the two live records' postings are stored
    assert [r.path for r in store.candidates(new[1].words)] == []
    live = store._conn().execute("SELECT record_id, count(*) FROM words GROUP BY record_id").fetchall()
    assert sorted(live) == sorted((i, 63) for (i,) in store._conn().execute("SELECT id FROM records"))
    assert store.candidates(new[2].words)[0].path == "p/1"


def test_bulk_load_is_all_or_nothing(tmp_path):
    store = SQLiteStore(tmp_path)
    store.add(made(1, seed=3, prefix="kept")[0])
    rows = made(50, seed=4)
    rows[30] = Record(path="bad", sha256="0", signature=np.zeros(10, np.int8), words=rows[30].words)
    with pytest.raises(ValueError):
        store.bulk_load(rows)
    assert store.list_paths() == ["kept/0"]
    assert store._conn().execute("SELECT count(*) FROM words").fetchone()[0] == 63
