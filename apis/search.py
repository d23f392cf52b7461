"""The search capability's model workers: /add, /search, /compare (near-duplicate) and /find_similar/.

One LitAPI serves the four paths (apis/search_routes.py registers its route under each), so one pool of
workers holds the embedding models once, and a batch mixes them: an /add and a /find_similar/ that arrive
together share one forward of MobileNetV2. Per batch: each image is decoded (decode_request), every
embedding model runs once over all the images that need it, then each request does its own signature and
store work in a thread (an Elasticsearch add waits for its refresh; threads let a batch's adds share it).

Requests reach the workers as the dataclasses of apis/match.py and apis/similar.py, their images as
hand-off blobs; errors travel as values (apis/base.py) and become the near-duplicate routes' envelope or
the /find_similar/ error shape {"error", "detail"}.
"""

import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from apis.base import ImageAPI, ServerFault, log
from apis.handoff import ReadBlob
from apis.match import AddRequest, CompareRequest, SearchRequest, envelope, fail, image_url, read_add, read_compare
from apis.match import read_search
from apis.request_body import as_http_error, read_fields
from apis.similar import SimilarRequest, basename, read_similar, similar_error
from errors import InputError
from store.base import Record, StoreError

# path -> (field a raw image body stands for, reader of the fields)
READERS = {
    "/add": ("image", read_add),
    "/search": ("image", read_search),
    "/compare": ("image1", read_compare),
    "/find_similar/": ("file", read_similar),
    "/find_similar": ("file", read_similar),
}
SEARCH_PATHS = tuple(READERS)
SearchOp = AddRequest | SearchRequest | CompareRequest | SimilarRequest
CANDIDATES = 100  # signature candidates read per orientation: the depth /search's existing clients got


async def read_search_request(request: Request):
    """FastAPI dependency: the request as a dataclass whose images wait in the hand-off folder."""
    raw_field, reader = READERS[request.scope["route"].path]
    try:
        fields = await read_fields(request, raw_field=raw_field)
        parsed, images = await reader(fields, request.app.state.settings)
    except InputError as exc:
        raise as_http_error(exc) from None
    handoff = request.app.state.handoff
    with ExitStack() as held:
        blobs = {name: held.enter_context(handoff.hold(data)) for name, data in images.items()}
        yield replace(parsed, **blobs)


@dataclass
class _Job:
    request: object
    images: list  # upright PIL images
    data: bytes | None = None  # the original bytes, for /add
    vectors: dict | None = None  # model -> embedding


