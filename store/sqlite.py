"""The embedded index: one SQLite file, `<data_dir>/index.sqlite3`, in WAL mode; SQLite is the source of truth.

Durability: WAL with synchronous=FULL, so an add that returned survives a power loss, not only a killed
process (WAL+NORMAL survives kill -9 but may lose the last commits on power loss). FULL costs a few
percent of add throughput on a fast disk and more on a slow one (one fsync per add), which is worth the
guarantee that the Store interface makes: `add` is durable when it returns.
`SQLiteStore(..., synchronous="NORMAL")` is there for bulk loads that can be redone.

candidates(): the posting lists are a WITHOUT ROWID table clustered on (position, word, record_id), so each
query word is one index seek followed by a contiguous run of ids. One SQL statement counts each query
word's postings (capped: it stops reading at WORD_CAP + 1), drops the words above WORD_CAP, joins the rest
and groups by record in SQLite's C code; Python then only reads the `limit` best rows. The cap bounds the
worst case (63 words x WORD_CAP postings at most, whatever the index size) at the price of low-feature
images, whose only words are the popular ones: skipped words cannot vote. Without a cap a low-feature
query reads hundreds of thousands of postings.

nearest() and nearest_signatures(): store/vectors.py. Each model's embeddings, and the signatures, have an
index that agrees with SQLite (caught up before every query from ids above the last one seen plus the
`removed` log: after a crash, a reopen, and writes by other processes). Up to 20,000 vectors it is exact
brute force in memory; past that, a snapshot on disk (IVF over PCA-reduced vectors, memory-mapped, so
every server worker shares its pages) plus the exact in-memory tail of newer records; candidates are
scored exactly (cosine from SQLite's vectors; image_match's distance from the signatures), so only
recall is approximate. search_signatures uses nearest_signatures instead of the word lookup here: the
word lookup cannot see a match that shares no word (or only popular ones), nor does it stay fast at 1M.
The numpy IVF needs no new dependency (faiss was tried), keeps its files memory-mapped and shared, and
follows SQLite's removed log across processes.

bulk_load(): one transaction for an import, postings inserted sorted by key at the end (each page of the
posting B-tree written once).

Measured figures (add rates with each synchronous mode, the word lookup with and without WORD_CAP,
search and nearest at 10k, 100k and 1M records, snapshot builds, memory per worker, bulk loads) are in
bench/README.md, "Search benchmark".

The gallery (background-removal records) is the `gallery` table in the same file, durable like `add`.
gallery_add counts the user's records and inserts in one BEGIN IMMEDIATE transaction (one writer at a
time, across processes too), so the per-user limit holds exactly under concurrent adds.
"""

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from signatures.shape import SIGNATURE_LENGTH, WORD_COUNT
from store.base import (GALLERY_NAME_MAX, GalleryFull, GalleryRecord, Neighbour, Record, Store,
                        StoreError, check_gallery_add, check_gallery_text, check_page, is_gallery_id)
from store.vectors import SIGNATURES, VectorIndex, VectorParams, embeddings

