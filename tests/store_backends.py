"""The Store backends that tests/test_store_contract.py runs its contract against.

Each entry maps a name to `factory(directory) -> Store`. Calling a factory twice with the same directory
must reach the same data (a reopen); each test gets its own fresh directory. `dispose(store)` closes a
store and drops what it left on a server (the Elasticsearch index and its `-gallery` index).

    sqlite                 the embedded default, in the test's directory
    elasticsearch          ElasticStore on osmem-server (in-memory, speaks the Elasticsearch REST API
                           but has no kNN: the contract's kNN tests skip there)
    elasticsearch-cluster  ElasticStore on the real cluster at ELASTICSEARCH_URL, when set (kNN included)

osmem-server is started once per test process on a loopback port. The elasticsearch-py 8/9 client sends a
`compatible-with` media type that osmem refuses; `PlainJsonNode` turns it back into application/json, in
test setup only (the store builds its own client with it, so its retry and timeout policy is the real one).
"""

import atexit
import hashlib
import os
import uuid
from functools import cache
from pathlib import Path

from elastic_transport import Urllib3HttpNode
from elasticsearch import Elasticsearch

from store.base import Store
from store.elastic import ElasticStore
from store.sqlite import SQLiteStore

REAL_URL = os.environ.get("ELASTICSEARCH_URL", "").strip()


def make_sqlite(directory: Path) -> Store:
    return SQLiteStore(directory / "sqlite")


class PlainJsonNode(Urllib3HttpNode):
    """Rewrites the client's vendor media types to plain JSON, which osmem-server expects."""

    def perform_request(self, method, target, body=None, headers=None, **kwargs):
        fixed = dict(headers or {})
        for name in ("content-type", "accept", "Content-Type", "Accept"):
            if name in fixed and "compatible-with" in str(fixed[name]):
                fixed[name] = "application/json"
        return super().perform_request(method, target, body=body, headers=fixed, **kwargs)


@cache
def _osmem():
    from osmem_server import OsmemServer

    # japanese=False: its Japanese analyser (unused here) loads a dictionary on the first index creation, 1.3 s
    server = OsmemServer.start(addr="127.0.0.1:0", japanese=False)
    atexit.register(server.close)
    return server


def osmem_url() -> str:
    return _osmem().url


def osmem_client() -> Elasticsearch:
    return Elasticsearch(osmem_url(), node_class=PlainJsonNode, request_timeout=10)


def random_index(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _index_for(directory: Path | None, prefix: str) -> str:
    if directory is None:
        return random_index(prefix)
    return f"{prefix}-{hashlib.sha1(str(directory).encode()).hexdigest()[:16]}"


def make_elastic_osmem(directory: Path | None, **kwargs) -> ElasticStore:
    """A store on osmem; the same directory gives the same index (a reopen), None a fresh one."""
    return ElasticStore(osmem_url(), index=_index_for(directory, "test"), node_class=PlainJsonNode, **kwargs)


def make_elastic_cluster(directory: Path | None, **kwargs) -> ElasticStore:
    """A store on the real cluster. refresh="true" keeps the contract's every-add-visible promise without
    waiting up to a second per add; test_store_elastic.py checks the default wait_for there."""
    options = {"refresh": "true", "timeout": 30, **kwargs}
    return ElasticStore(REAL_URL, index=_index_for(directory, "test-imageserver"), **options)


def dispose(store: Store) -> None:
    """Close the store; for Elasticsearch, delete its index first (osmem keeps everything in memory)."""
    try:
        if isinstance(store, ElasticStore):
            for index in (store.index, store.gallery_index):
                store._es.options(ignore_status=404).indices.delete(index=index)
    finally:
        store.close()


BACKENDS = {"sqlite": make_sqlite, "elasticsearch": make_elastic_osmem}
if REAL_URL:
    BACKENDS["elasticsearch-cluster"] = make_elastic_cluster
