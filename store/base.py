"""The image index: one interface, two backends (embedded SQLite, Elasticsearch) with one contract.

A record is one indexed image: its path (the caller's name for it, unique), the SHA-256 of its bytes,
free metadata, its Goldberg signature (648 int8) with the 63 words derived from it, and zero or more
embeddings by model name. Original bytes live on disk under the data dir, addressed by SHA-256
(`BlobStore`), not in the index.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class StoreError(Exception):
    """The backend failed or cannot be reached; the API answers 503 naming it, never a silent loss."""


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
        """Insert, or replace the record with the same path (match's overwrite semantics)."""

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

    def close(self) -> None:
        """Release connections and files."""
