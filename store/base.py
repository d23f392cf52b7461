"""The image index: one interface, two backends (embedded SQLite, Elasticsearch) with one contract.

A record is one indexed image: its path (the caller's name for it, unique), the SHA-256 of its bytes,
free metadata, its Goldberg signature (648 int8) with the 63 words derived from it, and zero or more
embeddings by model name. Original bytes live on disk under the data dir, addressed by SHA-256
(`BlobStore`), not in the index.

The same store keeps the background-removal gallery: per-user records naming an original and its
processed image (both blobs by SHA-256), with a per-user limit. An original is deleted only when neither
an index record nor a gallery record refers to it (`sha256_referenced`).
"""

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from store.blobs import SHA256


class StoreError(Exception):
    """The backend failed or cannot be reached; the API answers 503 naming it, never a silent loss."""


class GalleryFull(Exception):
    """The user already has `limit` gallery records. Not a StoreError: the store works, the caller (a
    later HTTP route) answers it as a client condition, not a 503."""


GALLERY_USER_MAX = 200  # characters; a user id is a cookie value or an account name
GALLERY_NAME_MAX = 200  # characters; above the 50 gallery names were held to before, so every existing one fits
_RECORD_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex, made by the store


@dataclass
class GalleryRecord:
    id: str  # uuid4 hex, made by the store
    user: str
    name: str
    original_sha256: str
    processed_sha256: str
    created: float  # unix time, set by the store on add
    model: str = ""  # the segmenter that made the processed image (background removal's `model`)


GALLERY_MODEL_MAX = 100  # characters; a catalogue name


def check_gallery_text(what: str, value, longest: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a gallery {what} is a non-empty string, not {value!r}")
    if len(value) > longest:
        raise ValueError(f"a gallery {what} has at most {longest} characters, not {len(value)}")
    return value


def check_sha256(what: str, value) -> str:
    if not isinstance(value, str) or not SHA256.fullmatch(value):
        raise ValueError(f"{what} is 64 lowercase hex digits (a SHA-256), not {value!r}")
    return value


def check_gallery_add(user, name, original_sha256, processed_sha256, limit, model: str = "") -> None:
    """ValueError on a malformed gallery record or limit, before anything is stored."""
    if not isinstance(model, str) or len(model) > GALLERY_MODEL_MAX:
        raise ValueError(f"a gallery model is a string of at most {GALLERY_MODEL_MAX} characters, not {model!r}")
    check_gallery_text("user", user, GALLERY_USER_MAX)
    check_gallery_text("name", name, GALLERY_NAME_MAX)
    check_sha256("original_sha256", original_sha256)
    check_sha256("processed_sha256", processed_sha256)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"a gallery limit is an int >= 1, not {limit!r}")


def is_gallery_id(record_id) -> bool:
    """Ids come from URLs: one the store cannot have made is simply not found (no ValueError)."""
    return isinstance(record_id, str) and bool(_RECORD_ID.match(record_id))


def check_page(offset, limit) -> tuple[int, int]:
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must be >= 0")
    return int(offset), int(limit)


@dataclass
class Record:
    path: str
    sha256: str
    signature: np.ndarray  # int8, shape (648,)
    words: np.ndarray  # int64, shape (63,): image_match's simple words
    metadata: dict = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # model name -> float32 vector
    created: float = 0.0  # unix time, set by the store on add


@dataclass(frozen=True)
class Neighbour:
    path: str
    similarity: float  # cosine similarity of L2-normalised embeddings: higher is better, 1.0 identical
    metadata: dict
    sha256: str


class Store(ABC):
    """Every method is safe to call from several threads; `add` is durable when it returns."""

    @abstractmethod
    def add(self, record: Record) -> None:
        """Insert, or replace the record with the same path (/add of a known filepath overwrites it)."""

    @abstractmethod
    def get(self, path: str) -> Record | None: ...

    @abstractmethod
    def delete(self, path: str) -> bool:
        """True if a record was deleted."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def paths_with_sha256(self, sha256: str, limit: int = 10) -> list[str]:
        """Paths of up to `limit` records of these bytes; a shared original is deleted only when none is left."""

    @abstractmethod
    def list_paths(self, offset: int = 0, limit: int = 20) -> list[str]:
        """Paths in insertion order (oldest first)."""

    @abstractmethod
    def candidates(self, words: np.ndarray, limit: int = 100) -> list[Record]:
        """Records sharing at least one word (same position, same value) with `words`, most shared first.

        The caller computes exact signature distances on these and applies the cutoff.
        """

    @abstractmethod
    def nearest(self, model: str, vector: np.ndarray, k: int = 10) -> list[Neighbour]:
        """The k records whose `model` embedding is most similar (cosine) to `vector`, best first."""

    @abstractmethod
    def sha256_referenced(self, sha256: str) -> bool:
        """Whether an index record or a gallery record (original or processed) uses these bytes: a blob is
        deleted only when this is False."""

    # ------------------------------------------------------------------ the background-removal gallery

    @abstractmethod
    def gallery_add(self, user: str, name: str, original_sha256: str, processed_sha256: str,
                    limit: int, model: str = "") -> GalleryRecord:
        """Store a new record for `user`; GalleryFull when the user already has `limit` records. Never lets
        a user exceed `limit`, also under concurrent adds. Durable on return, like `add`. `model` names
        the segmenter that made the processed image."""

    @abstractmethod
    def gallery_get(self, user: str, record_id: str) -> GalleryRecord | None:
        """The record, or None when it does not exist or belongs to another user."""

    @abstractmethod
    def gallery_list(self, user: str, offset: int = 0, limit: int = 50) -> list[GalleryRecord]:
        """The user's records, newest first."""

    @abstractmethod
    def gallery_count(self, user: str) -> int: ...

    @abstractmethod
    def gallery_rename(self, user: str, record_id: str, name: str) -> bool:
        """True if the user's record was renamed; False when it does not exist or is another user's."""

    @abstractmethod
    def gallery_delete(self, user: str, record_id: str) -> GalleryRecord | None:
        """The deleted record (its blobs may now be unreferenced), or None when it was not the user's."""

    def close(self) -> None:
        """Release connections and files."""
