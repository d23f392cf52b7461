"""ElasticStore over real HTTP: against osmem-server (in-memory, started once per session) always, and
against a real Elasticsearch cluster when ELASTICSEARCH_URL is set (`pytest -k real_cluster`), which also
runs nearest() kNN (osmem has none).

    docker run -d --rm --name es-test -p 9200:9200 -e discovery.type=single-node \
        -e xpack.security.enabled=false -e ES_JAVA_OPTS="-Xms1g -Xmx1g" \
        docker.elastic.co/elasticsearch/elasticsearch:9.1.0
    ELASTICSEARCH_URL=http://127.0.0.1:9200 .venv/bin/python -m pytest tests/test_store_elastic.py -k real_cluster
"""

import io
import os
import socket
import time

import numpy as np
import pytest
from elasticsearch import Elasticsearch
from PIL import Image

import store.elastic as elastic
from store.base import Record, StoreError
from store.elastic import ElasticStore, doc_id, embedding_field
from tests import photos
from tests.store_backends import ALL_BACKENDS as BACKENDS, make_elastic_osmem, osmem_client, osmem_url, random_index

REAL_URL = os.environ.get("ELASTICSEARCH_URL", "").strip()
real_only = pytest.mark.skipif(not REAL_URL, reason="set ELASTICSEARCH_URL to run against a real Elasticsearch")
BACKEND_PARAMS = ["osmem", pytest.param("real_cluster", marks=real_only)]
MODEL = "mobilenet_v2"


def _raw_client(backend: str) -> Elasticsearch:
    return osmem_client() if backend == "osmem" else Elasticsearch(REAL_URL, request_timeout=30)


def _make_store(backend: str, **kwargs) -> ElasticStore:
    if backend == "osmem":
        return make_elastic_osmem(None, **kwargs)
    return ElasticStore(REAL_URL, index=random_index("test-imageserver"), timeout=30, **kwargs)


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store(backend):
    made = _make_store(backend)
    yield made
    try:
        made._es.options(ignore_status=404).indices.delete(index=made.index)
    finally:
        made.close()


# ---------------------------------------------------------------- records from real photos


def _signature_and_words(image: Image.Image):
    from image_match.goldberg import ImageSignature
    from image_match.signature_database_base import get_words, max_contrast, words_to_int

    signature = ImageSignature().generate_signature(np.asarray(image.convert("RGB")))
    words = get_words(signature, 16, 63)
    max_contrast(words)
    return signature.astype(np.int8), words_to_int(words).astype(np.int64)


@pytest.fixture(scope="module")
def photo_records() -> dict[str, Record]:
    """Real Goldberg signatures: four photos, plus the astronaut re-encoded as a JPEG of quality 30 (shares
    most of its 63 words with the original) and cropped by 4 px on each side (shares fewer)."""
    images = {name: Image.open(io.BytesIO(photos.read(name))) for name in ("astronaut", "chelsea", "coffee", "rocket")}
    astronaut = images["astronaut"].convert("RGB")
    width, height = astronaut.size
    buffer = io.BytesIO()
    astronaut.save(buffer, "JPEG", quality=30)
    images["astronaut_jpeg"] = Image.open(io.BytesIO(buffer.getvalue()))
    images["astronaut_crop"] = astronaut.crop((4, 4, width - 4, height - 4))
    rng = np.random.default_rng(7)
    records = {}
    for name, image in images.items():
        signature, words = _signature_and_words(image)
        vector = rng.normal(size=16).astype(np.float32)
        records[name] = Record(
            path=f"photos/{name}.jpg", sha256=f"{abs(hash(name)):064x}"[:64], signature=signature, words=words,
            metadata={"name": name, "size": list(image.size), "exif": {"Make": "Canon", "ISO": 100}},
            embeddings={MODEL: vector / np.linalg.norm(vector)},
        )
    return records


def _record(path: str, seed: int = 0, *, embeddings=True, dims: int = 16, **metadata) -> Record:
    rng = np.random.default_rng(seed)
    vector = rng.normal(size=dims).astype(np.float32)
    return Record(
        path=path, sha256=f"{seed:064x}", signature=rng.integers(-2, 3, 648).astype(np.int8),
        words=rng.integers(0, 3**16, 63).astype(np.int64), metadata=metadata,
        embeddings={MODEL: vector / np.linalg.norm(vector)} if embeddings else {},
    )


