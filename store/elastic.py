"""The Elasticsearch backend of the image index (`Store`), with an explicit mapping.

One document per image (`_id` = SHA-1 of the path, so a re-sent add overwrites instead of duplicating),
words as one multi-valued keyword field, embeddings as dense_vector re-scored exactly, a second index for
the gallery. Every call is bounded by the timeout and every failure is a StoreError naming the cluster:
never a silent loss. docs/elasticsearch.md describes the mapping, the refresh policies, bulk loads, the
errors and the gallery in full.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
import uuid
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, TransportError
from elasticsearch import ApiError, Elasticsearch, helpers

from store.base import (GALLERY_NAME_MAX, GalleryFull, GalleryRecord, Neighbour, Record, Store, StoreError,
                        check_gallery_add, check_gallery_text, check_page, is_gallery_id)

REFRESH_POLICIES = {"wait_for": "wait_for", "true": True, "false": False}
MAX_RESULT_WINDOW = 10_000  # index.max_result_window default; also the kNN num_candidates ceiling
BULK_CHUNK = 500
BULK_RETRIES, BULK_BACKOFF = 2, 1.0  # items refused with 429 are re-sent after 1 s, then 2 s
EMBEDDING_PREFIX = "embedding_"

BASE_PROPERTIES = {
    "path": {"type": "keyword"},
    "sha256": {"type": "keyword"},
    "metadata": {"type": "object", "enabled": False},
    "signature": {"type": "binary"},
    "words": {"type": "keyword"},
    "models": {"type": "keyword"},
    "created": {"type": "date", "format": "epoch_millis"},
}
GALLERY_SUFFIX = "-gallery"
GALLERY_PROPERTIES = {
    "id": {"type": "keyword"},
    "user": {"type": "keyword"},
    "name": {"type": "keyword"},
    "original_sha256": {"type": "keyword"},
    "processed_sha256": {"type": "keyword"},
    "created": {"type": "date", "format": "epoch_millis"},
    "model": {"type": "keyword"},  # added to an older index's mapping by ensure_gallery_index
}
_SAFE_MODEL = re.compile(r"^[A-Za-z0-9_-]+$")


def doc_id(path: str) -> str:
    """The document `_id` of a path: hex SHA-1 of its UTF-8 bytes."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()


def embedding_field(model: str) -> str:
    """Field name of a model's embedding: embedding_<model>, sanitised (dots would make object paths)."""
    if _SAFE_MODEL.match(model):
        return EMBEDDING_PREFIX + model
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", model)
    return f"{EMBEDDING_PREFIX}{safe}_{hashlib.sha1(model.encode('utf-8')).hexdigest()[:8]}"


def word_terms(words) -> list[str]:
    """The indexed form of image_match's simple words: "position:value"."""
    return [f"{i}:{int(w)}" for i, w in enumerate(np.asarray(words).ravel())]


def _words_from_terms(terms) -> np.ndarray:
    pairs = sorted((int(p), int(v)) for p, v in (t.split(":", 1) for t in terms))
    return np.array([v for _, v in pairs], dtype=np.int64)


