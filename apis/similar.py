"""POST /find_similar/: the indexed images most similar to a query image, by embedding.

Input: multipart `file` (or an `image_url` to fetch), optional form fields `model` (default mobilenet_v2;
one of SEARCH_MODELS, the embeddings /add computes) and `limit` (default 5, at most 100).
Answer: {"filename", "model", "similar_images": [{"filepath", "filename", "similarity", "sha256", "metadata",
"url"}], "total_indexed"}, best first; `similarity` is the cosine similarity (1.0 for the same picture),
higher is better. Errors are a 4xx with {"error": message, "detail": message}: "error" because this
route's existing clients read that key, "detail" because every other route uses it.
"""

from dataclasses import dataclass

from fastapi.responses import JSONResponse

from apis.handoff import Blob
from apis.request_body import Upload, image_bytes, integer_value, shown
from errors import InputError

SIMILAR_PATHS = ("/find_similar/", "/find_similar")
DEFAULT_MODEL = "mobilenet_v2"
DEFAULT_LIMIT = 5
MAX_LIMIT = 100


def similar_error(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": message}, status_code=status, headers=headers)


@dataclass(frozen=True)
class SimilarRequest:
    filename: str  # the upload's name, or the URL, echoed in the answer
    model: str
    limit: int
    image: Blob | None = None
    method = "find_similar"


def basename(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _limit(value) -> int:
    """An integer (JSON) or its ASCII digits (form text), from 1 to MAX_LIMIT."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_LIMIT
    limit = integer_value(value)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise InputError(422, f"limit must be an integer from 1 to {MAX_LIMIT}, not {shown(value)}")
    return limit


async def read_similar(fields: dict, settings):
    model = fields.get("model")
    if model is None or (isinstance(model, str) and not model.strip()):  # absent (JSON null, empty form field)
        model = DEFAULT_MODEL
    if not isinstance(model, str) or model not in settings.search_models:
        indexed = ", ".join(settings.search_models) or "none (SEARCH_MODELS=none)"
        raise InputError(422, f"model {shown(model)} is not indexed here; indexed models: {indexed}")
    limit = _limit(fields.get("limit"))
    given = [name for name in ("file", "image_url") if name in fields]
    if not given:
        raise InputError(400, "missing image: upload it as multipart field 'file', or send form field 'image_url'")
    if len(given) > 1:
        raise InputError(400, "send 'file' or 'image_url', not both")
    value = fields[given[0]]
    filename = value.filename if isinstance(value, Upload) else (value if given[0] == "image_url" else "")
    data = await image_bytes(fields, given[0], settings)
    return SimilarRequest(str(filename)[:1000], model, limit), {"image": data}