def _assert_same(got: Record, want: Record, embeddings: bool = True):
    assert got is not None and got.path == want.path and got.sha256 == want.sha256
    assert got.signature.dtype == np.int8 and np.array_equal(got.signature, want.signature)
    assert got.words.dtype == np.int64 and np.array_equal(got.words, want.words)
    assert got.metadata == want.metadata
    if embeddings:
        assert set(got.embeddings) == set(want.embeddings)
        for model, vector in want.embeddings.items():
            assert got.embeddings[model].dtype == np.float32
            # stored L2-normalised (as the SQLite store does), within float32 rounding
            np.testing.assert_allclose(got.embeddings[model], vector / np.linalg.norm(vector), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the factory


def test_backends_factory_reopens_the_same_directory_and_isolates_others(tmp_path):
    first, reopened = BACKENDS["elasticsearch"](tmp_path / "a"), BACKENDS["elasticsearch"](tmp_path / "a")
    other = BACKENDS["elasticsearch"](tmp_path / "b")
    assert first.index == reopened.index != other.index
    first.add(_record("only-in-a"))
    assert reopened.count() == 1 and other.count() == 0


# ---------------------------------------------------------------- mapping


def test_mapping_is_explicit(store, backend, photo_records):
    store.add(photo_records["astronaut"])
    response = _raw_client(backend).indices.get_mapping(index=store.index).body
    mappings = response[store.index]["mappings"]
    properties = mappings["properties"]
    assert mappings["dynamic"] == "strict"
    for name in ("path", "sha256", "words", "models"):
        assert properties[name]["type"] == "keyword", name
    assert properties["created"]["type"] == "date"
    assert properties["metadata"].get("enabled") is False  # stored verbatim, never mapped field by field
    assert "properties" not in properties["metadata"]
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
    """An index made by the seed's dynamic mapping (path as analysed text) is refused, naming the field."""
    client = _raw_client(backend)
    index = random_index("test-seed")
    seed_style = {"properties": {"path": {"type": "text"}, "metadata": {"type": "object"}}}
    client.indices.create(index=index, mappings=seed_style)
    try:
        made = ElasticStore(REAL_URL, index=index) if backend != "osmem" else ElasticStore(
            osmem_url(), index=index, client=osmem_client()
        )
        with pytest.raises(StoreError, match=r"incompatible mapping: path is text, expected keyword") as caught:
            made.count()
        assert index in str(caught.value) and "ELASTICSEARCH_INDEX" in str(caught.value)
        with pytest.raises(StoreError, match="incompatible"):  # and stays refused
            made.add(_record("a"))
    finally:
        client.indices.delete(index=index)


def test_existing_partial_mapping_is_completed(backend):
    client = _raw_client(backend)
    index = random_index("test-partial")
    client.indices.create(index=index, mappings={"dynamic": "strict", "properties": {"path": {"type": "keyword"}}})
    try:
        made = ElasticStore(REAL_URL, index=index) if backend != "osmem" else ElasticStore(
            osmem_url(), index=index, client=osmem_client()
        )
        record = _record("p")
        made.add(record)
        _assert_same(made.get("p"), record)
        properties = client.indices.get_mapping(index=index).body[index]["mappings"]["properties"]
        assert properties["words"]["type"] == "keyword"
    finally:
        client.indices.delete(index=index)


def test_embedding_length_mismatch_is_a_store_error(store):
    store.add(_record("a", 1, dims=16))
    with pytest.raises(StoreError, match=r"embedding 'mobilenet_v2' has 8 dimensions .* with 16"):
        store.add(_record("b", 2, dims=8))
    assert store.get("b") is None and store.count() == 1


def test_model_names_become_safe_field_names(store):
    assert embedding_field("mobilenet_v2") == "embedding_mobilenet_v2"
    odd = embedding_field("facebook/dinov2.base")
    assert odd.startswith("embedding_facebook_dinov2_base_") and "." not in odd
    assert embedding_field("a.b") != embedding_field("a_b")
    record = _record("odd")
    record.embeddings["facebook/dinov2.base"] = np.ones(4, dtype=np.float32) / 2
    store.add(record)
    _assert_same(store.get("odd"), record)


# ---------------------------------------------------------------- add / get / overwrite / delete / count / list


def test_add_get_roundtrip(store, photo_records):
    before = time.time()
    record = photo_records["astronaut"]
    store.add(record)
    got = store.get(record.path)
    _assert_same(got, record)
    assert before - 1 <= got.created <= time.time() + 1
    assert store.get("photos/missing.jpg") is None
    assert store.count() == 1


def test_record_without_embeddings_or_metadata(store):
    record = _record("plain", 3, embeddings=False)
    store.add(record)
    got = store.get("plain")
    _assert_same(got, record)
    assert got.embeddings == {} and got.metadata == {}


def test_paths_are_ids_not_text(store):
    """The seed phrase-matched an analysed path: 'a/b.jpg' and 'a b.jpg' collided. Here they are distinct."""
    paths = ["a/b.jpg", "a b.jpg", "A/B.JPG", "x" * 1000, "ünïcode/ фото.png"]
    for i, path in enumerate(paths):
        store.add(_record(path, i))
    assert store.count() == len(paths)
    for i, path in enumerate(paths):
        assert store.get(path).sha256 == f"{i:064x}"
    assert doc_id("a/b.jpg") != doc_id("a b.jpg") and len(doc_id("x" * 1000)) == 40


def test_add_overwrites_same_path(store):
    store.add(_record("a", 1, camera="old"))
    store.add(_record("b", 2))
    replacement = _record("a", 3, camera="new")
    store.add(replacement)
    assert store.count() == 2
    _assert_same(store.get("a"), replacement)
    assert store.list_paths() == ["b", "a"]  # an overwrite is a new insertion


def test_delete(store):
    store.add(_record("a", 1))
    store.add(_record("b", 2))
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.delete("never-added") is False
    assert store.get("a") is None and store.count() == 1 and store.list_paths() == ["b"]


def test_list_paths_insertion_order_and_pages(store):
    names = [f"{c}.jpg" for c in "zyxwvutsrq"]  # reverse alphabetical, added within a few milliseconds
    for i, name in enumerate(names):
        store.add(_record(name, i))
    assert store.list_paths(0, 100) == names
    assert store.list_paths() == names
    assert store.list_paths(2, 3) == names[2:5]
    assert store.list_paths(8, 5) == names[8:]
    assert store.list_paths(10, 5) == [] and store.list_paths(0, 0) == []
    with pytest.raises(ValueError):
        store.list_paths(-1, 5)


def test_list_paths_beyond_result_window_uses_search_after(store, monkeypatch):
    names = [f"img{i:03d}" for i in range(23)]
    store.add_many([_record(name, i) for i, name in enumerate(names)])
    monkeypatch.setattr(elastic, "MAX_RESULT_WINDOW", 4)  # as if 10,000: every page below is "deep"
    assert store.list_paths(0, 10) == names[:10]
    assert store.list_paths(5, 9) == names[5:14]
    assert store.list_paths(20, 10) == names[20:]
    assert store.list_paths(30, 10) == []


def test_add_many_bulk(store):
    records = [_record(f"bulk/{i:04d}.jpg", i) for i in range(300)]
    assert store.add_many(records) == 300
    assert store.count() == 300  # visible at once: the store's refresh policy applies per chunk
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
        made._es.options(ignore_status=404).indices.delete(index=made.index)
    with pytest.raises(ValueError, match="refresh"):
        ElasticStore("http://127.0.0.1:9", refresh="sometimes")


def test_concurrent_adds(store):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.add(_record(f"t/{i:03d}", i)), range(80)))
    assert store.count() == 80
    paths = store.list_paths(0, 100)
    assert sorted(paths) == [f"t/{i:03d}" for i in range(80)]
    created = [store.get(p).created for p in paths]
    assert created == sorted(created) and len(set(created)) == 80  # distinct, in listing order


