"""Read an HTTP request body into plain, picklable fields, with clear 4xx errors.

Runs in the HTTP process (as a FastAPI dependency, before LitServe queues the request), so a body
that cannot be read never reaches a model worker. LitServe's own parsing answers 500 to an empty or
non-JSON body (LitServe issue #667); this does not.

`load_json` is the one parser of JSON a client sends (bodies, /analyze's tasks_json, /add's metadata):
Python's json answers a deep nesting with RecursionError and a 5,000-digit integer with ValueError, both
500s before this; here every such input is a 400 naming the limit.
"""

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from errors import InputError
from settings import truth
from images.fetch import fetch_url
from telemetry import metrics

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_RAW_TYPES = ("image/", "application/octet-stream")
MAX_FIELDS = 64  # fields of one form or JSON body
MAX_FILES = 16  # files of one multipart body
MAX_NUMBER_LENGTH = 100  # characters of one JSON number: any 64-bit integer or double fits many times over


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


async def read_fields(request: Request, raw_field: str, empty_ok: bool = False) -> dict:
    """Form, multipart or JSON object -> {name: str | Upload | JSON value}.

    A raw image body (Content-Type image/* or application/octet-stream) becomes the field `raw_field`. No body
    at all is a 400, or no fields when `empty_ok`.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in _FORM_TYPES:
        # a text field may hold a base64 image: allow it the upload limit, not Starlette's 1 MiB
        limit = request.app.state.settings.max_upload_bytes
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=limit)
        fields = {}
        for name, value in form.multi_items():
            if name in fields:
                raise InputError(422, f"field {shown(name)} is given more than once")
            if isinstance(value, UploadFile):
                value = Upload(value.filename or "", value.content_type or "", await value.read())
            fields[name] = value
        return fields
    body = await request.body()
    if content_type.startswith(_RAW_TYPES):
        return {raw_field: Upload("", content_type, body)}
    if not body.strip():
        if empty_ok:
            return {}
        raise InputError(
            400, f"the request body is empty: send multipart field '{raw_field}' or JSON {{\"{raw_field}\": ...}}"
        )
    fields = load_json(body, "the request body", request.app.state.settings.max_json_depth,
                       hint="; use multipart or a JSON object")
    if not isinstance(fields, dict):
        raise InputError(422, "the JSON body must be an object")
    if len(fields) > MAX_FIELDS:
        raise InputError(422, f"the JSON body has {len(fields)} fields; the limit is {MAX_FIELDS}")
    return fields


def load_json(text: str | bytes, what: str, max_depth: int, hint: str = ""):
    """Client JSON as Python values, or InputError(400) naming what is wrong and the limit it broke.

    Refused: a number longer than MAX_NUMBER_LENGTH characters or beyond a double's range, NaN and
    Infinity (not JSON), nesting deeper than `max_depth` (MAX_JSON_DEPTH), and a lone surrogate escape
    such as "\\ud800" (not Unicode text: it could be neither stored nor answered as UTF-8).
    """
    try:
        value = json.loads(text, parse_int=lambda s: _number(s, int, what),
                           parse_float=lambda s: _number(s, float, what),
                           parse_constant=lambda name: _not_a_number(name, what))
    except RecursionError:
        raise _too_deep(what, max_depth) from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise InputError(400, f"{what} is not valid JSON ({_short(str(exc))}){hint}") from None
    _check_tree(value, what, max_depth)
    return value


def _number(text: str, kind, what: str):
    if len(text) > MAX_NUMBER_LENGTH:
        raise InputError(400, f"{what} holds a number of {len(text)} characters; the limit is {MAX_NUMBER_LENGTH}")
    value = kind(text)
    if kind is float and not math.isfinite(value):
        raise InputError(400, f"{what} holds a number out of range ({text[:40]})")
    return value


def _not_a_number(name: str, what: str):
    raise InputError(400, f"{what} is not valid JSON ({name} is not a JSON number)")


def _too_deep(what: str, max_depth: int) -> InputError:
    return InputError(400, f"{what} is nested deeper than {max_depth} levels (MAX_JSON_DEPTH)")


def _check_tree(value, what: str, max_depth: int) -> None:
    """Depth and text of every node, without recursion (a deep tree must not overflow this check either)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node, what)
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            raise _too_deep(what, max_depth)
        if isinstance(node, dict):
            for key in node:
                _check_text(key, what)
            node = node.values()
        stack.extend((child, depth + 1) for child in node if isinstance(child, (str, dict, list)))


