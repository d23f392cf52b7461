"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.schemathesis_photos): image fields get real photos.

The document says what an image field is: a file part or raw body of type image/* (or octet-stream), a URL
(`format: uri`) the server fetches, or base64 text (`format: byte`). Random bytes in those places are
rightly refused (415, 400), so a positive case could never succeed without a real image. Here every such
value is a real photo: its bytes, its base64, or its URL on the loopback photo server whose address the
test passes in PHOTO_SERVER (the server under test may fetch from 127.0.0.1).
"""

import base64
import io
import os

from hypothesis import strategies as st
from PIL import Image

import schemathesis
from tests import photos

NAMES = ("chelsea", "coffee", "rocket", "canon")  # PNG and JPEG, a camera JPEG with EXIF
SIDE = 160  # a copy this small keeps a case's model work short; the URLs serve the full-size originals


def _small(name: str) -> bytes:
    with Image.open(io.BytesIO(photos.read(name))) as image:
        image.thumbnail((SIDE, SIDE))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=90)
        return out.getvalue()


FILES = [_small(name) for name in NAMES]
files = st.sampled_from(FILES)
for media in ("image/jpeg", "image/png", "application/octet-stream"):  # raw bodies
    schemathesis.openapi.media_type(media, files)
schemathesis.openapi.format("binary", files)  # multipart file parts
schemathesis.openapi.format("byte", st.sampled_from([base64.b64encode(data).decode() for data in FILES]))
PHOTO_SERVER = os.environ.get("PHOTO_SERVER", "")
if PHOTO_SERVER:
    schemathesis.openapi.format("uri", st.sampled_from([f"{PHOTO_SERVER}/photo/{name}" for name in NAMES]))


@schemathesis.hook
def filter_body(context, body):
    """/analyze's operation_ids must differ within a request (the document says so; JSON Schema cannot)."""
    tasks = body.get("tasks", body.get("tasks_json")) if isinstance(body, dict) else None
    if not isinstance(tasks, list):
        return True
    ids = [task.get("operation_id") for task in tasks if isinstance(task, dict)]
    return len(ids) == len(set(map(repr, ids)))
