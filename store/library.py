"""The index and the original images together, kept consistent across threads and processes.

Two rules: an acknowledged record always has its original (the blob is written, durably, before the
record), and an original is deleted only when no record refers to its SHA-256 any more: neither an index
record nor a gallery record (its original or processed image; `Store.sha256_referenced`). Records share
originals (same bytes under two paths), so "add the blob, then the record" in one process and "no record
left, delete the blob" in another would race: the add could find the file still there, skip writing it,
and then see it deleted. Both steps therefore run under a lock per SHA-256 (one of 256 lock files under
`lock_dir`, by the first two hex digits; flock, so it holds between processes and between threads).
Gallery records (Store.gallery_*) refer to blobs too: whoever adds one must write its blobs under the
same lock, as `add` does, or a concurrent release could delete a blob just written.
"""

import fcntl
import hashlib
import os
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from store.base import GalleryRecord, Record, Store, StoreError
from store.blobs import BlobStore


class ImageLibrary:
    def __init__(self, store: Store, blobs: BlobStore, lock_dir: str | os.PathLike):
        self.store = store
        self.blobs = blobs
        self.lock_dir = Path(lock_dir)
        self.lock_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self, sha256: str):
        with open(self.lock_dir / f"{sha256[:2]}.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, record: Record, data: bytes) -> None:
        """Store the original, then the record (replacing the record of the same path). Durable on return.

        The original of a replaced record is deleted when nothing else refers to it.
        """
        replaced = self.store.get(record.path)
        with self._locked(record.sha256):
            existed = self.blobs.path(record.sha256).exists()
            self._blob_io("store", self.blobs.put, data)
            try:
                self.store.add(record)
            except BaseException:
                if not existed:  # leave no orphan behind a refused add (best effort: the index may be down)
                    try:
                        self._drop_if_unreferenced(record.sha256)
                    except StoreError:
                        pass
                raise
        if replaced is not None and replaced.sha256 != record.sha256:
            self.release(replaced.sha256)

    def gallery_add(self, user: str, name: str, original: bytes, processed: bytes, limit: int,
                    model: str = "") -> GalleryRecord:
        """A gallery record with its two images: both blobs written (durably) first, the record last, all
        under the blobs' locks, so a crash leaves the whole record or no record, and a concurrent release
        cannot delete a blob the record is about to name. GalleryFull at the limit, ValueError on a bad
        name: nothing is kept then (a blob written here for it alone is released)."""
        shas = [hashlib.sha256(data).hexdigest() for data in (original, processed)]
        with ExitStack() as locks:
            for prefix in sorted({sha[:2] for sha in shas}):  # one flock per lock file, in order: no deadlock
                locks.enter_context(self._locked(prefix))
            existed = {sha: self.blobs.path(sha).exists() for sha in shas}
            new = [sha for sha in dict.fromkeys(shas) if not existed[sha]]
            # a process killed between the blobs and the record leaves this note; release_interrupted frees them
            locks.enter_context(self._intent(new))
            try:
                for data in (original, processed):
                    self._blob_io("store", self.blobs.put, data)
                return self.store.gallery_add(user, name, shas[0], shas[1], limit, model)
            except BaseException:
                for sha in new:  # leave no orphan behind a refused add (best effort)
                    try:
                        self._drop_if_unreferenced(sha)
                    except StoreError:
                        pass
                raise

    @property
    def _intents(self) -> Path:
        return self.lock_dir / "gallery-intents"

    @contextmanager
    def _intent(self, shas: list[str]):
        """A note naming the blobs a gallery add is about to write, flock'ed for as long as the add runs and
        removed after it: one left unlocked names blobs of an add whose process died."""
        if not shas:
            yield
            return
        self._intents.mkdir(parents=True, exist_ok=True)
        path = self._intents / f"{os.getpid()}-{uuid.uuid4().hex}"
        with open(path, "w+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write("\n".join(shas))
            handle.flush()
            try:
                yield
            finally:
                path.unlink(missing_ok=True)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def release_interrupted(self) -> int:
        """Release the blobs of gallery adds whose process died mid-add (their note is not locked by anyone):
        each is deleted unless a record refers to it. Returns the notes handled."""
        if not self._intents.is_dir():
            return 0
        handled = 0
        for path in sorted(self._intents.iterdir()):
            try:
                handle = open(path)
            except FileNotFoundError:  # its add finished meanwhile
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # an add in progress
                    continue
                shas = [line.strip() for line in handle.read().split() if line.strip()]
                for sha in shas:
                    try:
                        self.release(sha)
                    except (StoreError, ValueError):
                        pass
                path.unlink(missing_ok=True)
                handled += 1
        return handled

    def gallery_delete(self, user: str, record_id: str) -> GalleryRecord | None:
        """Delete the user's record, then each of its blobs that nothing else refers to."""
        record = self.store.gallery_delete(user, record_id)
        if record is not None:
            for sha in dict.fromkeys((record.original_sha256, record.processed_sha256)):
                self.release(sha)
        return record

    def delete(self, path: str) -> bool:
        """Delete the record of `path`, and its original unless another record has the same bytes."""
        record = self.store.get(path)
        deleted = self.store.delete(path)
        if record is not None:
            self.release(record.sha256)
        return deleted

    def release(self, sha256: str) -> None:
        """Delete the blob unless something still refers to it: after a record (or a gallery record) that
        used it is gone."""
        with self._locked(sha256):
            self._drop_if_unreferenced(sha256)

    def _drop_if_unreferenced(self, sha256: str) -> None:
        """Under the sha256's lock: delete the original when no record refers to it."""
        if not self.store.sha256_referenced(sha256):
            self._blob_io("delete", self.blobs.delete, sha256)

    def _blob_io(self, action: str, fn, arg):
        try:
            return fn(arg)
        except OSError as exc:  # disk full, permissions: the server's trouble, answered 503 like the index's
            raise StoreError(f"original images in {self.blobs.root}: could not {action} one: {exc}") from exc

    def close(self) -> None:
        self.store.close()
