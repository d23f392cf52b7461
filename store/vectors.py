"""Nearest-neighbour indexes of the embedded store (each model's embeddings, and the Goldberg signatures),
always in agreement with SQLite.

Small: exact brute force in numpy over the vectors held in memory. Large: most vectors sit in a snapshot
on disk (store/vector_snapshot.py), an inverted-file (IVF) index over PCA-reduced vectors, and only the
tail of records added since the snapshot is held in memory and searched exactly. A snapshot query ranks
the vectors of the `nprobe` lists nearest the query by their reduced forms, then scores the best `rerank`
of them exactly (cosine from the full vectors read from SQLite; for signatures, image_match's normalised
distance from the signatures kept in the snapshot), so scores are exact and only recall is approximate.

Consistency. SQLite is the source of truth; a snapshot is a cache of it, immutable, named after the SQLite
state it was read from in one read transaction: the highest record id given out and the last entry of the
`removed` log. Before every query a process reads what changed since, in one read transaction: new ids go
to the tail, removed ids are dropped from the tail or marked dead in the snapshot (never returned). So
answers agree with SQLite whatever other processes wrote, after a reopen, and after a crash: a snapshot
is written into a temporary folder and renamed into place only when complete and synced, so a crash
leaves at most a temporary folder, which the next build removes.

Building. When the tail and the dead rows together pass `tail_max`, a background thread builds a new
snapshot (one process at a time, under an flock; the others pick the result up from disk). A query that
finds more than `tail_max * wait_factor` vectors outside any snapshot (a bulk import, the first open of a
large store without one) builds it before answering rather than load them all into memory.

Memory. A snapshot is memory-mapped: its pages live in the page cache, shared by every process that
opens the store. What each process holds privately is the tail (at most about `tail_max` vectors), one
byte per snapshot row for the dead flags, and the basis and centroids (a few MB).
"""

import fcntl
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from store.base import StoreError
from store.vector_snapshot import Builder, Cancelled, Snapshot, snapshot_folders, sqlite_state

log = logging.getLogger(__name__)

LOCK_FILE = "build.lock"


@dataclass(frozen=True)
class VectorParams:
    tail_max: int = 20_000  # vectors outside a snapshot searched exactly; past this a snapshot is (re)built
    wait_factor: int = 4  # more than tail_max * wait_factor outside a snapshot: a query builds it first
    reduced_dim: int = 256  # PCA dimensions of the scanned forms
    lists_per_sqrt: float = 2.0  # nlist = lists_per_sqrt * sqrt(n): lists of about sqrt(n) / 2 vectors
    nprobe: int = 32  # lists scanned per query
    rerank: int = 256  # best reduced-space candidates scored exactly
    train_per_list: int = 32  # k-means sample: this many vectors per list
    kmeans_iterations: int = 8


