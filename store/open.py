"""The image index and its originals, opened from the settings (STORE_BACKEND, DATA_DIR, ELASTICSEARCH_*).

Opening never touches the network: the Elasticsearch store connects on first use, so a server whose
cluster is down still starts, answers 503 naming it, and recovers when it comes back.
"""

import os
import tempfile
import threading
from pathlib import Path

from settings import Settings, SettingsError
from store.base import Store
from store.blobs import BlobStore
from store.library import ImageLibrary
from store.timed import TimedStore


def check_store_settings(settings: Settings) -> None:
    """Start-up checks that need more than one variable, or the disk: SettingsError naming the variable."""
    if settings.store_backend == "elasticsearch" and not settings.elasticsearch_url:
        raise SettingsError("STORE_BACKEND='elasticsearch': set ELASTICSEARCH_URL to the cluster's http(s) URL")
    try:  # the originals (and, for sqlite, the index) live here: find out now, not on the first add
        os.makedirs(settings.data_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=settings.data_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise SettingsError(f"DATA_DIR={settings.data_dir!r}: not a writable directory ({exc.strerror})") from None


def open_store(settings: Settings) -> Store:
    if settings.store_backend == "elasticsearch":
        from store.elastic import ElasticStore

        return ElasticStore(
            settings.elasticsearch_url, index=settings.elasticsearch_index,
            timeout=settings.elasticsearch_timeout, refresh=settings.elasticsearch_refresh,
        )
    from store.sqlite import SQLiteStore

    return SQLiteStore(settings.data_dir)


def open_library(settings: Settings) -> ImageLibrary:
    data = Path(settings.data_dir)
    return ImageLibrary(TimedStore(open_store(settings), settings.store_backend), BlobStore(data / "blobs"),
                        data / "locks")


class PerProcess:
    """One ImageLibrary per process, opened on first use.

    The HTTP processes are forked from the main one after start-up: a SQLite connection or an HTTP
    connection pool must not cross a fork, so each process opens its own, lazily. A failed open (a
    StoreError) is not remembered: the next request tries again.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._pid = None
        self._library = None

    def get(self) -> ImageLibrary:
        with self._lock:
            if self._pid != os.getpid():
                self._library = open_library(self.settings)
                self._pid = os.getpid()
            return self._library