def _check_text(text: str, what: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(400, f"{what} holds a lone surrogate (\\ud800-\\udfff): not Unicode text") from None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


_INTEGER_TEXT = re.compile(r"^([+-]?)0*([0-9]{1,20})$")


def integer_value(value, signs: str = "") -> int | None:
    """A field as an integer, or None: a JSON integer, a JSON number without a fraction (JSON Schema's integer
    takes 62.0, so the document does too), or form text of ASCII digits (int() alone would also take "1_0" and
    other scripts' digits) with spaces around, leading zeros, at most 20 digits after them, and a sign only
    among `signs` (rembg's options take "+5", as int() does there)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 10**20 else None
    if isinstance(value, int):
        return value
    match = _INTEGER_TEXT.match(value.strip()) if isinstance(value, str) else None
    if match and (not match[1] or match[1] in signs):
        return int(match[1] + match[2])
    return None


def shown(value) -> str:
    """A client's value for an error message: short text quoted, any other kind by its type alone."""
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:40]
    return "a file" if isinstance(value, Upload) else f"a JSON {_JSON_KINDS.get(type(value), type(value).__name__)}"


def yes_no(value, what: str, status: int, blank: bool | None = None) -> bool:
    """A client's true or false: a JSON boolean, or text among settings' TRUE_WORDS and FALSE_WORDS. `blank`
    answers an empty form field (None: it is refused like any other word)."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):  # JSON 0 and 1, as the words "0" and "1" in a form
        return bool(value)
    if isinstance(value, str):
        if blank is not None and not value.strip():
            return blank
        if truth(value) is not None:
            return truth(value)
    raise InputError(status, f"{what} must be true or false, not {shown(value)}")


_JSON_KINDS = {dict: "object", list: "array"}


async def image_bytes(fields: dict, name: str, settings) -> bytes:
    """The image in field `name`: an uploaded file, an http(s) URL to fetch, or base64 (or data: URL) text."""
    if name not in fields:
        given = ", ".join(sorted(name[:40] for name in fields)) or "none"
        raise InputError(
            422, f"missing field '{name}' (fields given: {given}): upload the image as multipart field '{name}', "
            f"or send JSON {{\"{name}\": \"<http(s) URL or base64 image>\"}}"
        )
    value = fields[name]
    if isinstance(value, Upload):
        if not value.data:
            raise InputError(400, f"the uploaded file in '{name}' is empty (0 bytes)")
        return value.data
    if not isinstance(value, str):
        raise InputError(422, f"field '{name}' must be a file, an http(s) URL or base64 text, not {shown(value)}")
    text = value.strip()
    if not text:
        raise InputError(400, f"field '{name}' is empty")
    if _SCHEME.match(text):
        return await fetch_url(text, settings.fetch_policy)
    return decode_base64(text, name, settings.max_upload_bytes)


def decode_base64(text: str, name: str, max_bytes: int) -> bytes:
    text = _DATA_URL.sub("", text, count=1)
    if len(text) * 3 // 4 > max_bytes:
        metrics.rejected("too_large")
        raise InputError(413, f"the base64 image in '{name}' is larger than {max_bytes} bytes (MAX_UPLOAD_BYTES)")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(422, f"field '{name}' is neither an http(s) URL nor valid base64 image data") from None
    if not data:
        raise InputError(400, f"field '{name}' holds no image data")
    return data


def as_http_error(exc: InputError) -> HTTPException:
    return HTTPException(status_code=exc.status, detail=exc.detail)