@dataclass(frozen=True)
class Source:
    """Where an index's vectors live in SQLite, and how they are compared."""

    folder: str  # under <data_dir>/vectors
    table: str
    id: str  # the record id column
    vector: str  # the blob column
    dtype: str  # of the blob's values
    model: str | None = None  # embeddings: this model's rows only
    signature: bool = False  # Goldberg signatures: normalised distance, raw values kept in the snapshot

    @property
    def keep_raw(self) -> bool:
        return self.signature

    def select(self, columns: str, condition: str, params=(), suffix: str = "") -> tuple[str, tuple]:
        if self.model is None:
            return f"SELECT {columns} FROM {self.table} WHERE {condition} {suffix}", tuple(params)
        return f"SELECT {columns} FROM {self.table} WHERE model = ? AND ({condition}) {suffix}", (self.model, *params)

    def decode(self, blobs: list[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(blobs), self.dtype).reshape(len(blobs), -1).astype(np.float32)

    def index_form(self, rows: np.ndarray) -> np.ndarray:
        """What PCA, k-means and the probes see: signatures at unit length (cosine orders candidates well:
        a normalised distance d implies a cosine of at least 1 - 2 d^2), embeddings as stored (unit)."""
        if not self.signature:
            return rows
        norms = np.linalg.norm(rows, axis=-1, keepdims=True)
        return rows / np.where(norms == 0, 1, norms)

    def scores(self, queries: np.ndarray, rows: np.ndarray, rows_sq: np.ndarray | None = None) -> np.ndarray:
        """(queries x rows), higher is better: cosine, or minus the normalised distance (`rows_sq`: the rows'
        squared norms, if known). rows @ queries.T, not queries @ rows.T: OpenBLAS runs the latter several
        times slower on a busy machine (measured, 10k x 648 rows: 36 ms against 11 ms at load 4.6)."""
        if not self.signature:
            return (rows @ queries.T).T
        return -signature_distances(queries, rows, rows_sq)


def embeddings(model: str) -> Source:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    folder = safe if safe == model else f"{safe}-{model.encode().hex()[:16]}"
    return Source(f"embeddings/{folder}", "embeddings", "record_id", "vector", "<f4", model=model)


SIGNATURES = Source("signatures", "records", "id", "signature", "i1", signature=True)


def squared_norms(rows: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", rows, rows).astype(np.float64)


def signature_distances(queries: np.ndarray, rows: np.ndarray, rows_sq: np.ndarray | None = None) -> np.ndarray:
    """image_match's normalised distance ||a-b|| / (||a||+||b||), 0/0 as 1.0, for every pair. The values
    are integers, so the float32 products below are exact and the result equals image_match's bit for bit."""
    q, x = np.asarray(queries, np.float32), np.asarray(rows, np.float32)
    qn2 = squared_norms(q)[:, None]
    xn2 = (squared_norms(x) if rows_sq is None else rows_sq)[None, :]
    d2 = np.maximum(qn2 + xn2 - 2 * (x @ q.T).T.astype(np.float64), 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.sqrt(d2) / (np.sqrt(qn2) + np.sqrt(xn2))
    d[np.isnan(d)] = 1.0
    return d


class ExactVectors:
    """Vectors held in memory and searched by brute force; rows move on delete, so deletes are O(1)."""

    def __init__(self):
        self.vectors = np.zeros((0, 0), np.float32)  # rows [0, n) are live; capacity grows by half
        self.ids = np.zeros(0, np.int64)
        self.sq = np.zeros(0, np.float64)  # squared norms (signature distances need them per query)
        self.n = 0
        self.row: dict[int, int] = {}  # record id -> row

    def append(self, ids: list[int], new: np.ndarray) -> None:
        if not len(ids):
            return
        if self.n == 0 and self.vectors.shape[1] != new.shape[1]:
            self.vectors = np.zeros((0, new.shape[1]), np.float32)
        if new.shape[1] != self.vectors.shape[1]:
            raise StoreError(f"stored vectors of {new.shape[1]} and {self.vectors.shape[1]} dimensions")
        need = self.n + len(ids)
        if need > len(self.vectors):
            capacity = max(need, len(self.vectors) * 3 // 2, 1024)
            grown = np.zeros((capacity, new.shape[1]), np.float32)
            grown[: self.n] = self.vectors[: self.n]
            grown_ids, grown_sq = np.zeros(capacity, np.int64), np.zeros(capacity, np.float64)
            grown_ids[: self.n], grown_sq[: self.n] = self.ids[: self.n], self.sq[: self.n]
            self.vectors, self.ids, self.sq = grown, grown_ids, grown_sq
        self.vectors[self.n : need] = new
        self.ids[self.n : need] = ids
        self.sq[self.n : need] = squared_norms(new)
        for offset, record_id in enumerate(ids):
            self.row[record_id] = self.n + offset
        self.n = need

    def drop(self, record_id: int) -> None:
        row = self.row.pop(record_id, None)
        if row is None:
            return
        last = self.n - 1
        if row != last:  # move the last row into the hole
            self.vectors[row], self.ids[row], self.sq[row] = self.vectors[last], self.ids[last], self.sq[last]
            self.row[int(self.ids[row])] = row
        self.n = last

    def drop_up_to(self, max_id: int) -> None:
        """Drop every id <= max_id (a snapshot now holds them), keeping the order of the rest."""
        keep = np.flatnonzero(self.ids[: self.n] > max_id)
        self.vectors[: len(keep)], self.ids[: len(keep)], self.sq[: len(keep)] = (
            self.vectors[keep], self.ids[keep], self.sq[keep])
        self.n = len(keep)
        self.row = {int(i): r for r, i in enumerate(self.ids[: self.n])}
        if self.n == 0:
            self.vectors, self.ids, self.sq = np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0)


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (ids, scores), best first, ties by the lower (older) id."""
    k = min(k, len(ids))
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
    top = top[np.lexsort((ids[top], -scores[top]))]
    return np.asarray(ids[top], np.int64).copy(), np.asarray(scores[top])


class VectorIndex:
    """One source's index in one process: the exact tail plus, when large, a snapshot; caught up from
    SQLite before every query."""

    def __init__(self, root: Path, source: Source, params: VectorParams, connect):
        self.root = root / source.folder
        self.source, self.params, self.connect = source, params, connect
        self.lock = threading.Lock()
        self.tail = ExactVectors()
        self.snapshot: Snapshot | None = None
        self.dead = np.zeros(0, bool)
        self.dead_count = 0
        self.max_id = 0  # every record id <= max_id has been seen
        self.removed_seq = 0  # every removal with seq <= removed_seq has been applied
        self._listed_mtime = None
        self._builder: threading.Thread | None = None
        self._last_try = 0.0
        self.cancel = threading.Event()
        self.builds = 0  # snapshots built by this process (for tests and the benchmark)

    # -- queries

    def search(self, conn, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query row, the k best (ids, scores), best first."""
        queries = np.asarray(queries, np.float32).reshape(len(queries), -1)
        with self.lock:
            self._catch_up(conn)
            size = self.tail.n + (self.snapshot.n - self.dead_count if self.snapshot else 0)
            if size == 0 or k <= 0:
                return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
            dim = self.snapshot.dim if self.snapshot else self.tail.vectors.shape[1]
            if queries.shape[1] != dim:
                raise ValueError(f"{self.source.folder}: the query has {queries.shape[1]} dimensions, the index {dim}")
            tail_ids = self.tail.ids[: self.tail.n]
            tail = self.tail
            tail_scores = self.source.scores(queries, tail.vectors[: tail.n], tail.sq[: tail.n]) if tail.n else None
            snapshot = self.snapshot if self.snapshot is not None and self.snapshot.n > self.dead_count else None
            found = self._snapshot_scores(conn, snapshot, queries, max(self.params.rerank, k)) if snapshot else None
            out = []
            for q in range(len(queries)):
                ids, scores = (tail_ids, tail_scores[q]) if tail_scores is not None else (tail_ids, np.zeros(0))
                if found is not None:
                    ids, scores = np.concatenate([ids, found[q][0]]), np.concatenate([scores, found[q][1]])
                out.append(top_k(ids, scores, k))
            return out

    def _snapshot_scores(self, conn, snapshot: Snapshot, queries, count):
        """Per query: (ids, exact scores) of its `count` best candidates in the snapshot."""
        forms = self.source.index_form(queries)
        dead = self.dead if self.dead_count else None
        rows = [snapshot.candidates(form, count, self.params.nprobe, dead) for form in forms]
        if snapshot.raw is not None:  # signatures: their values are in the snapshot
            return [(np.asarray(snapshot.ids[r], np.int64), self.source.scores(q[None, :], snapshot.raw[r])[0])
                    for q, r in zip(queries, rows)]
        wanted = np.unique(np.concatenate([np.asarray(snapshot.ids[r], np.int64) for r in rows]))
        ids, vectors = self._full_vectors(conn, wanted)  # a row removed since the catch-up is simply missing
        at = {int(i): j for j, i in enumerate(ids)}
        out = []
        for q, r in zip(queries, rows):
            picked = [at[i] for i in snapshot.ids[r].tolist() if i in at]
            out.append((ids[picked], self.source.scores(q[None, :], vectors[picked])[0]))
        return out

    def _full_vectors(self, conn, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        source, rows = self.source, []
        for start in range(0, len(ids), 900):  # under SQLite's 999 bound variables of old builds
            part = [int(i) for i in ids[start : start + 900]]
            rows += conn.execute(*source.select(
                f"{source.id}, {source.vector}", f"{source.id} IN ({','.join('?' * len(part))})", part)).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, self.snapshot.dim), np.float32)
        return np.fromiter((i for i, _ in rows), np.int64, len(rows)), source.decode([blob for _, blob in rows])

    # -- catching up with SQLite

    def _catch_up(self, conn) -> None:
        self._pick_up(conn)
        for _ in range(2):  # a snapshot another process built meanwhile may be enough; if not, build one
            if self._apply_changes(conn, force=False):
                break
            # too much outside the snapshot to hold in memory: build one now (or wait for the process building)
            try:
                self._build(wait=True)
            except Exception:  # noqa: BLE001 - exact search on everything is slow but still right
                log.exception("%s: building the vector snapshot failed; searching exactly instead", self.source.folder)
                break
            self._pick_up(conn, force=True)
        self._apply_changes(conn, force=True)  # (nothing left to read when the loop caught up)
        if self.tail.n + self.dead_count > self.params.tail_max:
            self._build_in_background()

    def _apply_changes(self, conn, force: bool) -> bool:
        """Read what SQLite changed since the last call, in one read transaction; False (and nothing
        applied) when more new vectors wait than the tail should hold, unless forced."""
        source = self.source
        conn.execute("BEGIN")
        try:
            max_id, removed_seq = sqlite_state(conn)
            if (max_id, removed_seq) == (self.max_id, self.removed_seq):
                return True
            if not force and max_id > self.max_id:
                new = conn.execute(*source.select(
                    "count(*)", f"{source.id} > ? AND {source.id} <= ?", (self.max_id, max_id))).fetchone()[0]
                if self.tail.n + new > self.params.tail_max * self.params.wait_factor:
                    return False
            self._remove([i for (i,) in conn.execute(
                "SELECT record_id FROM removed WHERE seq > ? AND record_id <= ?", (self.removed_seq, self.max_id))])
            newer = f"{source.id} > ? AND {source.id} <= ?"
            rows = conn.execute(*source.select(f"{source.id}, {source.vector}", newer, (self.max_id, max_id)))
            rows = rows.fetchall()
            if rows:
                self.tail.append([i for i, _ in rows], source.decode([blob for _, blob in rows]))
            self.max_id, self.removed_seq = max_id, removed_seq
            return True
        finally:
            conn.execute("COMMIT")

    def _remove(self, record_ids) -> None:
        in_snapshot = []
        for record_id in record_ids:
            if self.snapshot is not None and record_id <= self.snapshot.max_id:
                in_snapshot.append(record_id)
            else:
                self.tail.drop(record_id)
        if in_snapshot:
            rows = np.unique(self.snapshot.rows_of(in_snapshot))
            rows = rows[~self.dead[rows]]
            self.dead[rows] = True
            self.dead_count += len(rows)

    def _pick_up(self, conn, force: bool = False) -> None:
        """Switch to the newest snapshot on disk if it is newer than ours (built here or elsewhere)."""
        try:
            mtime = os.stat(self.root).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._listed_mtime and not force:
            return
        self._listed_mtime = mtime
        for folder in reversed(snapshot_folders(self.root)):
            if self.snapshot is not None and folder.name <= self.snapshot.folder.name:
                return
            try:
                snapshot = Snapshot(folder)
            except FileNotFoundError:  # replaced and removed by a newer build meanwhile: try the next
                continue
            except (OSError, ValueError, KeyError) as exc:
                log.warning("%s: ignoring the unreadable vector snapshot %s: %s", self.source.folder, folder, exc)
                continue
            self._switch(conn, snapshot)
            return

    def _switch(self, conn, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.dead = np.zeros(snapshot.n, bool)
        self.dead_count = 0
        self.tail.drop_up_to(snapshot.max_id)
        if self.removed_seq > snapshot.removed_seq:  # removals this process applied that the snapshot predates
            self._remove([i for (i,) in conn.execute(
                "SELECT record_id FROM removed WHERE seq > ? AND seq <= ? AND record_id <= ?",
                (snapshot.removed_seq, self.removed_seq, snapshot.max_id))])
        # (removals after both marks are applied by the next catch-up, which starts from removed_seq)
        self.max_id = max(self.max_id, snapshot.max_id)

    # -- building

    def _build(self, wait: bool) -> bool:
        """Build a snapshot of SQLite as it is now; False when there was nothing to build, another process
        holds the lock (wait=False), or one newer than ours is already on disk."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            for stale in self.root.glob("tmp-*"):  # left by a build that crashed: we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            previous = None
            for folder in reversed(snapshot_folders(self.root)):
                try:
                    previous = Snapshot(folder)
                    break
                except (OSError, ValueError, KeyError) as exc:  # rebuilt from SQLite, which is the truth
                    log.warning("%s: replacing the unreadable snapshot %s: %s", self.source.folder, folder, exc)
                    shutil.rmtree(folder, ignore_errors=True)
            if previous is not None and (self.snapshot is None or previous.folder.name > self.snapshot.folder.name):
                return False  # another process built a newer one than ours meanwhile: that is picked up first
            conn = self.connect()
            try:
                built = Builder(conn, self.source, self.params, self.cancel).build(self.root, previous)
            finally:
                conn.close()
            if built is None or (previous is not None and built == previous.folder):
                return False
            self.builds += 1
            for old in snapshot_folders(self.root):  # processes still reading them keep their open files
                if old.name < built.name:
                    shutil.rmtree(old, ignore_errors=True)
            return True

    def _build_in_background(self) -> None:
        if self._builder is not None and self._builder.is_alive():
            return
        if time.monotonic() - self._last_try < 1.0:  # another process is building: do not spin on its lock
            return
        self._last_try = time.monotonic()

        def run():
            try:
                self._build(wait=False)
            except Cancelled:
                pass
            except Exception:  # noqa: BLE001 - the tail keeps answering exactly; the next query tries again
                log.exception("%s: building the vector snapshot in the background failed", self.source.folder)

        self._builder = threading.Thread(target=run, name=f"vectors-{self.source.folder}", daemon=True)
        self._builder.start()

    def wait_for_build(self, timeout: float | None = None) -> None:
        if self._builder is not None:
            self._builder.join(timeout)

    def close(self) -> None:
        self.cancel.set()
        self.wait_for_build(timeout=60)
