"""Background removal: POST /remove-background, rembg's /api/remove, and the creates of the gallery records.

One LitAPI serves every path that needs a segmenter (apis/records.py registers its route again under the
others, as apis/search_routes.py does for search), so one pool of workers holds the segmenters once and a
batch mixes them: a POST /records and a /remove-background that ask for the same model share one forward.

- `POST /remove-background`: multipart `file` (or `image`), or JSON `image_url` / `image_base64`; options
  `model`, `alpha_matting` with `alpha_matting_foreground_threshold`, `alpha_matting_background_threshold`
  and `alpha_matting_erode_size`, `only_mask`, `post_process_mask`, `decontaminate`, `bgcolor` ("r,g,b,a"),
  `crop`, `format` (png | webp). PNG with alpha by default; JSON with base64 when the client sends
  `Accept: application/json` (or `format=json`).
- `POST /api/remove` (multipart `file`, options as form fields, `bgc` and `extras` in the query) and
  `GET /api/remove?url=...` (every option in the query): rembg's server's parameter names `model`, `a`,
  `af`, `ab`, `ae`, `om`, `ppm`, `dc`, `vm`, `bgc`, `extras`; image/png like its server. A missing `model`
  is BACKGROUND_MODEL (rembg's own default is a model we do not ship); `vm` (ViTMatte) is refused 422, not
  ignored; the URL goes through our SSRF-safe fetcher.
- `POST /records` and the seed form's `POST /` (apis/records.py has the rest): processed here, then the
  original and the processed PNG are written and the gallery record added by the library, under the
  blobs' locks, against USER_LIMIT (store/library.py gallery_add).

Per batch: each image is decoded within the limits (decode_request), every model runs once over the
images that asked for it (one Removal per image), and the answer is encoded (PNG / WebP) in the worker.
Errors travel as values (apis/base.py) and are answered {"detail"}; the seed form gets its 302 with the
seed's message instead.
"""

import base64
import io
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response

from apis.base import ImageAPI, ServerFault, error_response
from apis.handoff import Blob, ReadBlob
from apis.request_body import (_SCHEME, Upload, as_http_error, image_bytes, integer_value, load_json, read_fields,
                               shown, yes_no)
from errors import InputError
from store.base import GALLERY_NAME_MAX, GalleryFull, StoreError

log = logging.getLogger("imageserver")

API_PATH = "/remove-background"
REMBG_PATH = "/api/remove"
RECORDS_PATH = "/records"
SEED_PATH = "/"
# every path whose POST feeds this LitAPI's queue (GET /api/remove too: it is not gated, it reads no body)
BACKGROUND_PATHS = (API_PATH, REMBG_PATH, RECORDS_PATH, SEED_PATH)
FORMATS = {"png": "image/png", "webp": "image/webp"}
# alpha matting's erode structure size (rembg bounds it below only). Its cost grows with it: u2netp on a 451x300
# photo took 1.7 s / 627 MiB at 10, 4.7 s / 738 MiB at 60, and 77 s / 20 GiB at 226, which the kernel's OOM
# killer ended by killing the worker (found by schemathesis). rembg's default is 10.
MAX_ERODE = 40
# the seed's flash messages, word for word
SEED_SUCCESS = "Image generated successfully"
SEED_LIMIT = "Max limit reached. Please remove a record."
SEED_FAILED = "Failed to generate the image"
SEED_BROKEN = "Something went wrong"
MESSAGE_COOKIE = "imageserver-message"


@dataclass(frozen=True)
class RemovalRequest:
    kind: str  # "remove" | "rembg" | "record" | "seed": what the answer looks like
    image: Blob | None
    model: str
    options: dict  # models.background.Removal's fields
    output: str = "png"  # png | webp
    as_json: bool = False
    user: str | None = None  # records: the owner, from the signed cookie
    name: str | None = None
    error: InputError | None = None  # the seed form's reading error, answered with its redirect


def check_background_settings(settings) -> None:
    """Start-up: the default model must be one the workers load, or every request without `model` is a 503."""
    from settings import SettingsError

    if settings.background_model not in settings.background_models:
        raise SettingsError(f"BACKGROUND_MODEL={settings.background_model!r}: not among BACKGROUND_MODELS "
                            f"({','.join(settings.background_models)}), the models the workers load")


# ---------------------------------------------------------------- reading options, in the HTTP process

