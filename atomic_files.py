"""Replacing a file atomically: write a temporary file in the target's directory, then rename it over the
target, so a reader sees the old file or the new one, never half of either.

Durable (the file synced before the rename, the directory after it, so the rename survives a power loss)
only where a caller asks: a blob the API has acknowledged must survive one; a cache, a status file or a
classifier that is simply written again need not pay for it.
"""

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's data, or a directory's entries (so a rename in it survives a power loss), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_beside(path: Path, mode: int) -> tuple[int, Path]:
    """A new, empty file `.<name>.<random>.tmp` in `path`'s directory, created with `mode` (less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temp, flags, mode), temp
        except FileExistsError:
            continue


def write_atomically(path: str | os.PathLike, content: bytes | Callable[[BinaryIO], None], *,
                     durable: bool = False, mode: int = 0o666) -> None:
    """Replace `path` with `content`: bytes, or a callback that writes to the binary file it is given.

    durable: fsync the file before the rename and its directory after it. mode: the new file's permissions
    before the umask (0o666, as open() makes a file; 0o600, as tempfile.mkstemp does). On any failure the
    temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    fd, temp = _temporary_beside(path, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(content, bytes):
                out.write(content)
            else:
                content(out)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        fsync(path.parent)  # make the rename itself survive a power loss
