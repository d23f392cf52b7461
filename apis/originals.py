"""GET /images/{sha256}: a stored original, or with ?size= a preview of it, answered in the HTTP process.

Originals are content-addressed (the library keeps one file per SHA-256), so every answer is immutable.
"""

import io
import re
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image

from errors import InputError
from images.decode import decode_image
from store.blobs import SHA256

_SIDE = re.compile(r"^[0-9]{1,5}$")  # ASCII digits: str.isdigit() also takes "²", which int() refuses


def _media_type(path: Path) -> str:
    """From the file's header alone (stored originals passed the decoder's format check on /add)."""
    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format, "application/octet-stream")
    except Exception:
        return "application/octet-stream"


THUMBNAIL_SIDES = (16, 1024)  # ?size= bounds: a grid needs ~256 px, never the 12-megapixel original


def _thumbnail(path: Path, side: int, settings, headers: dict | None = None) -> Response:
    """The stored original reduced to `side` px at most (JPEG draft decoding), as JPEG, or PNG with alpha.
    `headers` default to immutable ones; a gallery record's image (apis/records.py) passes private ones."""
    headers = _IMMUTABLE if headers is None else headers
    image = decode_image(path.read_bytes(), settings.decode_limits, max_side=side).image
    out = io.BytesIO()
    if image.mode in ("RGBA", "LA", "PA"):
        image.save(out, format="PNG")
        return Response(out.getvalue(), media_type="image/png", headers=headers)
    image.convert("RGB").save(out, format="JPEG", quality=85)
    return Response(out.getvalue(), media_type="image/jpeg", headers=headers)


# content-addressed: the bytes behind an /images URL never change
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}


def thumbnail_side(size: str | None) -> int | None:
    """?size= as an int within THUMBNAIL_SIDES, None when absent; InputError 400 otherwise."""
    low, high = THUMBNAIL_SIDES
    if size is not None and not (_SIDE.fullmatch(size) and low <= int(size) <= high):
        raise InputError(400, f"size must be an integer from {low} to {high}")
    return None if size is None else int(size)


def add_original_routes(app: FastAPI, auth) -> None:
    def original(sha256: str, request: Request, size: str | None = None):
        if not SHA256.fullmatch(sha256):
            return JSONResponse({"detail": "not a SHA-256: expected 64 lowercase hex digits"}, status_code=400)
        low, high = THUMBNAIL_SIDES
        if size is not None and not (_SIDE.fullmatch(size) and low <= int(size) <= high):
            return JSONResponse({"detail": f"size must be an integer from {low} to {high}"}, status_code=400)
        path = request.app.state.library.get().blobs.path(sha256)
        if not path.is_file():
            return JSONResponse({"detail": f"no stored image with sha256 {sha256}"}, status_code=404)
        if size is not None:
            try:
                return _thumbnail(path, int(size), request.app.state.settings)
            except InputError as exc:  # stored before a limit was lowered, say
                return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        return FileResponse(path, media_type=_media_type(path), headers=_IMMUTABLE)

    app.add_api_route("/images/{sha256}", original, methods=["GET"], dependencies=[Depends(auth)])