def _flag(fields: dict, name: str) -> bool:
    value = fields.get(name)
    return False if value is None else yes_no(value, name, 422)


def _number(fields: dict, name: str, default: int, low: int, high: int) -> int:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    number = integer_value(value, signs="+")
    if number is None:
        raise InputError(422, f"{name} must be an integer from {low} to {high}, not {shown(value)}")
    if not low <= number <= high:
        raise InputError(422, f"{name} must be an integer from {low} to {high}, not {number}")
    return number


def _bgcolor(value, name: str) -> tuple[int, int, int, int] | None:
    """"r,g,b,a" (or "r,g,b": opaque), or a JSON list of 3 or 4 integers 0-255."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, list):
        parts = value
    else:
        parts = None
    channels = [integer_value(p) for p in parts or ()]
    if len(channels) not in (3, 4) or any(c is None or not 0 <= c <= 255 for c in channels):
        raise InputError(422, f"{name} must be an RGBA colour such as \"255,255,255,255\" (3 or 4 integers "
                              f"0-255), not {shown(value)}")
    return tuple(channels) + ((255,) if len(channels) == 3 else ())


def model_choice(fields: dict, name: str, settings) -> str:
    """The segmenter asked for (BACKGROUND_MODEL when none is): one of BACKGROUND_MODELS, the ones the workers
    load, else 422 (a catalogue segmenter this server does not load is the client's choice to change)."""
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return settings.background_model
    choices = settings.background_models
    if not isinstance(value, str) or value.strip() not in choices:
        raise InputError(422, f"{name} {shown(value)} is not a background-removal model served here; one of "
                              f"{', '.join(choices)} (BACKGROUND_MODELS)")
    return value.strip()


def removal_options(fields: dict) -> dict:
    """/remove-background's and /records's option names -> Removal's fields."""
    return {
        "alpha_matting": _flag(fields, "alpha_matting"),
        "foreground_threshold": _number(fields, "alpha_matting_foreground_threshold", 240, 0, 255),
        "background_threshold": _number(fields, "alpha_matting_background_threshold", 10, 0, 255),
        "erode_size": _number(fields, "alpha_matting_erode_size", 10, 0, MAX_ERODE),
        "only_mask": _flag(fields, "only_mask"),
        "post_process_mask": _flag(fields, "post_process_mask"),
        "decontaminate": _flag(fields, "decontaminate"),
        "bgcolor": _bgcolor(fields.get("bgcolor"), "bgcolor"),
        "crop": _flag(fields, "crop"),
    }


def rembg_options(fields: dict) -> dict:
    """rembg's server's parameter names -> Removal's fields; `vm` and `extras` we cannot honour are refused."""
    if _flag(fields, "vm"):
        raise InputError(422, "vm (edge refinement with ViTMatte) is not available on this server: it has no "
                              "ViTMatte model; send vm=false")
    extras = fields.get("extras")
    if isinstance(extras, str) and extras.strip():
        parsed = load_json(extras, "extras", 8)
        if not isinstance(parsed, dict):
            raise InputError(422, "extras must be a JSON object")
        if parsed:
            raise InputError(422, f"extras {', '.join(sorted(map(str, parsed)))[:200]} not supported here: "
                                  "session and model parameters are the server's (BACKGROUND_MODELS)")
    return {
        "alpha_matting": _flag(fields, "a"),
        "foreground_threshold": _number(fields, "af", 240, 0, 255),
        "background_threshold": _number(fields, "ab", 10, 0, 255),
        "erode_size": _number(fields, "ae", 10, 0, MAX_ERODE),
        "only_mask": _flag(fields, "om"),
        "post_process_mask": _flag(fields, "ppm"),
        "decontaminate": _flag(fields, "dc"),
        "bgcolor": _bgcolor(fields.get("bgc"), "bgc"),
        "crop": False,
    }


def _image_field(fields: dict, names: tuple[str, ...]) -> str:
    """The one image field sent (the first name when none is, for its message)."""
    given = [n for n in names if n in fields]
    if len(given) > 1:
        raise InputError(422, f"send one image, not {' and '.join(given)}")
    return given[0] if given else names[0]


def _output(fields: dict, request: Request) -> tuple[str, bool]:
    value = fields.get("format")
    text = value.strip().lower() if isinstance(value, str) else value
    if text in (None, ""):
        text = "png"
    if text not in (*FORMATS, "json"):
        raise InputError(422, f"format {shown(value)} is not one of png, webp, json")
    accept = request.headers.get("accept", "").lower()
    as_json = text == "json" or ("application/json" in accept and "image/" not in accept)
    return ("png" if text == "json" else text), as_json


def record_name(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(422, f"name must be non-empty text, not {shown(value)}")
    if len(value) > GALLERY_NAME_MAX:
        raise InputError(422, f"name has {len(value)} characters; at most {GALLERY_NAME_MAX}")
    return value


async def _checked(dependency, request: Request):
    result = dependency(request)
    if hasattr(result, "__await__"):
        result = await result
    return result


async def read_removal_request(request: Request):
    """FastAPI dependency for every path of this LitAPI: the request, its image waiting in the hand-off folder."""
    from apis.identity import current_user, same_site_only

    settings = request.app.state.settings
    path, method = request.scope["route"].path, request.method
    try:
        if path == SEED_PATH:
            await _checked(same_site_only, request)  # a 403: another site's form is refused, not redirected
            # a body that cannot be read as one form (a field given twice, not a form) is a 4xx as on every
            # route: no browser sends one; the seed's redirect answers what its form can send
            fields = await read_fields(request, raw_field="image", empty_ok=True)  # a form of nothing: its message
            try:
                name = record_name(fields.get("name"))
                data = await image_bytes(fields, "image", settings)
                parsed = RemovalRequest("seed", None, settings.background_model, removal_options({}),
                                        user=current_user(request), name=name)
            except InputError as exc:  # the seed answered every failure with its redirect and a message
                yield RemovalRequest("seed", None, settings.background_model, {}, error=exc.with_traceback(None))
                return
        elif path == RECORDS_PATH:
            await _checked(same_site_only, request)
            fields = await read_fields(request, raw_field="image")
            name = record_name(fields.get("name"))
            parsed = RemovalRequest("record", None, model_choice(fields, "model", settings), removal_options(fields),
                                    user=current_user(request), name=name)
            data = await image_bytes(fields, _image_field(fields, ("image", "file")), settings)
        elif path == REMBG_PATH and method == "GET":
            fields = dict(request.query_params)
            url = fields.get("url")
            if not url or not _SCHEME.match(url.strip()):
                raise InputError(422, "url must be an http(s) URL of the image (GET /api/remove?url=...)")
            parsed = RemovalRequest("rembg", None, model_choice(fields, "model", settings), rembg_options(fields))
            data = await image_bytes({"url": url}, "url", settings)
        elif path == REMBG_PATH:
            fields = await read_fields(request, raw_field="file")
            for name in ("bgc", "extras"):  # rembg reads these two from the query string
                if name in request.query_params:
                    fields[name] = request.query_params[name]
            parsed = RemovalRequest("rembg", None, model_choice(fields, "model", settings), rembg_options(fields))
            if not isinstance(fields.get("file"), Upload):
                raise InputError(422, "missing multipart file field 'file' (rembg's POST /api/remove)")
            data = await image_bytes(fields, "file", settings)
        else:
            fields = await read_fields(request, raw_field="file")
            output, as_json = _output(fields, request)
            parsed = RemovalRequest("remove", None, model_choice(fields, "model", settings), removal_options(fields),
                                    output=output, as_json=as_json)
            image_name = _image_field(fields, ("file", "image", "image_url", "image_base64"))
            data = await image_bytes(fields, image_name, settings)
    except InputError as exc:
        raise as_http_error(exc) from None
    with request.app.state.handoff.hold(data) as blob:
        yield RemovalRequest(**{**parsed.__dict__, "image": blob})


# ---------------------------------------------------------------- the workers

@dataclass
class _Job:
    request: RemovalRequest
    image: object  # upright PIL image
    data: bytes | None = None  # the original bytes, for a record
    result: object = field(default=None)


def record_json(record) -> dict:
    created = datetime.fromtimestamp(record.created, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return {"id": record.id, "name": record.name, "created_on": created, "model": record.model,
            "original_url": f"/records/{record.id}/original", "processed_url": f"/records/{record.id}/processed"}


def encode_image(image, output: str) -> bytes:
    out = io.BytesIO()
    if output == "webp":
        image.save(out, format="WEBP", quality=90, method=4)
    else:
        image.save(out, format="PNG")
    return out.getvalue()


class BackgroundAPI(ImageAPI):
    def __init__(self, settings):
        super().__init__(
            settings, api_path=API_PATH,
            max_batch_size=settings.background_max_batch_size, batch_timeout=settings.background_batch_timeout,
        )

    def setup(self, device):
        from models.catalogue import load_models
        from store.open import open_library

        self.library = open_library(self.settings)
        try:  # the blobs of creates a killed worker left half-done (written, no record) are released
            released = self.library.release_interrupted()
            if released:
                log.warning("background: released the blobs of %d record creates interrupted by a crash", released)
        except Exception:
            log.exception("background: could not release the blobs of interrupted creates")
        self.models, self.unavailable = load_models(self.settings.background_models, self.settings, device)

    def decode_request(self, request: Annotated[RemovalRequest, Depends(read_removal_request)], context):
        context["kind"], context["output"], context["as_json"] = request.kind, request.output, request.as_json
        if request.error is not None:
            return request.error
        if request.model not in self.models:
            reason = self.unavailable.get(
                request.model, f"not loaded here (BACKGROUND_MODELS={','.join(self.settings.background_models)})")
            return InputError(503, f"background model {request.model!r} unavailable: {reason}")
        try:
            data = request.image.read()
        except InputError as exc:
            return exc
        decoded = self.decode(ReadBlob(data))
        if isinstance(decoded, InputError):
            return decoded
        return _Job(request, decoded.image, data if request.kind in ("record", "seed") else None)

    def infer(self, x):
        from models.background import Removal
        from models.catalogue import run_grouped

        items = self.as_batch(x)
        jobs = [item for item in items if isinstance(item, _Job)]
        groups = {name: [job for job in jobs if job.request.model == name] for name in self.models}
        for name, group in groups.items():
            if not group:
                continue
            removals = [Removal(**job.request.options) for job in group]
            outputs = run_grouped({name: self.models[name]}, {name: [job.image for job in group]},
                                  lambda name, exc: ServerFault(repr(exc)), removals=removals)[name]
            for job, output in zip(group, outputs):
                job.result = output
        return self.from_batch(self.run_each(items, self._finish))

    def _finish(self, job: _Job):
        """The answer's bytes, or the stored record; every failure is this request's own."""
        if isinstance(job.result, Exception):
            return job.result
        image, request = job.result, job.request
        encoded = encode_image(image, request.output)
        if request.kind not in ("record", "seed"):
            return {"data": encoded, "model": request.model, "width": image.width, "height": image.height}
        try:
            record = self.library.gallery_add(request.user, request.name, job.data, encoded,
                                              self.settings.user_limit, request.model)
        except GalleryFull:
            return InputError(409, f"this user already has {self.settings.user_limit} records, the limit "
                                   f"(USER_LIMIT={self.settings.user_limit}); delete one to add another")
        except StoreError as exc:
            return exc.with_traceback(None)
        except ValueError as exc:  # a name the store refuses
            return InputError(422, str(exc))
        return {"record": record_json(record)}

    def encode_response(self, output, context):
        kind = context.get("kind")
        if kind == "seed":
            return seed_redirect(output)
        if isinstance(output, StoreError):
            return JSONResponse({"detail": str(output)}, status_code=503)
        if not isinstance(output, dict):
            return error_response(output)
        if kind == "record":
            return JSONResponse(output["record"])
        output_format = context.get("output", "png")
        if kind == "remove" and context.get("as_json"):
            return JSONResponse({"model": output["model"], "format": output_format, "width": output["width"],
                                 "height": output["height"], "image_base64": base64.b64encode(output["data"]).decode()})
        return Response(output["data"], media_type=FORMATS[output_format if kind == "remove" else "png"])


def seed_redirect(output) -> Response:
    """The seed form's answer: 302 to / with its flash message (header X-Message and a short-lived cookie)."""
    if isinstance(output, dict):
        message, category = SEED_SUCCESS, "success"
    elif isinstance(output, InputError) and output.status == 409:
        message, category = SEED_LIMIT, "danger"
    elif isinstance(output, InputError) and output.status < 500:
        message, category = SEED_FAILED, "danger"
    else:
        message, category = SEED_BROKEN, "danger"
    headers = {"Location": "/", "X-Message": message, "X-Message-Category": category,
               "Set-Cookie": f"{MESSAGE_COOKIE}={quote(message)}; Path=/; Max-Age=60; SameSite=Lax"}
    return Response(status_code=302, headers=headers)
