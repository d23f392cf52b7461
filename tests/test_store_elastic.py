"""What only the Elasticsearch backend does: its mapping, bulk loads, settings, and how it fails. The Store
contract itself (add/get/overwrite/delete/list/candidates/nearest, concurrency) runs against it in
tests/test_store_contract.py.

Against osmem-server (in-memory, started once per session) always, and against a real Elasticsearch
cluster when ELASTICSEARCH_URL is set (`-k real_cluster` here, and the whole contract, kNN included):

    docker run -d --rm --name es-test -p 9200:9200 -e discovery.type=single-node \
        -e xpack.security.enabled=false -e ES_JAVA_OPTS="-Xms1g -Xmx1g" \
        docker.elastic.co/elasticsearch/elasticsearch:9.1.0
    ELASTICSEARCH_URL=http://127.0.0.1:9200 .venv/bin/python -m pytest tests/test_store_elastic.py tests/test_store_contract.py
"""

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig, ObjectApiResponse
from elasticsearch import Elasticsearch

import store.elastic as elastic
from store.base import Record, StoreError
from store.elastic import BulkAddError, ElasticStore, doc_id, embedding_field
from tests.store_backends import (
    REAL_URL, PlainJsonNode, dispose, make_elastic_cluster, make_elastic_osmem, osmem_client, osmem_url, random_index,
)

real_only = pytest.mark.skipif(not REAL_URL, reason="set ELASTICSEARCH_URL to run against a real Elasticsearch")
BACKEND_PARAMS = ["osmem", pytest.param("real_cluster", marks=real_only)]
MODEL = "mobilenet_v2"


def _raw_client(backend: str) -> Elasticsearch:
    return osmem_client() if backend == "osmem" else Elasticsearch(REAL_URL, request_timeout=30)


def _make_store(backend: str, index: str | None = None, **kwargs) -> ElasticStore:
    if index is not None:
        url, extra = (osmem_url(), {"node_class": PlainJsonNode}) if backend == "osmem" else (REAL_URL, {})
        return ElasticStore(url, index=index, **extra, **kwargs)
    return make_elastic_osmem(None, **kwargs) if backend == "osmem" else make_elastic_cluster(None, **kwargs)


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store(backend):
    made = _make_store(backend)
    yield made
    dispose(made)


def _record(path: str, seed: int = 0, *, embeddings=True, dims: int = 16, **metadata) -> Record:
    rng = np.random.default_rng(seed)
    vector = rng.normal(size=dims).astype(np.float32)
    return Record(
        path=path, sha256=f"{seed:064x}", signature=rng.integers(-2, 3, 648).astype(np.int8),
        words=rng.integers(0, 3**16, 63).astype(np.int64), metadata=metadata,
        embeddings={MODEL: vector / np.linalg.norm(vector)} if embeddings else {},
    )


