"""Original image bytes on disk, addressed by their SHA-256: root/ab/cd/<sha256>.

Content addressing makes a put idempotent (same bytes, same file) and lets several index records share
one file. Two directory levels keep any one directory small at millions of files.
"""

import hashlib
import os
import re
from pathlib import Path

from atomic_files import write_atomically

# a SHA-256 as the store and the API name one: 64 lowercase hex digits
SHA256 = re.compile(r"[0-9a-f]{64}")  # use fullmatch: "$" would also let a trailing newline through


class BlobStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not SHA256.fullmatch(sha):  # the name becomes a file path: never let "../" or a slash through
            raise ValueError(f"not a lowercase hex SHA-256: {sha!r}")
        return self.root / sha[:2] / sha[2:4] / sha

    def put(self, data: bytes) -> str:
        """Store `data` (no-op if already present) and return its SHA-256; durable when it returns."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.exists():
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        # a reader sees the whole file or none of it; synced, rename included: durable when put returns.
        # Owner-only permissions, as the tempfile.mkstemp this used made them.
        write_atomically(target, data, durable=True, mode=0o600)
        return sha

    def get(self, sha: str) -> bytes | None:
        try:
            return self.path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, sha: str) -> bool:
        """True if a file was removed. Callers delete only when no record references `sha` any more."""
        try:
            self.path(sha).unlink()
            return True
        except FileNotFoundError:
            return False

