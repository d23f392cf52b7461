"""The Store backends that tests/test_store_contract.py runs its contract against.

Each entry maps a name to `factory(directory) -> Store`. Calling a factory twice with the same directory
must reach the same data (a reopen); each test gets its own fresh directory.

Elasticsearch runs here against osmem-server (an in-memory server speaking the Elasticsearch REST API,
started once per test process on a loopback port). The elasticsearch-py 8/9 client sends a
`compatible-with` media type that osmem refuses; `PlainJsonNode` turns it back into application/json,
in test setup only. tests/test_store_elastic.py also runs against a real cluster when ELASTICSEARCH_URL
is set.
"""

import atexit
import hashlib
import uuid
from functools import cache
from pathlib import Path

from elastic_transport import Urllib3HttpNode
from elasticsearch import Elasticsearch

from store.base import Store
from store.elastic import ElasticStore
from store.sqlite import SQLiteStore


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

    server = OsmemServer.start(addr="127.0.0.1:0")
    atexit.register(server.close)
    return server


def osmem_url() -> str:
    return _osmem().url


def osmem_client() -> Elasticsearch:
    return Elasticsearch(osmem_url(), node_class=PlainJsonNode, request_timeout=10)


def random_index(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_elastic_osmem(directory: Path | None, **kwargs) -> Store:
    """A store on osmem; the same directory gives the same index (a reopen), None a fresh one."""
    index = random_index() if directory is None else "test-" + hashlib.sha1(str(directory).encode()).hexdigest()[:16]
    return ElasticStore(osmem_url(), index=index, client=osmem_client(), **kwargs)


# Elasticsearch joins the shared contract once it passes test_concurrent_adds_and_reads there: on
# osmem, 4 of 40 concurrent adds were visible afterwards (under investigation; see the issue note).
# tests/test_store_elastic.py covers the rest of the contract on osmem meanwhile.
BACKENDS = {"sqlite": make_sqlite}
ALL_BACKENDS = {**BACKENDS, "elasticsearch": make_elastic_osmem}