FILENAME = "index.sqlite3"
# a (position, word) pair shared by more records than this says nothing about similarity (the
# all-zero word of featureless borders, say): candidates() skips it rather than read its posting list
WORD_CAP = 2000
# the signature index: 48 PCA dimensions of the unit-length signatures rank the candidates, which are then
# scored exactly; 64 of about 2 sqrt(n) lists probed (measured: bench/README.md, "Search benchmark")
SIGNATURE_VECTORS = VectorParams(reduced_dim=48, nprobe=64, rerank=256)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: insertion order, and the vector catch-up mark
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL,                -- JSON object
    signature BLOB NOT NULL,               -- 648 int8
    words BLOB NOT NULL,                   -- 63 int64 little-endian, to delete exactly its postings
    created REAL NOT NULL
);
-- the posting lists: clustered on (position, word) so one lookup reads one contiguous run of ids
CREATE TABLE IF NOT EXISTS words (
    position INTEGER NOT NULL,
    word INTEGER NOT NULL,
    record_id INTEGER NOT NULL,
    PRIMARY KEY (position, word, record_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS embeddings (
    record_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    vector BLOB NOT NULL,                  -- float32, L2-normalised
    PRIMARY KEY (model, record_id)
);
CREATE INDEX IF NOT EXISTS embeddings_record ON embeddings (record_id);
-- paths_with_sha256: is an original still referenced after a delete?
CREATE INDEX IF NOT EXISTS records_sha256 ON records (sha256);
-- every removed record id, in order: how a vector index built earlier (or in another process) catches up
CREATE TABLE IF NOT EXISTS removed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id INTEGER NOT NULL
);
-- the background-removal gallery: per-user records naming two blobs
CREATE TABLE IF NOT EXISTS gallery (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: newest first, whatever the clock does
    id TEXT NOT NULL UNIQUE,               -- uuid4 hex, what callers name a record by
    user TEXT NOT NULL,
    name TEXT NOT NULL,
    original_sha256 TEXT NOT NULL,
    processed_sha256 TEXT NOT NULL,
    created REAL NOT NULL,
    model TEXT NOT NULL DEFAULT ''          -- the segmenter that made the processed image
);
CREATE INDEX IF NOT EXISTS gallery_user ON gallery (user, seq);
-- sha256_referenced: a blob is kept while a gallery record names it
CREATE INDEX IF NOT EXISTS gallery_original ON gallery (original_sha256);
CREATE INDEX IF NOT EXISTS gallery_processed ON gallery (processed_sha256);
"""
GALLERY_COLUMNS = "id, user, name, original_sha256, processed_sha256, created, model"


class SQLiteStore(Store):
    """The Store on one SQLite file under `data_dir`. Thread-safe (a connection per thread, one writer at
    a time); several processes may open the same directory. `candidates` returns records without their
    embeddings (`get` has them). Malformed records (signature not 648 values, words not 63, a zero or
    non-finite embedding, a new dimension under a known model) raise ValueError and store nothing."""

    def __init__(self, data_dir, synchronous: str = "FULL", word_cap: int = WORD_CAP,
                 vectors: VectorParams = VectorParams(), signature_vectors: VectorParams = SIGNATURE_VECTORS):
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r}: expected FULL, NORMAL or EXTRA")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / FILENAME
        self.synchronous = synchronous.upper()
        self.word_cap = word_cap
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer at a time in this process: no SQLITE_BUSY churn
        self.vector_params, self.signature_params = vectors, signature_vectors
        self._vectors: dict[str | None, VectorIndex] = {}  # model -> index; None: the signatures
        self._vectors_lock = threading.Lock()
        self._closed = False
        with self._errors("open"):
            conn = self._conn()
            # persistent in the file; readers never block the writer. Refused on e.g. network filesystems.
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"SQLite index {self.path}: WAL mode unavailable here (journal_mode={mode})")
            with self._write_lock:
                conn.executescript(SCHEMA)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(gallery)")}
                if "model" not in columns:  # a gallery table written before records named their model
                    conn.execute("ALTER TABLE gallery ADD COLUMN model TEXT NOT NULL DEFAULT ''")

    # ------------------------------------------------------------------ connections and errors

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared between threads mid-query)."""
        if self._closed:
            raise StoreError(f"SQLite index {self.path}: the store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write names its own BEGIN IMMEDIATE
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @contextmanager
    def _errors(self, what: str):
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite index {self.path}: {what} failed: {exc}") from exc

    @contextmanager
    def _write(self, what: str):
        """One IMMEDIATE transaction, committed on success and rolled back whole on any error."""
        with self._errors(what), self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._closed = True
        for index in list(self._vectors.values()):  # a snapshot build in the background stops first
            index.close()
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._vectors.clear()

    # ------------------------------------------------------------------ writes

    def add(self, record: Record) -> None:
        signature, words = _check_signature(record.signature), _check_words(record.words)
        metadata = json.dumps(record.metadata or {}, ensure_ascii=False, allow_nan=False)
        vectors = {model: _normalised(model, v) for model, v in (record.embeddings or {}).items()}
        with self._write("add") as conn:
            old = conn.execute("SELECT id, words FROM records WHERE path = ?", (record.path,)).fetchone()
            if old is not None:  # replace: the old record goes entirely, in the same transaction
                _remove(conn, *old)
            cursor = conn.execute(
                "INSERT INTO records (path, sha256, metadata, signature, words, created) VALUES (?, ?, ?, ?, ?, ?)",
                (record.path, record.sha256, metadata, signature.tobytes(), words.astype("<i8").tobytes(), time.time()),
            )
            record_id = cursor.lastrowid
            for model, v in vectors.items():  # one model, one dimension: a mixed index could not be searched
                row = conn.execute("SELECT length(vector) FROM embeddings WHERE model = ? LIMIT 1", (model,)).fetchone()
                if row is not None and row[0] != v.nbytes:
                    raise ValueError(f"{model}: stored embeddings have {row[0] // 4} dimensions, this one {v.size}")
            conn.executemany(
                "INSERT INTO words (position, word, record_id) VALUES (?, ?, ?)",
                [(i, int(w), record_id) for i, w in enumerate(words)],
            )
            conn.executemany(
                "INSERT INTO embeddings (record_id, model, vector) VALUES (?, ?, ?)",
                [(record_id, model, v.tobytes()) for model, v in vectors.items()],
            )

    def bulk_load(self, records, cache_mib: int = 512) -> int:
        """Add many records (an iterable) in ONE transaction, all or none, replacing by path like `add`;
        returns how many were added. For imports: `add` inserts 63 postings per record at random places in
        the posting B-tree, so at a million records each commit rewrites most of its pages; here the
        postings are held back and inserted at the end sorted by key, which writes each page once. The
        write lock is held throughout, so other writers wait (up to busy_timeout, 30 s, then fail)."""
        added, slot_of_path = 0, {}
        ids, words, dropped = [], [], []
        dims: dict[str, int] = {}
        with self._page_cache(cache_mib), self._write("bulk_load") as conn:
            for record in records:
                signature, record_words = _check_signature(record.signature), _check_words(record.words)
                metadata = json.dumps(record.metadata or {}, ensure_ascii=False, allow_nan=False)
                vectors = {model: _normalised(model, v) for model, v in (record.embeddings or {}).items()}
                old = conn.execute("SELECT id, words FROM records WHERE path = ?", (record.path,)).fetchone()
                if old is not None:
                    _remove(conn, *old)
                    if record.path in slot_of_path:  # added earlier in this load: its postings are still here
                        dropped.append(slot_of_path[record.path])
                record_id = conn.execute(
                    "INSERT INTO records (path, sha256, metadata, signature, words, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (record.path, record.sha256, metadata, signature.tobytes(), record_words.astype("<i8").tobytes(),
                     time.time()),
                ).lastrowid
                for model, v in vectors.items():
                    if model not in dims:
                        row = conn.execute("SELECT length(vector) FROM embeddings WHERE model = ? LIMIT 1", (model,))
                        row = row.fetchone()
                        dims[model] = v.nbytes if row is None else row[0]
                    if dims[model] != v.nbytes:
                        raise ValueError(f"{model}: stored embeddings have {dims[model] // 4} dimensions, "
                                         f"this one {v.size}")
                conn.executemany(
                    "INSERT INTO embeddings (record_id, model, vector) VALUES (?, ?, ?)",
                    [(record_id, model, v.tobytes()) for model, v in vectors.items()],
                )
                slot_of_path[record.path] = len(ids)
                ids.append(record_id)
                words.append(record_words)
                added += 1
            if ids:
                keep = np.ones(len(ids), bool)
                keep[dropped] = False
                record_ids, words = np.asarray(ids, np.int64)[keep], np.stack(words)[keep]
                for position in range(WORD_COUNT):  # (position, word, record_id): the table's key order
                    order = np.argsort(words[:, position], kind="stable")  # ids ascend within a word
                    conn.executemany(
                        "INSERT INTO words (position, word, record_id) VALUES (?, ?, ?)",
                        zip([position] * len(order), words[order, position].tolist(), record_ids[order].tolist()),
                    )
        with self._errors("bulk_load checkpoint"):  # fold the large WAL back into the file and truncate it
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return added

    @contextmanager
    def _page_cache(self, mib: int):
        """A larger SQLite page cache on this thread's connection for a while (the default is 2 MB)."""
        with self._errors("cache_size"):
            conn = self._conn()
            before = conn.execute("PRAGMA cache_size").fetchone()[0]
            conn.execute(f"PRAGMA cache_size=-{int(mib) * 1024}")
        try:
            yield
        finally:
            with self._errors("cache_size"):
                conn.execute(f"PRAGMA cache_size={before}")

    def delete(self, path: str) -> bool:
        with self._write("delete") as conn:
            old = conn.execute("SELECT id, words FROM records WHERE path = ?", (path,)).fetchone()
            if old is None:
                return False
            _remove(conn, *old)
            return True

    # ------------------------------------------------------------------ reads

    def get(self, path: str) -> Record | None:
        with self._errors("get"):
            conn = self._conn()
            row = conn.execute(
                "SELECT id, path, sha256, metadata, signature, words, created FROM records WHERE path = ?", (path,)
            ).fetchone()
            if row is None:
                return None
            embeddings = {
                model: np.frombuffer(blob, dtype=np.float32).copy()
                for model, blob in conn.execute("SELECT model, vector FROM embeddings WHERE record_id = ?", (row[0],))
            }
        return _record(row, embeddings)

    def count(self) -> int:
        with self._errors("count"):
            return self._conn().execute("SELECT count(*) FROM records").fetchone()[0]

    def paths_with_sha256(self, sha256: str, limit: int = 10) -> list[str]:
        with self._errors("paths_with_sha256"):
            rows = self._conn().execute(
                "SELECT path FROM records WHERE sha256 = ? ORDER BY id LIMIT ?", (sha256, max(0, int(limit)))
            )
            return [path for (path,) in rows]

    def sha256_referenced(self, sha256: str) -> bool:
        with self._errors("sha256_referenced"):
            return self._conn().execute(
                "SELECT EXISTS (SELECT 1 FROM records WHERE sha256 = ?)"
                " OR EXISTS (SELECT 1 FROM gallery WHERE original_sha256 = ?)"
                " OR EXISTS (SELECT 1 FROM gallery WHERE processed_sha256 = ?)", (sha256, sha256, sha256)
            ).fetchone()[0] == 1

    def list_paths(self, offset: int = 0, limit: int = 20) -> list[str]:
        with self._errors("list_paths"):
            rows = self._conn().execute(
                "SELECT path FROM records ORDER BY id LIMIT ? OFFSET ?", (max(0, int(limit)), max(0, int(offset)))
            )
            return [path for (path,) in rows]

    def candidates(self, words: np.ndarray, limit: int = 100) -> list[Record]:
        words = _check_words(words)
        with self._errors("candidates"):
            conn = self._conn()
            ranked = self._ranked_ids(conn, words, limit)
            if not ranked:
                return []
            rows = _rows_by_id(conn, "SELECT id, path, sha256, metadata, signature, words, created", ranked)
        return [_record(rows[i], {}) for i in ranked if i in rows]

    def _ranked_ids(self, conn, words, limit) -> list[int]:
        """Record ids by number of shared (position, word) pairs, most first, ties oldest first."""
        terms = [(i, int(w)) for i, w in enumerate(words)]
        values = ",".join("(?, ?)" for _ in terms)
        sql = f"""
            WITH q(position, word) AS (VALUES {values}),
            kept AS (
                SELECT position, word FROM q WHERE (
                    SELECT count(*) FROM (
                        SELECT 1 FROM words w WHERE w.position = q.position AND w.word = q.word LIMIT ?
                    )
                ) <= ?
            )
            SELECT w.record_id FROM kept JOIN words w ON w.position = kept.position AND w.word = kept.word
            GROUP BY w.record_id ORDER BY count(*) DESC, w.record_id LIMIT ?
        """
        params = [x for t in terms for x in t] + [self.word_cap + 1, self.word_cap, int(limit)]
        return [i for (i,) in conn.execute(sql, params)]

    def nearest(self, model: str, vector: np.ndarray, k: int = 10) -> list[Neighbour]:
        query = _normalised(model, vector)
        with self._errors("nearest"):
            conn = self._conn()
            index = self.vector_index(model)
            ids, sims = index.search(conn, query[None, :], k)[0]
            if not len(ids):
                return []
            rows = _rows_by_id(conn, "SELECT id, path, sha256, metadata", ids)
        return [
            Neighbour(path=rows[i][1], similarity=float(s), metadata=json.loads(rows[i][3]), sha256=rows[i][2])
            for i, s in zip(ids, sims)
            if i in rows  # removed after the index answered: leave it out rather than fail
        ]

    def nearest_signatures(self, signatures, limit: int = 100, max_distance: float = 1.0) -> list[list[tuple]]:
        """Per signature, up to `limit` [(Record, distance)] under `max_distance`, nearest first, by
        image_match's normalised distance over an index of the signatures themselves (store/vectors.py:
        exact over recent records, IVF candidates scored exactly beyond them). Unlike `candidates`, it
        finds records that share no word with the query. Records come without their embeddings."""
        queries = np.stack([_check_signature(s) for s in signatures]).astype(np.float32)
        with self._errors("nearest_signatures"):
            conn = self._conn()
            found = [(ids, -scores) for ids, scores in self.vector_index(None).search(conn, queries, limit)]
            wanted = {int(i) for ids, d in found for i in ids[d < max_distance]}
            if not wanted:
                return [[] for _ in found]
            rows = _rows_by_id(conn, "SELECT id, path, sha256, metadata, signature, words, created", wanted)
        records = {i: _record(row, {}) for i, row in rows.items()}
        return [[(records[int(i)], float(x)) for i, x in zip(ids, d) if x < max_distance and int(i) in records]
                for ids, d in found]

    # ------------------------------------------------------------------ the gallery

    def gallery_add(self, user: str, name: str, original_sha256: str, processed_sha256: str,
                    limit: int, model: str = "") -> GalleryRecord:
        check_gallery_add(user, name, original_sha256, processed_sha256, limit, model)
        record = GalleryRecord(uuid.uuid4().hex, user, name, original_sha256, processed_sha256, time.time(), model)
        with self._write("gallery_add") as conn:  # count and insert under one write lock: the limit is exact
            have = conn.execute("SELECT count(*) FROM gallery WHERE user = ?", (user,)).fetchone()[0]
            if have >= limit:
                raise GalleryFull(f"user {user!r} already has {have} gallery records (limit {limit})")
            conn.execute(f"INSERT INTO gallery ({GALLERY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (record.id, user, name, original_sha256, processed_sha256, record.created, model))
        return record

    def gallery_get(self, user: str, record_id: str) -> GalleryRecord | None:
        if not is_gallery_id(record_id):
            return None
        with self._errors("gallery_get"):
            row = self._conn().execute(f"SELECT {GALLERY_COLUMNS} FROM gallery WHERE id = ? AND user = ?",
                                       (record_id, user)).fetchone()
        return None if row is None else GalleryRecord(*row)

    def gallery_list(self, user: str, offset: int = 0, limit: int = 50) -> list[GalleryRecord]:
        offset, limit = check_page(offset, limit)
        with self._errors("gallery_list"):
            rows = self._conn().execute(
                f"SELECT {GALLERY_COLUMNS} FROM gallery WHERE user = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
                (user, limit, offset),
            )
            return [GalleryRecord(*row) for row in rows]

    def gallery_count(self, user: str) -> int:
        with self._errors("gallery_count"):
            return self._conn().execute("SELECT count(*) FROM gallery WHERE user = ?", (user,)).fetchone()[0]

    def gallery_rename(self, user: str, record_id: str, name: str) -> bool:
        check_gallery_text("name", name, GALLERY_NAME_MAX)
        if not is_gallery_id(record_id):
            return False
        with self._write("gallery_rename") as conn:
            changed = conn.execute("UPDATE gallery SET name = ? WHERE id = ? AND user = ?", (name, record_id, user))
            return changed.rowcount == 1

    def gallery_delete(self, user: str, record_id: str) -> GalleryRecord | None:
        if not is_gallery_id(record_id):
            return None
        with self._write("gallery_delete") as conn:
            row = conn.execute(f"SELECT {GALLERY_COLUMNS} FROM gallery WHERE id = ? AND user = ?",
                               (record_id, user)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM gallery WHERE id = ?", (record_id,))
        return GalleryRecord(*row)

    def vector_index(self, model: str | None) -> VectorIndex:
        """This process's index of `model`'s embeddings, or of the signatures (None), made on first use."""
        with self._vectors_lock:
            if model not in self._vectors:
                if model is None:
                    source, params = SIGNATURES, self.signature_params
                else:
                    source, params = embeddings(model), self.vector_params
                self._vectors[model] = VectorIndex(self.data_dir / "vectors", source, params, self._open)
            return self._vectors[model]


# ---------------------------------------------------------------------- helpers


def _remove(conn, record_id: int, words_blob: bytes) -> None:
    words = np.frombuffer(words_blob, dtype="<i8")
    conn.executemany(
        "DELETE FROM words WHERE position = ? AND word = ? AND record_id = ?",
        [(i, int(w), record_id) for i, w in enumerate(words)],
    )
    conn.execute("DELETE FROM embeddings WHERE record_id = ?", (record_id,))
    conn.execute("DELETE FROM records WHERE id = ?", (record_id,))
    conn.execute("INSERT INTO removed (record_id) VALUES (?)", (record_id,))


def _rows_by_id(conn, select: str, ids) -> dict[int, tuple]:
    ids = [int(i) for i in ids]
    placeholders = ",".join("?" * len(ids))
    return {row[0]: row for row in conn.execute(f"{select} FROM records WHERE id IN ({placeholders})", ids)}


def _record(row, embeddings) -> Record:
    _, path, sha256, metadata, signature, words, created = row
    return Record(
        path=path,
        sha256=sha256,
        signature=np.frombuffer(signature, dtype=np.int8).copy(),
        words=np.frombuffer(words, dtype="<i8").astype(np.int64),
        metadata=json.loads(metadata),
        embeddings=embeddings,
        created=created,
    )


def _check_signature(signature) -> np.ndarray:
    sig = np.asarray(signature)
    if sig.shape != (SIGNATURE_LENGTH,):
        raise ValueError(f"a signature has shape ({SIGNATURE_LENGTH},), not {sig.shape}")
    return sig.astype(np.int8)


def _check_words(words) -> np.ndarray:
    w = np.asarray(words)
    if w.shape != (WORD_COUNT,):
        raise ValueError(f"words have shape ({WORD_COUNT},), not {w.shape}")
    return w.astype(np.int64)


def _normalised(model: str, vector) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).ravel()
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"{model}: the embedding is zero or not finite; it cannot be normalised")
    return (v / norm).astype(np.float32)