def _public_url(url: str) -> str:
    """The URL without user:password, for error messages (an IPv6 [host] keeps its brackets)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rpartition("@")[2]
    if "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return url


def _refresh_policy(refresh) -> str | bool:
    """"wait_for" / "true" / "false" in any case, or a bool (ELASTICSEARCH_REFRESH)."""
    key = str(refresh).strip().lower()
    if key not in REFRESH_POLICIES:
        raise ValueError(f"refresh={refresh!r}: expected wait_for, true or false")
    return REFRESH_POLICIES[key]


def _timeout_seconds(timeout) -> float:
    """A positive number of seconds, from a number or a string (ELASTICSEARCH_TIMEOUT)."""
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f"timeout={timeout!r}: expected a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"timeout={timeout!r}: expected a positive, finite number of seconds")
    return seconds


def _api_detail(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    if isinstance(error, dict):
        cause = (error.get("root_cause") or [error])[0]
        if isinstance(error.get("caused_by"), dict):
            cause = error["caused_by"]
        return f"{exc.meta.status} {cause.get('type', error.get('type'))}: {cause.get('reason', error.get('reason'))}"
    return f"{exc.meta.status} {error or exc.message}"


def _raise_if_index_missing(response) -> None:
    """For a get or delete by id sent with ignore_status=404: a missing document answers 404 without an
    error body, a missing index (or another failure) with one, raised here as the ApiError it would have
    been, for `_errors` to report (and, for index_not_found, to create the index again)."""
    if response.meta.status == 404 and "error" in response.body:
        raise ApiError(str(response.body.get("error")), meta=response.meta, body=response.body)


class BulkAddError(StoreError):
    """Some records of an add_many were refused; the others are indexed (bulk is not a transaction)."""

    def __init__(self, message: str, indexed: int, failed: dict[str, str]):
        super().__init__(message)
        self.indexed = indexed
        self.failed = failed  # path -> "status type: reason"


class ElasticStore(Store):
    """Store on one Elasticsearch index. Thread-safe: one client, whose connection pool the threads share."""

    def __init__(
        self,
        url: str,
        index: str = "images",
        *,
        refresh: str | bool = "wait_for",
        timeout: float | str = 10.0,
        client: Elasticsearch | None = None,
        **client_options,
    ):
        if not index or index != index.lower():
            raise ValueError(f"index={index!r}: Elasticsearch index names are non-empty and lowercase")
        self.url = _public_url(url)
        self.index = index
        self.refresh = _refresh_policy(refresh)
        self.timeout = _timeout_seconds(timeout)
        self._owns_client = client is None
        # one retry of a refused connection or a 429/50x answer, none of a timeout: about one timeout
        options = {"max_retries": 1, "retry_on_timeout": False, **client_options}
        try:
            base = client if client is not None else Elasticsearch(url, **options)
            self._es = base.options(request_timeout=self.timeout)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"Elasticsearch at {self.url}: bad configuration: {exc}") from exc
        self._base_client = base
        self._lock = threading.Lock()
        self._ready = False
        self.gallery_index = index + GALLERY_SUFFIX
        self._gallery_ready = False
        self._knn = True  # False on OpenSearch-flavoured servers (osmem)
        self._vector_type = "dense_vector"
        self._exclude_vectors_flag = False  # the server understands _source_exclude_vectors
        self._vectors: dict[str, int] = {}  # embedding field -> dims, as mapped
        self._last_created = 0

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _errors(self, action: str):
        try:
            yield
        except StoreError:
            raise
        except ConnectionTimeout as exc:
            raise StoreError(
                f"Elasticsearch at {self.url} is unreachable: no answer within {self.timeout:g} s "
                f"(trying to {action}): {exc}"
            ) from exc
        except TransportConnectionError as exc:
            raise StoreError(f"Elasticsearch at {self.url} is unreachable (trying to {action}): {exc}") from exc
        except TransportError as exc:  # e.g. an answer that is not Elasticsearch JSON (a proxy's page)
            raise StoreError(f"Elasticsearch at {self.url} failed to {action}: {exc}") from exc
        except ApiError as exc:
            if exc.meta.status == 404 and "index_not_found" in str(exc.body):
                self._ready = self._gallery_ready = False  # someone deleted an index: create it again
            raise StoreError(f"Elasticsearch at {self.url} failed to {action}: {_api_detail(exc)}") from exc

    def _acknowledged(self, response, action: str, results: tuple[str, ...]) -> str:
        """The answer's `result`, or StoreError when it is not one of `results` or no shard took the write."""
        body = response.body if isinstance(response.body, dict) else {}
        result, shards = body.get("result"), body.get("_shards") or {}
        if result not in results or ("successful" in shards and int(shards["successful"]) < 1):
            raise StoreError(
                f"Elasticsearch at {self.url} did not acknowledge the request to {action}: "
                f"result={result!r}, _shards={shards}"
            )
        return result

    @property
    def knn_supported(self) -> bool:
        """Whether `nearest` can run here (Elasticsearch); False on OpenSearch-flavoured servers."""
        self.ensure_index()
        return self._knn

    def ensure_index(self) -> None:
        """Create the index with the mapping if missing, else check its mapping. Raises StoreError."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            with self._errors("describe itself"):
                info = self._es.info()
            version = info.get("version", {})
            number = str(version.get("number", "0"))
            major_minor = tuple(int(x) for x in re.findall(r"\d+", number)[:2]) or (0, 0)
            if version.get("distribution") == "opensearch":
                self._knn, self._vector_type = False, "knn_vector"
            elif major_minor < (8, 0):
                raise StoreError(
                    f"Elasticsearch at {self.url} is version {number}; the image index needs 8.0 or later "
                    "(dense_vector kNN), and this client needs 9.x"
                )
            else:
                self._exclude_vectors_flag = major_minor >= (9, 1) or major_minor == (8, 19)
            with self._errors(f"check index {self.index!r}"):
                self._create_if_missing(self.index, BASE_PROPERTIES)
                self._check_mapping(self._read_properties())
            self._ready = True

    def _create_if_missing(self, index: str, properties: dict) -> None:
        """Create `index` with a strict mapping unless it exists; the caller then checks what is there."""
        if self._es.indices.exists(index=index):
            return
        try:
            self._es.indices.create(index=index, mappings={"dynamic": "strict", "properties": properties})
        except ApiError as exc:  # another process created it first: the caller checks what it made
            if "resource_already_exists" not in str(exc.body):
                raise

    def _read_properties(self, index: str | None = None) -> dict:
        index = index or self.index
        response = self._es.indices.get_mapping(index=index).body
        if not response:
            raise StoreError(f"Elasticsearch at {self.url}: index {index!r} has no mapping")
        if len(response) > 1:
            raise StoreError(
                f"Elasticsearch at {self.url}: {index!r} is an alias of {len(response)} indices; "
                "give the store one index"
            )
        mappings = next(iter(response.values())).get("mappings", {})
        return mappings.get("properties", {})

    def _check_mapping(self, properties: dict) -> None:
        """Raise StoreError on a type clash; add the base fields that are missing (additive)."""
        problems, missing = [], {}
        for name, wanted in BASE_PROPERTIES.items():
            have = properties.get(name)
            if have is None:
                missing[name] = wanted
                continue
            have_type = have.get("type", "object" if "properties" in have or "enabled" in have else None)
            if have_type != wanted["type"]:
                problems.append(f"{name} is {have_type}, expected {wanted['type']}")
            elif name == "metadata" and have.get("enabled", True) is not False:
                problems.append("metadata is an indexed (dynamic) object, expected \"enabled\": false")
        vectors = {}
        for name, have in properties.items():
            if not name.startswith(EMBEDDING_PREFIX):
                continue
            if have.get("type") != self._vector_type:
                problems.append(f"{name} is {have.get('type')}, expected {self._vector_type}")
                continue
            if self._vector_type == "dense_vector":
                if have.get("index") is False:
                    problems.append(f"{name} is a dense_vector with \"index\": false (no kNN)")
                if have.get("similarity", "cosine") != "cosine":
                    problems.append(f"{name} has similarity {have.get('similarity')}, expected cosine")
            vectors[name] = int(have.get("dims") or have.get("dimension") or 0)
        if problems:
            raise StoreError(
                f"Elasticsearch at {self.url}: index {self.index!r} exists with an incompatible mapping: "
                + "; ".join(problems)
                + ". It was not created by this store (an index filled by dynamic mapping, such as the previous "
                "/add service's?): set ELASTICSEARCH_INDEX to a new name, or reindex into an index this store creates"
            )
        if missing:
            self._es.indices.put_mapping(index=self.index, properties=missing)
        self._vectors = vectors

    def _vector_mapping(self, dims: int) -> dict:
        if self._vector_type == "dense_vector":
            return {"type": "dense_vector", "dims": dims, "index": True, "similarity": "cosine"}
        return {"type": "knn_vector", "dimension": dims}

    def _ensure_vector_fields(self, records) -> None:
        """Put-mapping the embedding fields not mapped yet; StoreError if a length differs from the mapping."""
        needed: dict[str, tuple[str, int]] = {}
        for record in records:
            for model, vector in record.embeddings.items():
                field, dims = embedding_field(model), int(np.asarray(vector).size)
                mapped = self._vectors.get(field) or needed.get(field, (model, None))[1]
                if mapped is not None and mapped != dims:
                    raise StoreError(
                        f"Elasticsearch at {self.url}: embedding {model!r} has {dims} dimensions but index "
                        f"{self.index!r} maps {field} with {mapped}"
                    )
                if field not in self._vectors:
                    needed[field] = (model, dims)
        if not needed:
            return
        with self._lock, self._errors(f"map the embedding field(s) {', '.join(needed)}"):
            try:
                self._es.indices.put_mapping(
                    index=self.index,
                    properties={field: self._vector_mapping(dims) for field, (_, dims) in needed.items()},
                )
            except ApiError as exc:
                if exc.meta.status == 400:  # e.g. another process mapped the model with other dims
                    self._check_mapping(self._read_properties())
                raise
            self._vectors.update({field: dims for field, (_, dims) in needed.items()})

    def _next_created(self) -> int:
        with self._lock:
            created = max(int(time.time() * 1000), self._last_created + 1)
            self._last_created = created
            return created

    def _document(self, record: Record, created: int) -> dict:
        signature = np.asarray(record.signature, dtype=np.int8).ravel()
        document = {
            "path": record.path,
            "sha256": record.sha256,
            "metadata": record.metadata or {},
            "signature": base64.b64encode(signature.tobytes()).decode("ascii"),
            "words": word_terms(record.words),
            "models": sorted(record.embeddings),
            "created": created,
        }
        for model, vector in record.embeddings.items():
            vector = np.asarray(vector, dtype=np.float32).ravel()
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(norm) or norm == 0.0:
                raise ValueError(f"the {model} embedding of {record.path!r} is zero or not finite")
            # stored L2-normalised, as the SQLite store does: cosine needs no more, and both backends agree
            document[embedding_field(model)] = (vector / norm).tolist()
        return document

    def _record(self, source: dict, with_embeddings: bool = True) -> Record:
        embeddings = {}
        if with_embeddings:
            for model in source.get("models") or []:
                vector = source.get(embedding_field(model))
                if vector is not None:
                    embeddings[model] = np.asarray(vector, dtype=np.float32)
        return Record(
            path=source["path"],
            sha256=source.get("sha256", ""),
            signature=np.frombuffer(base64.b64decode(source.get("signature") or ""), dtype=np.int8).copy(),
            words=_words_from_terms(source.get("words") or []),
            metadata=source.get("metadata") or {},
            embeddings=embeddings,
            created=float(source.get("created") or 0) / 1000.0,
        )

    def _vectors_call(self, method, with_vectors: dict, **kwargs):
        """Call `method`, with `with_vectors` merged into the arguments on servers that know exclude_vectors.

        Elasticsearch 9.2+ leaves dense vectors out of `_source` unless asked (exclude_vectors: false);
        8.19 / 9.1+ understand the option, older servers refuse it. A server that refuses it gets the call
        again without it, and never sees it again.
        """
        if self._exclude_vectors_flag:
            try:
                return method(**{**kwargs, **with_vectors})
            except ApiError as exc:
                if exc.meta.status != 400 or "exclude_vectors" not in str(exc.body):
                    raise
                self._exclude_vectors_flag = False
        return method(**kwargs)

    # ------------------------------------------------------------------ Store

    def add(self, record: Record) -> None:
        """Index one record (overwriting its path); sets `record.created`. Visible to search on return
        with the default refresh="wait_for"."""
        self.ensure_index()
        self._ensure_vector_fields([record])
        created = self._next_created()
        document = self._document(record, created)
        action = f"index {record.path!r}"
        with self._errors(action):
            response = self._es.index(index=self.index, id=doc_id(record.path), document=document, refresh=self.refresh)
        self._acknowledged(response, action, ("created", "updated"))
        record.created = created / 1000.0

    def add_many(self, records, chunk_size: int = BULK_CHUNK) -> int:
        """Bulk-index records (`chunk_size` per request, the refresh policy per request); sets `created`.

        Returns the number indexed, which is all of them: a refused item (after the 429 re-sends) is a
        BulkAddError naming the failed paths once every chunk was sent; a transport failure, a StoreError.
        """
        records = list(records)
        if not records:
            return 0
        self.ensure_index()
        self._ensure_vector_fields(records)
        actions, paths = [], {}
        for record in records:
            created = self._next_created()
            paths[doc_id(record.path)] = record.path
            actions.append(
                {"_index": self.index, "_id": doc_id(record.path), "_source": self._document(record, created)}
            )
            record.created = created / 1000.0
        indexed, failed = 0, {}
        try:
            with self._errors(f"bulk-index {len(records)} records"):
                for ok, item in helpers.streaming_bulk(
                    self._es, actions, chunk_size=chunk_size, refresh=self.refresh, raise_on_error=False,
                    max_retries=BULK_RETRIES, initial_backoff=BULK_BACKOFF,
                ):
                    info = next(iter(item.values()))
                    if ok:
                        indexed += 1
                        continue
                    error = info.get("error") or {}
                    if isinstance(error, dict):
                        error = f"{error.get('type')}: {error.get('reason')}"
                    failed[paths.get(info.get("_id"), info.get("_id"))] = f"{info.get('status')} {error}"
        except StoreError as exc:  # the load stopped: say how far it got
            raise StoreError(f"{exc} ({indexed} of {len(records)} records had been indexed)") from exc
        if failed:
            shown = "; ".join(f"{path!r}: {why}" for path, why in list(failed.items())[:3])
            raise BulkAddError(
                f"Elasticsearch at {self.url} refused {len(failed)} of {len(records)} records "
                f"({indexed} indexed): {shown}" + (" ..." if len(failed) > 3 else ""),
                indexed, failed,
            )
        return indexed

    def get(self, path: str) -> Record | None:
        self.ensure_index()
        with self._errors(f"get {path!r}"):
            response = self._vectors_call(
                self._es.options(ignore_status=404).get, {"source_exclude_vectors": False},
                index=self.index, id=doc_id(path),
            )
            _raise_if_index_missing(response)
        body = response.body
        if not body.get("found") or body["_source"].get("path") != path:
            return None
        return self._record(body["_source"])

    def delete(self, path: str) -> bool:
        self.ensure_index()
        with self._errors(f"delete {path!r}"):
            response = self._es.options(ignore_status=404).delete(
                index=self.index, id=doc_id(path), refresh=self.refresh
            )
            _raise_if_index_missing(response)
        return self._acknowledged(response, f"delete {path!r}", ("deleted", "not_found")) == "deleted"

    def count(self) -> int:
        self.ensure_index()
        with self._errors("count"):
            return int(self._es.count(index=self.index)["count"])

    def paths_with_sha256(self, sha256: str, limit: int = 10) -> list[str]:
        if limit <= 0:
            return []
        self.ensure_index()
        with self._errors("find records by sha256"):
            if self.refresh is False:  # search is not realtime: an add that returned may not be visible yet
                self._es.indices.refresh(index=self.index)
            hits = self._es.search(
                index=self.index, query={"term": {"sha256": sha256}}, sort=[{"created": "asc"}, {"path": "asc"}],
                size=min(limit, MAX_RESULT_WINDOW), source=["path"], track_total_hits=False,
            )["hits"]["hits"]
        return [hit["_source"]["path"] for hit in hits]

    def list_paths(self, offset: int = 0, limit: int = 20) -> list[str]:
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be >= 0")
        if limit == 0:
            return []
        self.ensure_index()
        sort = [{"created": "asc"}, {"path": "asc"}]
        with self._errors("list paths"):
            if offset + limit <= MAX_RESULT_WINDOW:
                hits = self._es.search(
                    index=self.index, sort=sort, from_=offset, size=limit, source=["path"], track_total_hits=False
                )["hits"]["hits"]
                return [hit["_source"]["path"] for hit in hits]
            # beyond the window: skip `offset` sort keys with search_after, then read `limit` paths
            after, skipped, paths = None, 0, []
            while len(paths) < limit:
                want = min(MAX_RESULT_WINDOW, offset - skipped) if skipped < offset else min(
                    MAX_RESULT_WINDOW, limit - len(paths)
                )
                extra = {"search_after": after} if after is not None else {}
                hits = self._es.search(
                    index=self.index, sort=sort, size=want, track_total_hits=False,
                    source=["path"] if skipped >= offset else False, **extra,
                )["hits"]["hits"]
                if not hits:
                    break
                after = hits[-1]["sort"]
                if skipped < offset:
                    skipped += len(hits)
                else:
                    paths.extend(hit["_source"]["path"] for hit in hits)
            return paths

    def candidates(self, words: np.ndarray, limit: int = 100) -> list[Record]:
        """One bool/should of constant-score term queries, so _score = number of shared words.

        Ties: oldest first. Candidates carry signature and words but no embeddings (left out of the
        response: they are the bulk of a document and the caller compares signatures); use get() for them.
        """
        terms = word_terms(words)
        if limit <= 0 or not terms:
            return []
        self.ensure_index()
        should = [{"constant_score": {"filter": {"term": {"words": term}}, "boost": 1.0}} for term in terms]
        with self._errors("search candidates"):
            hits = self._es.search(
                index=self.index,
                query={"bool": {"should": should, "minimum_should_match": 1}},
                sort=[{"_score": "desc"}, {"created": "asc"}],
                size=min(limit, MAX_RESULT_WINDOW),
                source={"excludes": [EMBEDDING_PREFIX + "*"]},
                track_total_hits=False,
            )["hits"]["hits"]
        return [self._record(hit["_source"], with_embeddings=False) for hit in hits]

    def nearest(self, model: str, vector: np.ndarray, k: int = 10) -> list[Neighbour]:
        """kNN on the model's dense_vector (Elasticsearch 8+ only), re-scored with exact cosines."""
        self.ensure_index()
        if not self._knn:
            raise StoreError(
                f"Elasticsearch at {self.url} is an OpenSearch-flavoured server (osmem?) without Elasticsearch "
                "kNN search: nearest() needs Elasticsearch 8+ dense_vector fields"
            )
        if k <= 0:
            return []
        field = embedding_field(model)
        query = np.asarray(vector, dtype=np.float32).ravel()
        if field not in self._vectors:
            with self._lock, self._errors("read the mapping"):  # mapped by another process meanwhile?
                self._check_mapping(self._read_properties())
            if field not in self._vectors:
                return []  # no record has an embedding of this model
        if self._vectors[field] != query.size:
            raise StoreError(
                f"Elasticsearch at {self.url}: query vector for {model!r} has {query.size} dimensions, "
                f"index {self.index!r} maps {field} with {self._vectors[field]}"
            )
        k = min(k, MAX_RESULT_WINDOW)
        includes = ["path", "sha256", "metadata", field]
        with self._errors(f"run kNN on {field}"):
            hits = self._vectors_call(
                self._es.search, {"source": {"includes": includes, "exclude_vectors": False}},
                index=self.index,
                knn={
                    "field": field, "query_vector": query.tolist(), "k": k,
                    "num_candidates": min(MAX_RESULT_WINDOW, max(100, 10 * k)),
                },
                size=k,
                source=includes,
                track_total_hits=False,
            )["hits"]["hits"]
        norm = float(np.linalg.norm(query)) or 1.0
        result = []
        for hit in hits:
            source = hit["_source"]
            stored = source.get(field)
            if stored is not None:
                stored = np.asarray(stored, dtype=np.float32)
                similarity = float(np.dot(stored, query) / ((float(np.linalg.norm(stored)) or 1.0) * norm))
            else:  # cosine _score is (1 + cos) / 2
                similarity = 2.0 * float(hit["_score"]) - 1.0
            result.append(Neighbour(source["path"], similarity, source.get("metadata") or {}, source.get("sha256", "")))
        result.sort(key=lambda n: -n.similarity)
        return result

    def sha256_referenced(self, sha256: str) -> bool:
        self.ensure_index()
        self.ensure_gallery_index()
        either = {"bool": {"should": [{"term": {"original_sha256": sha256}}, {"term": {"processed_sha256": sha256}}],
                           "minimum_should_match": 1}}
        with self._errors("find references to an original"):
            if self.refresh is False:  # count is not realtime: an add that returned may not be visible yet
                self._es.indices.refresh(index=[self.index, self.gallery_index])
            if int(self._es.count(index=self.index, query={"term": {"sha256": sha256}})["count"]):
                return True
            return int(self._es.count(index=self.gallery_index, query=either)["count"]) > 0

    # ------------------------------------------------------------------ the gallery

    def ensure_gallery_index(self) -> None:
        """Create `<index>-gallery` with its mapping if missing, else check it. Raises StoreError."""
        if self._gallery_ready:
            return
        self.ensure_index()  # the server's version checks
        with self._lock:
            if self._gallery_ready:
                return
            with self._errors(f"check index {self.gallery_index!r}"):
                self._create_if_missing(self.gallery_index, GALLERY_PROPERTIES)
                properties = self._read_properties(self.gallery_index)
                problems = [
                    f"{name} is {properties[name].get('type')}, expected {wanted['type']}"
                    for name, wanted in GALLERY_PROPERTIES.items()
                    if name in properties and properties[name].get("type") != wanted["type"]
                ]
                if problems:
                    raise StoreError(
                        f"Elasticsearch at {self.url}: index {self.gallery_index!r} exists with an incompatible "
                        "mapping: " + "; ".join(problems)
                    )
                missing = {name: wanted for name, wanted in GALLERY_PROPERTIES.items() if name not in properties}
                if missing:
                    self._es.indices.put_mapping(index=self.gallery_index, properties=missing)
            self._gallery_ready = True

    def _gallery_user_count(self, user: str, refresh: bool) -> int:
        with self._errors(f"count the gallery records of {user!r}"):
            if refresh:
                self._es.indices.refresh(index=self.gallery_index)
            return int(self._es.count(index=self.gallery_index, query={"term": {"user": user}})["count"])

    def _gallery_source(self, user: str, record_id: str) -> dict | None:
        """The record's _source when it exists and is `user`'s (get by id is realtime)."""
        if not is_gallery_id(record_id):
            return None
        self.ensure_gallery_index()
        with self._errors(f"get gallery record {record_id!r}"):
            response = self._es.options(ignore_status=404).get(index=self.gallery_index, id=record_id)
            _raise_if_index_missing(response)
        body = response.body
        if not body.get("found") or body["_source"].get("user") != user:
            return None
        return body["_source"]

    def _gallery_drop(self, record_id: str, refresh) -> str:
        """Delete by id; "deleted" or "not_found"."""
        with self._errors(f"delete gallery record {record_id!r}"):
            response = self._es.options(ignore_status=404).delete(
                index=self.gallery_index, id=record_id, refresh=refresh
            )
            _raise_if_index_missing(response)
        return self._acknowledged(response, f"delete gallery record {record_id!r}", ("deleted", "not_found"))

    def gallery_add(self, user: str, name: str, original_sha256: str, processed_sha256: str,
                    limit: int, model: str = "") -> GalleryRecord:
        check_gallery_add(user, name, original_sha256, processed_sha256, limit, model)
        self.ensure_gallery_index()
        have = self._gallery_user_count(user, refresh=self.refresh is False)
        if have >= limit:
            raise GalleryFull(f"user {user!r} already has {have} gallery records (limit {limit})")
        created = self._next_created()
        record = GalleryRecord(uuid.uuid4().hex, user, name, original_sha256, processed_sha256, created / 1000.0,
                               model)
        document = {"id": record.id, "user": user, "name": name, "original_sha256": original_sha256,
                    "processed_sha256": processed_sha256, "created": created, "model": model}
        action = f"index gallery record {record.id!r}"
        with self._errors(action):  # refresh=true: the count below, and every other adder's, sees it
            response = self._es.index(index=self.gallery_index, id=record.id, document=document, op_type="create",
                                      refresh=True)
        self._acknowledged(response, action, ("created",))
        try:
            have = self._gallery_user_count(user, refresh=False)
        except StoreError:  # unknown whether it fits: take it back rather than risk exceeding the limit
            try:
                self._gallery_drop(record.id, refresh=True)
            except StoreError:
                pass
            raise
        if have > limit:  # a concurrent add won the race (or both lose): take ours back
            self._gallery_drop(record.id, refresh=True)
            raise GalleryFull(f"user {user!r} reached the limit of {limit} gallery records")
        return record

    def gallery_get(self, user: str, record_id: str) -> GalleryRecord | None:
        source = self._gallery_source(user, record_id)
        return None if source is None else _gallery_record(source)

    def gallery_list(self, user: str, offset: int = 0, limit: int = 50) -> list[GalleryRecord]:
        """Newest first; from/size, so pages end at index.max_result_window (10,000) records."""
        offset, limit = check_page(offset, limit)
        size = min(limit, MAX_RESULT_WINDOW - offset)
        if size <= 0:
            return []
        self.ensure_gallery_index()
        with self._errors(f"list the gallery records of {user!r}"):
            if self.refresh is False:
                self._es.indices.refresh(index=self.gallery_index)
            hits = self._es.search(
                index=self.gallery_index, query={"term": {"user": user}},
                sort=[{"created": "desc"}, {"id": "desc"}], from_=offset, size=size, track_total_hits=False,
            )["hits"]["hits"]
        return [_gallery_record(hit["_source"]) for hit in hits]

    def gallery_count(self, user: str) -> int:
        self.ensure_gallery_index()
        return self._gallery_user_count(user, refresh=self.refresh is False)

    def gallery_rename(self, user: str, record_id: str, name: str) -> bool:
        check_gallery_text("name", name, GALLERY_NAME_MAX)
        if self._gallery_source(user, record_id) is None:
            return False
        action = f"rename gallery record {record_id!r}"
        with self._errors(action):
            response = self._es.options(ignore_status=404).update(
                index=self.gallery_index, id=record_id, doc={"name": name}, refresh=self.refresh
            )
        if response.meta.status == 404:  # deleted since the read
            return False
        self._acknowledged(response, action, ("updated", "noop"))
        return True

    def gallery_delete(self, user: str, record_id: str) -> GalleryRecord | None:
        source = self._gallery_source(user, record_id)
        if source is None:
            return None
        if self._gallery_drop(record_id, refresh=self.refresh) != "deleted":
            return None  # deleted by another request meanwhile
        return _gallery_record(source)

    def close(self) -> None:
        if self._owns_client:
            self._base_client.close()


def _gallery_record(source: dict) -> GalleryRecord:
    return GalleryRecord(
        id=source["id"], user=source["user"], name=source["name"], original_sha256=source["original_sha256"],
        processed_sha256=source["processed_sha256"], created=float(source["created"]) / 1000.0,
        model=source.get("model", ""),
    )
