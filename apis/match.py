"""The near-duplicate routes: fields, paths and answers that their existing clients already parse.

Every answer is the near-duplicate routes' envelope {"status": "ok" | "fail", "error": [...], "method": name,
"result": [...]}, as application/json, with a 4xx status for bad input (what changed for those clients, and
why, is in docs/api.md, "Compatibility"). Fields are form fields (urlencoded or multipart); a JSON object
works too.

    POST /add       url | image, filepath (required), metadata (JSON object text)   -> []
    POST /search    url | image, all_orientations (default true)                  -> [{score, filepath, metadata, url}]
    POST /compare   url1 | image1, url2 | image2                                  -> [{score}]
    DELETE /delete  filepath (form or query)                                      -> []
    GET|POST /count, /list (offset, limit), /ping, /get (filepath)                -> see apis/search_routes.py

This module reads the image-taking requests (in the HTTP process) and writes the envelopes; the work
runs in apis/search.py's workers.
"""

import json
import re
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from apis.handoff import Blob
from apis.request_body import image_bytes, integer_value, load_json, shown, yes_no
from errors import InputError

# path -> the envelope's "method"; every near-duplicate path answers errors in the envelope too
MATCH_METHODS = {"/add": "add", "/delete": "delete", "/search": "search", "/compare": "compare",
                 "/count": "count", "/list": "list", "/ping": "ping", "/get": "get"}
MAX_FILEPATH = 4096  # characters; the filepath is the caller's name for the image, not a file we open
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 1000
MAX_OFFSET = 2**62  # beyond any index, inside SQLite's 64-bit integers
# a character outside JSON Schema's (ECMAScript's) \s: the document's `\S` pattern, so both agree on blank
_NOT_BLANK = re.compile("[^\t\n\v\f\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]")


def envelope(method: str, result: list, status: int = 200, errors: list | None = None, headers=None) -> JSONResponse:
    body = {"status": "fail" if errors else "ok", "error": errors or [], "method": method, "result": result}
    return JSONResponse(body, status_code=status, headers=headers)


def fail(method: str, status: int, message: str, headers=None) -> JSONResponse:
    return envelope(method, [], status, [message], headers)


def image_url(sha256: str) -> str:
    """Where the server serves a stored original (GET /images/{sha256})."""
    return f"/images/{sha256}"


@dataclass(frozen=True)
class AddRequest:
    filepath: str
    metadata: dict
    image: Blob | None = None
    method = "add"


@dataclass(frozen=True)
class SearchRequest:
    all_orientations: bool
    image: Blob | None = None
    method = "search"


@dataclass(frozen=True)
class CompareRequest:
    image1: Blob | None = None
    image2: Blob | None = None
    method = "compare"


# ---------------------------------------------------------------- reading fields (HTTP process)


async def one_image(fields: dict, url_field: str, file_field: str, settings) -> bytes:
    """The image in the `url` (fetched) or `image` (a file, or base64 text) field: exactly one of them."""
    given = [name for name in (url_field, file_field) if name in fields]
    if not given:
        raise InputError(400, f"missing image: send form field '{url_field}' (an http(s) URL) or file '{file_field}'")
    if len(given) > 1:
        raise InputError(400, f"send '{url_field}' or '{file_field}', not both")
    return await image_bytes(fields, given[0], settings)


def text_field(fields: dict, name: str, required: bool = False) -> str | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise InputError(400, f"missing field '{name}'")
        return None
    if not isinstance(value, str):
        raise InputError(400, f"field '{name}' must be text, not {shown(value)}")
    return value


def flag(fields: dict, name: str, default: bool) -> bool:
    value = fields.get(name)
    return default if value is None else yes_no(value, f"field '{name}'", 400)


def integer(fields: dict, name: str, default: int) -> int:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    number = integer_value(value, signs="+-")
    if number is None or abs(number) >= 10**20:  # a JSON integer gets form text's bound of 20 digits
        raise InputError(400, f"field '{name}' must be an integer of at most 20 digits, not {shown(value)}")
    return number


def filepath_field(fields: dict) -> str:
    path = text_field(fields, "filepath", required=True)
    if not _NOT_BLANK.search(path):
        raise InputError(400, "field 'filepath' is empty")
    if len(path) > MAX_FILEPATH:
        raise InputError(400, f"field 'filepath' is {len(path)} characters; the limit is {MAX_FILEPATH}")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(400, "field 'filepath' is not valid UTF-8 text") from None
    return path


def metadata_field(fields: dict, max_depth: int) -> dict:
    """The `metadata` field: a JSON object, as form text or (in a JSON body) as an object, at most max_depth deep."""
    raw = fields.get("metadata")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, str):
        raw = load_json(raw, "field 'metadata'", max_depth)
    if not isinstance(raw, dict):
        raise InputError(400, f"field 'metadata' must be a JSON object, not {shown(raw)}")
    try:  # what the stores will write: strict JSON (no NaN), valid UTF-8 (no lone surrogates)
        json.dumps(raw, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        raise InputError(400, f"field 'metadata' cannot be stored: {exc}") from None
    return raw


async def read_add(fields: dict, settings):
    request = AddRequest(filepath_field(fields), metadata_field(fields, settings.max_json_depth))
    return request, {"image": await one_image(fields, "url", "image", settings)}


async def read_search(fields: dict, settings):
    request = SearchRequest(flag(fields, "all_orientations", True))
    return request, {"image": await one_image(fields, "url", "image", settings)}


async def read_compare(fields: dict, settings):
    first = await one_image(fields, "url1", "image1", settings)
    return CompareRequest(), {"image1": first, "image2": await one_image(fields, "url2", "image2", settings)}


def list_window(fields: dict) -> tuple[int, int]:
    """/list's offset and limit, clamped: offset >= 0, 0 <= limit <= LIST_LIMIT_MAX."""
    offset = min(max(0, integer(fields, "offset", 0)), MAX_OFFSET)
    limit = min(max(0, integer(fields, "limit", LIST_LIMIT_DEFAULT)), LIST_LIMIT_MAX)
    return offset, limit