# ---------------------------------------------------------------- candidates


def test_candidates_rank_by_shared_words(store, photo_records):
    order = ["chelsea", "astronaut_crop", "coffee", "astronaut", "rocket", "astronaut_jpeg"]
    for name in order:
        store.add(photo_records[name])
    query = photo_records["astronaut"].words
    shared = {name: int(np.sum(photo_records[name].words == query)) for name in order}
    assert shared["astronaut"] == 63 > shared["astronaut_jpeg"] > shared["astronaut_crop"] > 10
    expected = [n for n in sorted(order, key=lambda n: (-shared[n], order.index(n))) if shared[n] > 0]

    found = store.candidates(query, limit=100)
    assert [r.path for r in found] == [photo_records[n].path for n in expected]
    assert [r.path for r in found[:3]] == [f"photos/{n}.jpg" for n in ("astronaut", "astronaut_jpeg", "astronaut_crop")]
    _assert_same(found[0], photo_records["astronaut"], embeddings=False)
    assert found[0].embeddings == {}  # left out of the response: use get()
    assert [r.path for r in store.candidates(query, limit=2)] == ["photos/astronaut.jpg", "photos/astronaut_jpeg.jpg"]


def test_candidates_match_position_and_value(store):
    base = _record("base", 1, embeddings=False)
    store.add(base)
    shifted = np.roll(base.words, 1)  # same values, other positions: nothing in common
    assert not np.any(shifted == base.words)
    assert store.candidates(shifted) == []
    one = shifted.copy()
    one[10] = base.words[10]
    assert [r.path for r in store.candidates(one)] == ["base"]
    assert store.candidates(base.words, limit=0) == []


