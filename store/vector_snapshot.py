"""A vector snapshot on disk: an IVF index over PCA-reduced vectors, immutable, memory-mapped, and named
after the SQLite state it was read from (see store/vectors.py for how processes keep it consistent).

Files (numpy .npy): `mean`, `basis` (PCA, d x p), `centroids` (nlist x p, k-means in the PCA space),
`offsets` (list j is rows offsets[j]:offsets[j+1]), `reduced` (n x p), `ids` (n), `sorted_ids` and
`rows_by_id` (id -> row, for marking removals), `raw` (the stored values, signatures only: their exact
distance is computed from these instead of reading SQLite), and `meta.json`, written last.
"""

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from atomic_files import fsync

FORMAT = 2


class Cancelled(Exception):
    """The store was closed while a snapshot was being built."""


class Snapshot:
    """One published snapshot, memory-mapped: its pages sit in the page cache, shared by every process."""

    def __init__(self, folder: Path):
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder}: snapshot format {meta.get('format')}, expected {FORMAT}")
        self.folder = folder
        self.max_id, self.removed_seq = int(meta["max_id"]), int(meta["removed_seq"])
        self.trained_count = int(meta["trained_count"])
        self.mean = np.load(folder / "mean.npy")
        self.basis = np.load(folder / "basis.npy")
        self.centroids = np.load(folder / "centroids.npy")
        self.offsets = np.load(folder / "offsets.npy")
        # plain ndarray views of the mappings: np.memmap's slices cost microseconds each in Python
        self.reduced = np.asarray(np.load(folder / "reduced.npy", mmap_mode="r"))
        self.ids = np.asarray(np.load(folder / "ids.npy", mmap_mode="r"))
        self.sorted_ids = np.asarray(np.load(folder / "sorted_ids.npy", mmap_mode="r"))
        self.rows_by_id = np.asarray(np.load(folder / "rows_by_id.npy", mmap_mode="r"))
        self.raw = np.asarray(np.load(folder / "raw.npy", mmap_mode="r")) if (folder / "raw.npy").exists() else None
        self.n, self.dim = len(self.ids), len(self.mean)
        shapes_agree = (
            self.basis.shape == (self.dim, self.reduced.shape[1]) and self.centroids.shape[1] == self.basis.shape[1]
            and len(self.offsets) == len(self.centroids) + 1 and self.offsets[-1] == self.n == meta["count"]
            and len(self.reduced) == len(self.sorted_ids) == len(self.rows_by_id) == self.n
            and (self.raw is None or self.raw.shape == (self.n, self.dim))
        )
        if not shapes_agree:
            raise ValueError(f"{folder}: the snapshot's files do not agree with each other")
        self.centroid_norms = np.einsum("ij,ij->i", self.centroids, self.centroids)
        self.shift = self.mean @ self.basis  # basis.T @ (q - mean) == basis.T @ q - shift

    @property
    def key(self) -> tuple[int, int]:
        return self.max_id, self.removed_seq

    def rows_of(self, record_ids) -> np.ndarray:
        """Rows of those ids that the snapshot holds."""
        record_ids = np.asarray(record_ids, np.int64)
        if not len(record_ids) or not self.n:
            return np.zeros(0, np.int64)
        pos = np.minimum(np.searchsorted(self.sorted_ids, record_ids), self.n - 1)
        held = np.asarray(self.sorted_ids[pos]) == record_ids
        return np.asarray(self.rows_by_id[pos[held]], np.int64)

    def candidates(self, query: np.ndarray, count: int, nprobe: int, dead: np.ndarray | None) -> np.ndarray:
        """Rows of up to `count` live vectors, the best by reduced-space inner product with `query` (in
        index form) among the `nprobe` lists whose centroids are nearest it (all lists, nearest first, when
        those hold fewer than `count`: a small index)."""
        projected = query @ self.basis
        distance = self.centroid_norms - 2 * (self.centroids @ (projected - self.shift))
        take = min(nprobe, len(distance))
        lists = np.argpartition(distance, take - 1)[:take] if take < len(distance) else np.arange(take)
        lists = lists[np.argsort(distance[lists])]
        if self.offsets[lists + 1].sum() - self.offsets[lists].sum() < count:
            lists = np.argsort(distance)
        starts, ends = self.offsets[lists], self.offsets[lists + 1]
        sizes = ends - starts
        if not sizes.sum():
            return np.zeros(0, np.int64)
        scores = np.concatenate([self.reduced[a:b] @ projected for a, b in zip(starts.tolist(), ends.tolist())])
        rows = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(len(scores))
        if dead is not None:
            live = ~dead[rows]
            scores, rows = scores[live], rows[live]
        if len(rows) > count:
            rows = rows[np.argpartition(-scores, count - 1)[:count]]
        return np.sort(rows)  # in file order: the reads that follow go forwards