def _assert_same(got: Record, want: Record):
    assert got is not None and got.path == want.path and got.sha256 == want.sha256
    assert np.array_equal(got.signature, want.signature) and np.array_equal(got.words, want.words)
    assert got.metadata == want.metadata and set(got.embeddings) == set(want.embeddings)
    for model, vector in want.embeddings.items():
        np.testing.assert_allclose(got.embeddings[model], vector / np.linalg.norm(vector), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- settings and mapping


def test_settings_strings_are_accepted_and_bad_ones_refused():
    """store/open.py passes ELASTICSEARCH_REFRESH / ELASTICSEARCH_TIMEOUT as the strings it read."""
    url = "http://127.0.0.1:9"
    assert ElasticStore(url, refresh="WAIT_FOR", timeout="2.5").refresh == "wait_for"
    assert ElasticStore(url, index="photos", refresh="False", timeout=3).refresh is False
    assert ElasticStore(url, refresh=" true ").refresh is True and ElasticStore(url, refresh=True).timeout == 10.0
    assert ElasticStore(url, timeout="2.5").timeout == 2.5
    for bad in ({"refresh": "sometimes"}, {"timeout": "soon"}, {"timeout": 0}, {"timeout": "-1"}, {"index": "Images"}):
        with pytest.raises(ValueError):
            ElasticStore(url, **bad)


def test_mapping_is_explicit(store, backend):
    store.add(_record("a", 1))
    mappings = _raw_client(backend).indices.get_mapping(index=store.index).body[store.index]["mappings"]
    properties = mappings["properties"]
    assert mappings["dynamic"] == "strict"
    for name in ("path", "sha256", "words", "models"):
        assert properties[name]["type"] == "keyword", name
    assert properties["created"]["type"] == "date"
    assert properties["metadata"].get("enabled") is False and "properties" not in properties["metadata"]
    assert properties["signature"]["type"] == "binary"  # not indexed, no doc values: only in _source
    assert not [name for name in properties if name.startswith("simple_word_")]
    vector = properties[embedding_field(MODEL)]
    if backend == "osmem":  # OpenSearch-flavoured: no dense_vector there, knn_vector (dimension enforced)
        assert vector["type"] == "knn_vector" and vector["dimension"] == 16
    else:
        assert vector["type"] == "dense_vector" and vector["dims"] == 16
        assert vector.get("index", True) is True and vector["similarity"] == "cosine"


def test_stray_fields_are_refused(store, backend):
    store.ensure_index()
    with pytest.raises(Exception, match="strict"):
        _raw_client(backend).index(index=store.index, id="x", document={"path": "x", "surprise": 1})


def test_existing_incompatible_mapping_is_a_store_error(backend):
    """An index made by dynamic mapping (path as analysed text) is refused, naming the field."""
    client, index = _raw_client(backend), random_index("test-dynamic")
    client.indices.create(index=index, mappings={"properties": {"path": {"type": "text"}, "metadata": {"type": "object"}}})
    made = _make_store(backend, index=index)
    try:
        with pytest.raises(StoreError, match=r"incompatible mapping: path is text, expected keyword") as caught:
            made.count()
        assert index in str(caught.value) and "ELASTICSEARCH_INDEX" in str(caught.value)
        with pytest.raises(StoreError, match="incompatible"):  # and stays refused
            made.add(_record("a"))
    finally:
        dispose(made)


def test_existing_partial_mapping_is_completed(backend):
    client, index = _raw_client(backend), random_index("test-partial")
    client.indices.create(index=index, mappings={"dynamic": "strict", "properties": {"path": {"type": "keyword"}}})
    made = _make_store(backend, index=index)
    try:
        record = _record("p")
        made.add(record)
        _assert_same(made.get("p"), record)
        assert client.indices.get_mapping(index=index).body[index]["mappings"]["properties"]["words"]["type"] == "keyword"
    finally:
        dispose(made)


def test_embedding_length_mismatch_is_a_store_error(store):
    store.add(_record("a", 1, dims=16))
    with pytest.raises(StoreError, match=r"embedding 'mobilenet_v2' has 8 dimensions .* with 16"):
        store.add(_record("b", 2, dims=8))
    assert store.get("b") is None and store.count() == 1


def test_ids_and_field_names(store):
    """Paths become SHA-1 ids (any length); model names become field names without dots."""
    assert doc_id("a/b.jpg") != doc_id("a b.jpg") and len(doc_id("x" * 1000)) == 40
    assert embedding_field("mobilenet_v2") == "embedding_mobilenet_v2"
    odd = embedding_field("facebook/dinov2.base")
    assert odd.startswith("embedding_facebook_dinov2_base_") and "." not in odd
    assert embedding_field("a.b") != embedding_field("a_b")
    record = _record("odd")
    record.embeddings["facebook/dinov2.base"] = np.ones(4, dtype=np.float32) / 2
    store.add(record)
    _assert_same(store.get("odd"), record)


def test_other_directory_is_another_index(tmp_path):
    first, other = make_elastic_osmem(tmp_path / "a"), make_elastic_osmem(tmp_path / "b")
    try:
        assert first.index != other.index
        first.add(_record("only-in-a"))
        assert first.count() == 1 and other.count() == 0
    finally:
        dispose(first)
        dispose(other)


# ---------------------------------------------------------------- listing, bulk, refresh, created


def test_list_paths_beyond_result_window_uses_search_after(store, monkeypatch):
    names = [f"img{i:03d}" for i in range(23)]
    store.add_many([_record(name, i) for i, name in enumerate(names)])
    monkeypatch.setattr(elastic, "MAX_RESULT_WINDOW", 4)  # as if 10,000: every page below is "deep"
    assert store.list_paths(0, 10) == names[:10]
    assert store.list_paths(5, 9) == names[5:14]
    assert store.list_paths(20, 10) == names[20:]
    assert store.list_paths(30, 10) == []
    with pytest.raises(ValueError):
        store.list_paths(-1, 5)


def test_add_many_bulk_in_chunks(store):
    records = [_record(f"bulk/{i:04d}.jpg", i) for i in range(300)]
    assert store.add_many(records, chunk_size=64) == 300  # five bulk requests
    assert store.count() == 300  # visible at once: the refresh policy applies per chunk
    _assert_same(store.get("bulk/0123.jpg"), records[123])
    assert store.list_paths(295, 10) == [r.path for r in records[295:]]
    assert all(r.created > 0 for r in records)
    # a second batch overwrites by path
    assert store.add_many([_record("bulk/0000.jpg", 999), _record("new.jpg", 1000)]) == 2
    assert store.count() == 301 and store.get("bulk/0000.jpg").sha256 == f"{999:064x}"
    assert store.add_many([]) == 0


def test_refresh_false_still_gets_by_id(backend):
    made = _make_store(backend, refresh=False)
    try:
        record = _record("fast", 5)
        made.add(record)
        _assert_same(made.get("fast"), record)  # get by id is realtime
    finally:
        dispose(made)


def test_concurrent_adds_get_distinct_increasing_created(store):
    """Insertion order on Elasticsearch is the `created` sort key: distinct and increasing per store."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.add(_record(f"t/{i:03d}", i)), range(80)))
    paths = store.list_paths(0, 100)
    assert sorted(paths) == [f"t/{i:03d}" for i in range(80)]
    created = [store.get(p).created for p in paths]
    assert created == sorted(created) and len(set(created)) == 80


def test_nearest_on_osmem_is_a_clear_store_error():
    made = make_elastic_osmem(None)
    try:
        made.add(_record("a", 1))
        assert made.knn_supported is False
        with pytest.raises(StoreError, match="kNN"):
            made.nearest(MODEL, np.ones(16, dtype=np.float32))
    finally:
        dispose(made)


@real_only
def test_real_cluster_wait_for_makes_each_add_searchable():
    made = _make_store("real_cluster", refresh="wait_for")
    try:
        for i in range(3):
            record = _record(f"w{i}", i)
            made.add(record)  # no explicit refresh anywhere: wait_for alone makes it searchable
            assert made.count() == i + 1 and made.candidates(record.words, limit=1)[0].path == f"w{i}"
        assert made.delete("w0") and made.count() == 2
    finally:
        dispose(made)


@real_only
def test_real_cluster_knn_specifics():
    made = _make_store("real_cluster")
    try:
        made.add_many([_record(f"k{i}", i) for i in range(5)])
        assert made.knn_supported is True
        assert [n.path for n in made.nearest(MODEL, made.get("k3").embeddings[MODEL], k=1)] == ["k3"]
        with pytest.raises(StoreError, match="dimensions"):
            made.nearest(MODEL, np.ones(8, dtype=np.float32))
    finally:
        dispose(made)


# ---------------------------------------------------------------- failures: never a silent loss


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_url_is_a_quick_store_error_naming_it():
    url = f"http://127.0.0.1:{_closed_port()}"
    made = ElasticStore(url, timeout=10)  # lazy: constructing does not connect
    calls = [
        lambda: made.count(), lambda: made.add(_record("a")), lambda: made.get("a"), lambda: made.delete("a"),
        lambda: made.list_paths(), lambda: made.candidates(np.zeros(63, dtype=np.int64)),
        lambda: made.nearest(MODEL, np.ones(16)), lambda: made.add_many([_record("b")]), made.ensure_index,
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(StoreError, match=rf"Elasticsearch at {url} is unreachable"):
            call()
        # a refused connection is not waited out: well within the 10 s timeout (the rest is machine speed)
        assert time.monotonic() - start < 5
    made.close()


def test_unreachable_message_hides_credentials():
    port = _closed_port()
    made = ElasticStore(f"http://elastic:s3cret@127.0.0.1:{port}", timeout=2)
    with pytest.raises(StoreError) as caught:
        made.count()
    assert f"http://127.0.0.1:{port}" in str(caught.value) and "s3cret" not in str(caught.value)
    assert ElasticStore("https://u:p@[::1]:9200/es", timeout=1).url == "https://[::1]:9200/es"


@pytest.fixture
def own_osmem():
    """An osmem-server process of this test's own, to kill or freeze."""
    from osmem_server import OsmemServer

    server = OsmemServer.start(addr="127.0.0.1:0", japanese=False)
    yield server
    if server.process.poll() is None:
        os.kill(server.pid, signal.SIGCONT)
    server.close()


def test_server_killed_mid_way_is_a_quick_store_error(own_osmem):
    made = ElasticStore(own_osmem.url, index="kill", timeout=10, node_class=PlainJsonNode)
    made.add(_record("a", 1))  # the pool now holds a live keep-alive connection
    own_osmem.process.kill()
    own_osmem.process.wait()
    for call in (lambda: made.add(_record("b", 2)), lambda: made.add_many([_record("c", 3)]), made.count):
        start = time.monotonic()
        with pytest.raises(StoreError, match=rf"Elasticsearch at {own_osmem.url} is unreachable"):
            call()
        assert time.monotonic() - start < 5  # not waited out: well within the 10 s timeout
    made.close()


def test_stalled_server_times_out_and_resending_is_safe(own_osmem):
    """A node that stops answering: StoreError after the timeout, not a hang. The add may still land
    (here it does, once the node resumes): re-sending it is harmless, the id is the path's."""
    made = ElasticStore(own_osmem.url, index="stall", timeout=1.5, node_class=PlainJsonNode)
    made.add(_record("a", 1))
    os.kill(own_osmem.pid, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"unreachable: no answer within 1.5 s \(trying to index 'b'\)") as caught:
        made.add(_record("b", 2))
    # at the timeout, not before; and under two of them, so a timeout is not retried (1.5 s of slack, for a
    # loaded machine: with 1 s it was the timeout alone)
    assert 1.4 < time.monotonic() - start < 2 * 1.5 and own_osmem.url in str(caught.value)
    os.kill(own_osmem.pid, signal.SIGCONT)
    made.add(_record("b", 2))  # the caller's retry
    assert made.count() == 2 and made.list_paths() == ["a", "b"]
    made.close()


def test_write_blocked_index_refuses_adds_loudly(store, backend):
    """What a full disk does (flood-stage watermark blocks writes): every add raises, nothing is lost quietly."""
    store.add(_record("kept", 1))
    client = _raw_client(backend)
    client.indices.put_settings(index=store.index, settings={"index.blocks.write": True})
    try:
        with pytest.raises(StoreError, match=rf"Elasticsearch at {store.url} failed to index 'one'.*cluster_block"):
            store.add(_record("one", 2))
        records = [_record(f"bulk{i}", 10 + i) for i in range(3)]
        with pytest.raises(BulkAddError, match=r"refused 3 of 3 records \(0 indexed\)") as caught:
            store.add_many(records, chunk_size=2)
        assert caught.value.indexed == 0 and sorted(caught.value.failed) == ["bulk0", "bulk1", "bulk2"]
        assert all("403 cluster_block_exception" in why for why in caught.value.failed.values())
    finally:
        client.indices.put_settings(index=store.index, settings={"index.blocks.write": False})
    assert store.count() == 1
    assert store.add_many([r for r in records if r.path in caught.value.failed]) == 3  # retry just those
    assert store.count() == 4


def test_a_2xx_answer_without_the_expected_result_is_a_store_error():
    made = ElasticStore("http://elastic:pw@127.0.0.1:9", timeout=1)
    meta = ApiResponseMeta(200, "1.1", HttpHeaders(), 0.01, NodeConfig("http", "127.0.0.1", 9))
    good = {"result": "created", "_shards": {"total": 2, "successful": 1, "failed": 0}}
    assert made._acknowledged(ObjectApiResponse(body=good, meta=meta), "index 'a'", ("created", "updated")) == "created"
    for body in ({"result": "noop", "_shards": {"successful": 1}}, {"result": "created", "_shards": {"successful": 0}}, {}):
        with pytest.raises(StoreError, match=r"Elasticsearch at http://127.0.0.1:9 did not acknowledge"):
            made._acknowledged(ObjectApiResponse(body=body, meta=meta), "index 'a'", ("created", "updated"))
