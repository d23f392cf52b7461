"""Read an HTTP request body into plain, picklable fields, with clear 4xx errors.

Runs in the HTTP process (as a FastAPI dependency, before LitServe queues the request), so a body
that cannot be read never reaches a model worker. LitServe's own parsing answers 500 to an empty or
non-JSON body (LitServe issue #667); this does not.
"""

import base64
import binascii
import json
import re
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from errors import InputError
from images.fetch import fetch_url

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_RAW_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


async def read_fields(request: Request, raw_field: str) -> dict:
    """Form, multipart or JSON object -> {name: str | Upload | JSON value}.

    A raw image body (Content-Type image/* or application/octet-stream) becomes the field `raw_field`.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in _FORM_TYPES:
        # a text field may hold a base64 image: allow it the upload limit, not Starlette's 1 MiB
        limit = request.app.state.settings.max_upload_bytes
        form = await request.form(max_files=16, max_fields=64, max_part_size=limit)
        fields = {}
        for name, value in form.multi_items():
            if name in fields:
                raise InputError(422, f"field '{name}' is given more than once")
            if isinstance(value, UploadFile):
                value = Upload(value.filename or "", value.content_type or "", await value.read())
            fields[name] = value
        return fields
    body = await request.body()
    if content_type.startswith(_RAW_TYPES):
        return {raw_field: Upload("", content_type, body)}
    if not body.strip():
        raise InputError(
            400, f"the request body is empty: send multipart field '{raw_field}' or JSON {{\"{raw_field}\": ...}}"
        )
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(400, f"the request body is not valid JSON ({exc}); use multipart or a JSON object") from None
    if not isinstance(fields, dict):
        raise InputError(422, "the JSON body must be an object")
    return fields


async def image_bytes(fields: dict, name: str, settings) -> bytes:
    """The image in field `name`: an uploaded file, an http(s) URL to fetch, or base64 (or data: URL) text."""
    if name not in fields:
        given = ", ".join(sorted(fields)) or "none"
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
        raise InputError(422, f"field '{name}' must be a file, an http(s) URL or base64 text, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise InputError(400, f"field '{name}' is empty")
    if _SCHEME.match(text):
        return await fetch_url(text, settings.fetch_policy)
    return decode_base64(text, name, settings.max_upload_bytes)


def decode_base64(text: str, name: str, max_bytes: int) -> bytes:
    text = _DATA_URL.sub("", text, count=1)
    if len(text) * 3 // 4 > max_bytes:
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