def snapshot_name(max_id: int, removed_seq: int) -> str:
    return f"snapshot-{max_id:015d}-{removed_seq:015d}"


def snapshot_folders(root: Path) -> list[Path]:
    """Published snapshots, oldest first (the names sort as their SQLite states)."""
    try:
        return sorted(p for p in root.iterdir() if p.name.startswith("snapshot-"))
    except FileNotFoundError:
        return []


def sqlite_state(conn) -> tuple[int, int]:
    """(the highest record id ever given, the last removal's seq): ids are never reused (AUTOINCREMENT)."""
    max_id = conn.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'records'").fetchone()[0]
    removed_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM removed").fetchone()[0]
    return max_id, removed_seq


class Builder:
    """Reads a source's live vectors from SQLite in one read transaction and writes a snapshot of them:
    a merge of the previous snapshot's live rows with the newer vectors (its PCA basis and centroids kept),
    or, with no previous snapshot or twice its training count, a retraining (PCA of a sample, k-means)."""

    def __init__(self, conn, source, params, cancel: threading.Event):
        self.conn, self.source, self.params, self.cancel = conn, source, params, cancel
        self._trained_count = 0

    def build(self, root: Path, previous: Snapshot | None) -> Path | None:
        conn, source = self.conn, self.source
        conn.execute("BEGIN")
        try:
            max_id, removed_seq = sqlite_state(conn)
            if previous is not None and previous.key == (max_id, removed_seq):
                return previous.folder
            count = conn.execute(*source.select("count(*)", f"{source.id} <= ?", (max_id,))).fetchone()[0]
            if count == 0:
                return None
            tmp = root / f"tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                if previous is None or count >= 2 * previous.trained_count:
                    self._retrain(tmp, count, max_id)
                else:
                    self._merge(tmp, previous, max_id)
                meta = {"format": FORMAT, "source": source.folder, "max_id": max_id, "removed_seq": removed_seq,
                        "count": int(np.load(tmp / "offsets.npy")[-1]), "trained_count": self._trained_count,
                        "built": time.time()}
                (tmp / "meta.json").write_text(json.dumps(meta))
                return publish(tmp, root, snapshot_name(max_id, removed_seq))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            conn.execute("COMMIT")

    def _retrain(self, tmp: Path, count: int, max_id: int) -> None:
        p, source = self.params, self.source
        nlist = max(1, min(int(round(p.lists_per_sqrt * np.sqrt(count))), count // 4 or 1))
        ids = np.fromiter((i for (i,) in self.conn.execute(
            *source.select(source.id, f"{source.id} <= ?", (max_id,), f"ORDER BY {source.id}"))), np.int64)
        rng = np.random.default_rng(count)
        sample = np.sort(rng.choice(ids, size=min(len(ids), p.train_per_list * nlist), replace=False))
        x = source.index_form(self._vectors_by_id(sample))
        mean = x.mean(axis=0)
        centred = x - mean
        # PCA: the top eigenvectors of the sample's covariance, largest first
        _, vectors = np.linalg.eigh((centred.T @ centred).astype(np.float64))
        dims = min(p.reduced_dim, x.shape[1])
        basis = np.ascontiguousarray(vectors[:, ::-1][:, :dims]).astype(np.float32)
        centroids = self._kmeans(centred @ basis, nlist, rng)
        self._trained_count = len(ids)
        out = self._arrays(len(ids), dims, x.shape[1])
        filled = 0
        for chunk_ids, chunk in self._stream(0, max_id):
            self._put(out, filled, chunk_ids, chunk, (source.index_form(chunk) - mean) @ basis, centroids)
            filled += len(chunk)
        _check_filled(filled, len(ids))
        self._write(tmp, mean.astype(np.float32), basis, centroids, out)

    def _merge(self, tmp: Path, previous: Snapshot, max_id: int) -> None:
        """The previous snapshot's live rows (their reduced forms and lists kept) plus the newer vectors."""
        source = self.source
        self._trained_count = previous.trained_count
        gone = previous.rows_of([i for (i,) in self.conn.execute(
            "SELECT record_id FROM removed WHERE seq > ? AND record_id <= ?", (previous.removed_seq, previous.max_id))])
        alive = np.ones(previous.n, bool)
        alive[gone] = False
        new = self.conn.execute(*source.select(
            "count(*)", f"{source.id} > ? AND {source.id} <= ?", (previous.max_id, max_id))).fetchone()[0]
        kept = int(alive.sum())
        out = self._arrays(kept + new, previous.reduced.shape[1], previous.dim)
        out["reduced"][:kept] = previous.reduced[alive]
        out["lists"][:kept] = np.repeat(np.arange(len(previous.centroids)), np.diff(previous.offsets))[alive]
        out["ids"][:kept] = previous.ids[alive]
        if "raw" in out:
            out["raw"][:kept] = previous.raw[alive]
        filled = kept
        for chunk_ids, chunk in self._stream(previous.max_id, max_id):
            reduced = source.index_form(chunk) @ previous.basis - previous.shift
            self._put(out, filled, chunk_ids, chunk, reduced, previous.centroids)
            filled += len(chunk)
        _check_filled(filled, kept + new)
        self._write(tmp, previous.mean, previous.basis, previous.centroids, out)

    # -- helpers

    def _arrays(self, n: int, dims: int, dim: int) -> dict[str, np.ndarray]:
        out = {"reduced": np.empty((n, dims), np.float32), "lists": np.empty(n, np.int64), "ids": np.empty(n, np.int64)}
        if self.source.keep_raw:
            out["raw"] = np.empty((n, dim), self.source.dtype)
        return out

    def _put(self, out, at: int, ids, chunk, reduced, centroids) -> None:
        end = at + len(ids)
        out["reduced"][at:end] = reduced
        out["lists"][at:end] = assign(reduced, centroids)
        out["ids"][at:end] = ids
        if "raw" in out:
            out["raw"][at:end] = chunk

    def _check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def _vectors_by_id(self, ids: np.ndarray) -> np.ndarray:
        source, out = self.source, []
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            rows = self.conn.execute(*source.select(
                source.vector, f"{source.id} IN ({','.join('?' * len(part))})", part)).fetchall()
            out.append(source.decode([blob for (blob,) in rows]))
            self._check()
        return np.concatenate(out)

    def _stream(self, after: int, max_id: int, chunk: int = 20_000):
        """(ids, vectors) of the source's rows with after < id <= max_id, in id order, a chunk at a time."""
        source = self.source
        while True:
            rows = self.conn.execute(*source.select(
                f"{source.id}, {source.vector}", f"{source.id} > ? AND {source.id} <= ?", (after, max_id),
                f"ORDER BY {source.id} LIMIT {int(chunk)}")).fetchall()
            if not rows:
                return
            self._check()
            ids = np.fromiter((i for i, _ in rows), np.int64, len(rows))
            yield ids, source.decode([blob for _, blob in rows])
            after = int(ids[-1])

    def _kmeans(self, x: np.ndarray, nlist: int, rng) -> np.ndarray:
        centroids = x[rng.choice(len(x), size=nlist, replace=False)].copy()
        for _ in range(self.params.kmeans_iterations):
            self._check()
            labels = assign(x, centroids)
            sums = np.zeros_like(centroids)
            np.add.at(sums, labels, x)
            sizes = np.bincount(labels, minlength=nlist)
            empty = sizes == 0
            centroids[~empty] = sums[~empty] / sizes[~empty, None]
            centroids[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]  # reseed
        return centroids.astype(np.float32)

    def _write(self, tmp: Path, mean, basis, centroids, out) -> None:
        order = np.lexsort((out["ids"], out["lists"]))
        ids = out["ids"][order]
        by_id = np.argsort(ids, kind="stable")
        for name in ("reduced", "raw"):  # the large ones, gathered a chunk at a time: no second full copy
            if name in out:
                target = np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", out[name].dtype, out[name].shape)
                for start in range(0, len(order), 65_536):
                    target[start : start + 65_536] = out[name][order[start : start + 65_536]]
                target.flush()
                del target
        small = {
            "mean": mean, "basis": basis, "centroids": centroids,
            "offsets": np.searchsorted(out["lists"][order], np.arange(len(centroids) + 1)).astype(np.int64),
            "ids": ids, "sorted_ids": ids[by_id], "rows_by_id": by_id.astype(np.int64),
        }
        for name, array in small.items():
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, np.ascontiguousarray(array))
        for path in tmp.iterdir():
            fsync(path)


def _check_filled(filled: int, expected: int) -> None:
    if filled != expected:  # one read transaction: only a bug could make the two reads disagree
        raise RuntimeError(f"read {filled} vectors where the count said {expected}")


def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = 16_384) -> np.ndarray:
    """The nearest centroid (L2) of each row."""
    norms = np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(x), np.int64)
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = np.argmax(x[start : start + chunk] @ centroids.T - norms / 2, axis=1)
    return out


def publish(tmp: Path, root: Path, name: str) -> Path:
    """Rename the complete, synced folder into place (atomic); the same state built twice is kept once."""
    final = root / name
    fsync(tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
    fsync(root)
    return final