class SearchAPI(ImageAPI):
    def __init__(self, settings):
        super().__init__(
            settings, api_path="/add",
            max_batch_size=settings.search_max_batch_size, batch_timeout=settings.search_batch_timeout,
        )

    def setup(self, device):
        from models.catalogue import load_models
        from store.open import open_library

        self.library = open_library(self.settings)  # no network: Elasticsearch connects on first use
        self.models, self.unavailable = load_models(self.settings.search_models, self.settings, device)
        self.threads = ThreadPoolExecutor(max_workers=self.max_batch_size, thread_name_prefix="search")

    # ---------------------------------------------------------------- per request, in the worker

    def decode_request(self, request: Annotated[SearchOp, Depends(read_search_request)], context):
        context["method"] = request.method  # encode_response answers in this method's format
        needed = self._models_needed(request)
        missing = [m for m in needed if m not in self.models]
        if missing:
            reasons = "; ".join(f"{m}: {self.unavailable.get(m, 'not loaded')}" for m in missing)
            return InputError(503, f"embedding model unavailable here ({reasons})")
        if isinstance(request, AddRequest):
            try:
                data = request.image.read()
            except InputError as exc:
                return exc
            decoded = self.decode(ReadBlob(data))
            return decoded if isinstance(decoded, InputError) else _Job(request, [decoded.image], data)
        blobs = [request.image1, request.image2] if isinstance(request, CompareRequest) else [request.image]
        images = []
        for blob in blobs:
            decoded = self.decode(blob)
            if isinstance(decoded, InputError):
                return decoded
            images.append(decoded.image)
        return _Job(request, images)

    def _models_needed(self, request) -> tuple[str, ...]:
        if isinstance(request, AddRequest):
            return self.settings.search_models
        if isinstance(request, SimilarRequest):
            return (request.model,)
        return ()

    def infer(self, x):
        items = self.as_batch(x)
        self._embed(items)
        jobs = [(i, item) for i, item in enumerate(items) if isinstance(item, _Job)]
        outputs = list(items)
        if len(jobs) == 1:  # the common idle-server case: no thread hop
            outputs[jobs[0][0]] = self.for_request(jobs[0][0], self._run, jobs[0][1])
        else:
            for (i, _), result in zip(jobs, self.threads.map(lambda pair: self.for_request(pair[0], self._run, pair[1]),
                                                             jobs)):
                outputs[i] = result
        return self.from_batch(outputs)

    def _embed(self, items: list) -> None:
        """Each model once over every image in the batch that needs it; a failure fails only those jobs."""
        from models.catalogue import run_grouped

        groups = {name: [item for item in items if isinstance(item, _Job) and name in self._models_needed(item.request)]
                  for name in self.models}
        images = {name: [job.images[0].convert("RGB") for job in group] for name, group in groups.items()}
        for name, vectors in run_grouped(self.models, images, lambda name, exc: ServerFault(repr(exc))).items():
            for job, vector in zip(groups[name], vectors):
                if job.vectors is None:
                    job.vectors = {}
                job.vectors[name] = vector

    def _run(self, job: _Job):
        """One request's signature and store work; every failure becomes this request's answer."""
        from signatures import goldberg as sig  # image_match and scikit-image: worker processes only

        try:
            failed = [v for v in (job.vectors or {}).values() if isinstance(v, Exception)]
            if failed:
                return failed[0]
            request = job.request
            if isinstance(request, AddRequest):
                return self._add(request, job)
            if isinstance(request, SearchRequest):
                return self._search(request, job.images[0])
            if isinstance(request, CompareRequest):
                d = sig.distance(sig.signature(job.images[0]), sig.signature(job.images[1]))
                return [{"score": sig.score(d)}]
            return self._similar(request, job.vectors[request.model])
        except (InputError, StoreError) as exc:
            return exc.with_traceback(None)  # its frames hold the job's pixels
        except Exception as exc:  # one request's bug must not fail its batch or the worker
            log.exception("search: %s failed", type(job.request).__name__)
            return ServerFault(repr(exc))

    def _add(self, request: AddRequest, job: _Job) -> list:
        from signatures import goldberg as sig

        signature = sig.signature(job.images[0])
        sha256 = hashlib.sha256(job.data).hexdigest()
        record = Record(
            path=request.filepath, sha256=sha256, signature=signature, words=sig.words(signature),
            metadata={**request.metadata, "sha256": sha256}, embeddings=dict(job.vectors or {}),
        )
        self.library.add(record, job.data)
        return []

    def _search(self, request: SearchRequest, image) -> list:
        from signatures import goldberg as sig

        found = sig.search(self.library.store, image, request.all_orientations, limit=CANDIDATES)
        return [{"score": sig.score(d), "filepath": record.path, "metadata": record.metadata,
                 "url": image_url(record.sha256)} for record, d in found]

    def _similar(self, request: SimilarRequest, vector) -> dict:
        store = self.library.store
        neighbours = store.nearest(request.model, vector, k=request.limit)
        return {
            "filename": request.filename,
            "model": request.model,
            "similar_images": [
                {"filepath": n.path, "filename": basename(n.path), "similarity": n.similarity, "sha256": n.sha256,
                 "metadata": n.metadata, "url": image_url(n.sha256)}
                for n in neighbours
            ],
            "total_indexed": store.count(),
        }

    # ---------------------------------------------------------------- answers

    def encode_response(self, output, context):
        method = context.get("method", "")
        if method == SimilarRequest.method:
            return JSONResponse(output) if isinstance(output, dict) else similar_error(*_status(output))
        return envelope(method, output) if isinstance(output, list) else fail(method, *_status(output))


def _status(error: Exception) -> tuple[int, str]:
    if isinstance(error, InputError):
        return error.status, error.detail
    if isinstance(error, StoreError):  # the index is down or failing: retry later, nothing was half-done
        return 503, str(error)
    return 500, "internal error while processing this request"