def test_candidates_more_shared_first_synthetic(store):
    query = np.arange(63, dtype=np.int64) * 1000
    for path, n_shared in (("five", 5), ("forty", 40), ("one", 1), ("none", 0), ("twenty", 20), ("five_later", 5)):
        words = query + 7  # all different
        words[:n_shared] = query[:n_shared]
        record = _record(path, n_shared, embeddings=False)
        record.words = words
        store.add(record)
    # ties (five, five_later): oldest first
    assert [r.path for r in store.candidates(query)] == ["forty", "twenty", "five", "five_later", "one"]
    assert [r.path for r in store.candidates(query, limit=2)] == ["forty", "twenty"]


# ---------------------------------------------------------------- nearest


def test_nearest_on_osmem_is_a_clear_store_error():
    made = make_elastic_osmem(None)
    made.add(_record("a", 1))
    assert made.knn_supported is False
    with pytest.raises(StoreError, match="kNN"):
        made.nearest(MODEL, np.ones(16, dtype=np.float32))


@real_only
def test_real_cluster_nearest_knn(photo_records):
    made = _make_store("real_cluster")
    try:
        assert made.knn_supported is True
        names = ["astronaut", "chelsea", "coffee", "rocket", "astronaut_crop", "astronaut_jpeg"]
        made.add_many([photo_records[n] for n in names])
        made.add(_record("no-embedding", 9, embeddings=False))
        query = photo_records["astronaut"].embeddings[MODEL]
        cosines = {n: float(np.dot(photo_records[n].embeddings[MODEL], query)) for n in names}
        expected = sorted(names, key=lambda n: -cosines[n])

        found = made.nearest(MODEL, query, k=3)
        assert [n.path for n in found] == [photo_records[n].path for n in expected[:3]]
        assert found[0].path == "photos/astronaut.jpg" and found[0].similarity == pytest.approx(1.0, abs=1e-5)
        for neighbour in found:
            name = neighbour.path.split("/")[1].rsplit(".", 1)[0]
            assert neighbour.similarity == pytest.approx(cosines[name], abs=1e-4)
            assert neighbour.metadata == photo_records[name].metadata
            assert neighbour.sha256 == photo_records[name].sha256
        assert len(made.nearest(MODEL, query, k=10)) == 6  # the record without an embedding is no neighbour
        assert made.nearest("never-seen-model", query) == []
        assert made.nearest(MODEL, query, k=0) == []
        with pytest.raises(StoreError, match="dimensions"):
            made.nearest(MODEL, np.ones(8, dtype=np.float32))
        _assert_same(made.get("photos/chelsea.jpg"), photo_records["chelsea"])  # vectors come back on 9.2+ too
    finally:
        made._es.options(ignore_status=404).indices.delete(index=made.index)
        made.close()


# ---------------------------------------------------------------- failures


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_url_is_a_store_error_naming_it():
    url = f"http://127.0.0.1:{_closed_port()}"
    made = ElasticStore(url, timeout=2)  # lazy: constructing does not connect
    calls = [
        lambda: made.count(), lambda: made.add(_record("a")), lambda: made.get("a"), lambda: made.delete("a"),
        lambda: made.list_paths(), lambda: made.candidates(np.zeros(63, dtype=np.int64)),
        lambda: made.nearest(MODEL, np.ones(16)), lambda: made.add_many([_record("b")]), made.ensure_index,
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(StoreError, match=rf"Elasticsearch at {url} is unreachable"):
            call()
        assert time.monotonic() - start < 5
    made.close()


def test_unreachable_message_hides_credentials():
    port = _closed_port()
    made = ElasticStore(f"http://elastic:s3cret@127.0.0.1:{port}", timeout=2)
    with pytest.raises(StoreError) as caught:
        made.count()
    assert f"http://127.0.0.1:{port}" in str(caught.value) and "s3cret" not in str(caught.value)


def test_server_going_away_is_a_store_error_not_a_loss(backend):
    """A store that worked, then a dead node: every call raises (here: a client pointed at a closed port)."""
    made = _make_store(backend)
    made.add(_record("a", 1))
    url = f"http://127.0.0.1:{_closed_port()}"
    dead = ElasticStore(url, index=made.index, client=Elasticsearch(url, max_retries=0), timeout=2)
    dead._ready, dead._vectors = True, dict(made._vectors)  # as if it had checked the index before the outage
    with pytest.raises(StoreError, match="unreachable"):
        dead.add(_record("b", 2))
    assert made.get("b") is None and made.count() == 1
    made._es.indices.delete(index=made.index)
