"""The OpenAPI document at GET /openapi.json, declared here for every route rather than inferred.

FastAPI infers nothing useful from our routes: the LitAPI routes read their bodies by hand
(apis/request_body.py), the plain routes take a Request, and every route answers errors in its own
shape (apis/error_shapes.py). So each (path, method) the server can have is declared once in
`operations`: its request (each multipart field, each JSON field with its type and limits, the raw
body where it is accepted) and every answer it can give, with the body's schema (apis/openapi_schemas.py).

`install(app, settings)` (server.py, after every route is added) documents the routes this app really
has, for the running CAPABILITIES and settings. A route with no declaration here is left out of the
document, which tests/test_openapi.py catches.
"""

from analysis.operations import MAX_CAPTION_LENGTH, MAX_ID_LENGTH
from apis.analyze_routes import ALIASES
from apis.background import FORMATS, MAX_ERODE
from apis.match import MAX_FILEPATH
from apis.openapi_schemas import (BOOL, IMAGE_FILE, INT, RAW_IMAGE, SCHEMAS, STR, image_text, nullable, obj, ref)
from apis.originals import THUMBNAIL_SIDES
from apis.request_body import MAX_FIELDS
from apis.identity import COOKIE as USER_COOKIE
from apis.records import LIST_MAX
from apis.similar import MAX_LIMIT
from models.catalogue import embedders, names
from settings import AVERAGING_METHODS, FALSE_WORDS, TRUE_WORDS
from store.base import GALLERY_NAME_MAX

TAGS = [
    {"name": "statistics", "description": "EXIF, GPS, average and dominant colour (imagestats-api's route)"},
    {"name": "analysis", "description": "tasks on one image: boxes, embeddings, captions, classifiers "
                                        "(image_embed's routes and their aliases)"},
    {"name": "embedding", "description": "one embedding of one image"},
    {"name": "near-duplicates", "description": "Goldberg signature index (match's routes and envelope)"},
    {"name": "similarity", "description": "similar images by embedding (PicTrace's route)"},
    {"name": "originals", "description": "the stored originals of the index, by SHA-256"},
    {"name": "background removal", "description": "cut-outs by a segmenter (also rembg's server routes)"},
    {"name": "records", "description": "the per-user gallery of processed images (signed cookie)"},
    {"name": "gallery form", "description": "image-background-processor's form and script routes"},
    {"name": "server", "description": "readiness, workers, counters, the page and this document"},
]
STATUS_TEXT = {
    400: "Bad request: an empty or unreadable body, a refused or failing URL, a corrupt image",
    401: "X-API-Key missing or wrong",
    403: "a change another site's page asked for (Sec-Fetch-Site: cross-site or a foreign Origin)",
    404: "not found",
    409: "the user already has USER_LIMIT records; nothing was stored",
    413: "the body (MAX_UPLOAD_BYTES), the image's pixels, aspect, frames or scans, or a fetched URL is too large",
    415: "not an image, or a format outside IMAGE_FORMATS",
    422: "a missing field, a field of the wrong type or out of range",
    500: "a failure nobody foresaw; the body carries request_id, the id the server's log names it by",
    503: "the queue is full (Retry-After), a worker died, a model is unavailable here, or the index is unreachable",
    504: "no answer within REQUEST_TIMEOUT",
}
ERROR_SHAPES = {"detail": "Detail", "match": "MatchFail", "similar": "SimilarError"}
WORKER_ERRORS = (400, 413, 415, 422, 500, 503, 504)  # a route answered by a capability's workers
# what Python's str.strip() removes (the server's test of a blank field), which is not quite JSON Schema's \\s
_SPACE = "\\t-\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
NOT_BLANK = f"[^{_SPACE}]"
ALIAS_IDS = {"/analyze/": "analyzeImageSlash", "/analyze_image/": "analyzeImageCompat",
             "/analyze_image": "analyzeImageCompatNoSlash", "/analyze_image_upload/": "analyzeImageUpload",
             "/analyze_image_upload": "analyzeImageUploadNoSlash"}


def _any_case(word: str) -> str:
    """A regex for `word` in any case (JSON Schema's regexes have no case-insensitive flag)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


def words(choices, any_case: bool = False, blank: bool = False) -> str:
    """A regex for one of `choices` with spaces around (the server strips them), or only spaces when `blank`."""
    alternatives = "|".join(map(_any_case, choices) if any_case else choices)
    return f"^[{_SPACE}]*({alternatives}){'?' if blank else ''}[{_SPACE}]*$"


YES_NO = {"anyOf": [BOOL, {"enum": [0, 1]}, {"type": "string", "pattern": words(TRUE_WORDS + FALSE_WORDS, any_case=True)}],
          "description": f"true or false: a JSON boolean, or one of {', '.join(TRUE_WORDS + FALSE_WORDS)} (any case)"}
BLANK = {"type": "string", "pattern": f"^[{_SPACE}]*$"}
def digits_up_to(high: int) -> str:
    """A regex for 0..high in ASCII digits, leading zeros allowed (as the server's integer_value reads them)."""
    top, alternatives = str(high), [str(high)]
    for i, digit in enumerate(map(int, top)):  # as long as `top`: its first i digits, then a smaller one, then any
        low = 1 if i == 0 and len(top) > 1 else 0
        if digit > low:
            smaller = str(low) if digit - 1 == low else f"[{low}-{digit - 1}]"
            rest = len(top) - i - 1
            alternatives.append(top[:i] + smaller + (f"[0-9]{{{rest}}}" if rest > 1 else "[0-9]" if rest else ""))
    alternatives += [f"[1-9][0-9]{{{n - 1}}}" if n > 2 else "[1-9][0-9]" for n in range(2, len(top))]
    alternatives += ["[0-9]"] if len(top) > 1 else []
    return f"0*({'|'.join(alternatives)})"


BYTE_TEXT = digits_up_to(255)
# 1-100 in ASCII digits (leading zeros too), spaces around, or only spaces (the default)
LIMIT_TEXT = f"^[{_SPACE}]*(0*([1-9]|[1-9][0-9]|100))?[{_SPACE}]*$"
# a form field is one text value: a list would be sent as the field repeated (refused, 422), and so would an
# object in a urlencoded form (its keys); a multipart part holding an object holds its JSON text, ignored
FORM_VALUE = {"type": ["string", "number", "integer", "boolean", "null"]}
PART_VALUE = {"type": ["string", "number", "integer", "boolean", "null", "object"]}
DIGITS20 = {"type": "integer", "minimum": -(10**20 - 1), "maximum": 10**20 - 1}
FILEPATH = {"type": "string", "minLength": 1, "maxLength": MAX_FILEPATH, "pattern": "\\S",
            "description": "the caller's name for the image (not a file the server opens)"}


# ---------------------------------------------------------------- building blocks

def answer(description: str, schema: dict | None = None, media: str = "application/json", headers=None) -> dict:
    out = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    if headers:
        out["headers"] = headers
    return out


def responses(ok: dict, errors=(), shape: str = "detail", auth: bool = False) -> dict:
    """`ok` (status -> answer) plus each error status in the route's error shape."""
    out = {str(status): value for status, value in ok.items()}
    for status in sorted({*errors, 500, *((401,) if auth else ())}):
        out[str(status)] = answer(STATUS_TEXT[status], ref(ERROR_SHAPES.get(shape, shape)))
    return out


def form_body(fields: dict, required=(), *, files=(), one_of=(), raw: bool = False, json: bool = True,
              urlencoded: bool = True, encoded: dict | None = None, null_ok=(), in_forms=None) -> dict:
    """The same fields as multipart, urlencoded form and JSON object. `files` are image fields: a file part in
    multipart, image text elsewhere; `one_of`: image fields of which exactly one is sent; `raw`: the image's
    bytes as the whole body is accepted too (Content-Type image/* or application/octet-stream); `null_ok`:
    fields a JSON null leaves at their default (in a form, "null" is text like any other); `in_forms`: the
    schemas of fields that a form (multipart or urlencoded) can only send as text."""
    def schema(file_parts: bool, as_json: bool) -> dict:
        properties, needed, alternatives = {}, list(required), one_of
        for name, spec in fields.items():
            # multipart: the image is the (first) file part; its aliases and the URL or base64 text fields go
            # in JSON or a urlencoded form (one schema cannot say "this part or that one" to every generator)
            if file_parts and files and one_of and name in one_of and name != files[0]:
                continue
            spec = (in_forms or {}).get(name, spec) if not as_json else spec
            spec = IMAGE_FILE if file_parts and name in files else spec
            properties[name] = nullable(spec) if as_json and name in null_ok else spec
        if file_parts and files and one_of:
            needed, alternatives = [*needed, files[0]], ()
        # MAX_FIELDS fields, not counting a multipart body's files (MAX_FILES of those)
        out = {"type": "object", "properties": properties,
               "maxProperties": MAX_FIELDS + (len(files) if file_parts else 0)}
        if not as_json:  # any other field is ignored, but a repeated one is refused (422)
            out["additionalProperties"] = PART_VALUE if file_parts else FORM_VALUE
        if needed:
            out["required"] = list(dict.fromkeys(needed))
        if alternatives:
            out["oneOf"] = [{"required": [name]} for name in alternatives]
        return out

    content = {"multipart/form-data": {"schema": schema(True, False)}}
    if encoded:
        content["multipart/form-data"]["encoding"] = encoded
    if urlencoded:
        content["application/x-www-form-urlencoded"] = {"schema": schema(False, False)}
    if json:
        content["application/json"] = {"schema": schema(False, True)}
    if raw:
        content["image/*"] = {"schema": RAW_IMAGE}
        content["application/octet-stream"] = {"schema": RAW_IMAGE}
    return {"required": True, "content": content}


def operation(op_id: str, summary: str, tag: str, ok: dict, *, body=None, params=(), errors=(), shape="detail",
              description: str | None = None, auth: bool = False) -> dict:
    out = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        out["description"] = description
    if params:
        out["parameters"] = list(params)
    if body is not None:
        out["requestBody"] = body
        errors = (*errors, 400, 413)  # a body that cannot be parsed; one over MAX_UPLOAD_BYTES
    out["responses"] = responses(ok, errors, shape, auth)
    return out


def query(name: str, schema: dict, description: str, required: bool = False, where: str = "query") -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


def image_answer(media: tuple[str, ...], description: str, headers=None) -> dict:
    return {"description": description, "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in media},
            **({"headers": headers} if headers else {})}


# ---------------------------------------------------------------- each capability's routes

def _stats(auth) -> dict:
    body = form_body({"content": image_text("the image"),
                      "averaging_method": {"enum": list(AVERAGING_METHODS), "description": "default AVERAGING_METHOD"}},
                     ["content"], files=("content",), raw=True, null_ok=("averaging_method",))
    return {("/stats", "post"): operation(
        "getImageStats", "EXIF, GPS, average and dominant colour of one image", "statistics",
        {200: answer("the image's statistics", ref("Stats"))}, body=body, errors=WORKER_ERRORS, auth=auth)}


def _analyze(settings, auth) -> dict:
    tasks = {"type": "array", "items": ref("Task"), "minItems": 1, "maxItems": settings.max_tasks,
             "description": f"1 to MAX_TASKS ({settings.max_tasks}) tasks, operation_id unique among them"}
    images = {"image_url": image_text("the image"), "image_base64": image_text("the image"),
              "image_file": image_text("the image"), "content": image_text("the image")}
    multipart = form_body({**images, "tasks_json": tasks}, ["tasks_json"], files=("image_file", "content"),
                          one_of=tuple(images), json=False, urlencoded=False, encoded={"tasks_json": {"contentType": "application/json"}})
    as_json = form_body({**images, "tasks": tasks}, ["tasks"], one_of=tuple(images), urlencoded=False)
    multipart["content"]["application/json"] = as_json["content"]["application/json"]
    ok = {200: answer("each task's result under its operation_id", ref("Analysis"))}
    description = ("Send exactly one image field and the tasks (JSON `tasks`, or the JSON text `tasks_json` in a "
                   "form). A task that cannot run is answered `error` in its result; the others still run.")
    out = {}
    paths = {"/analyze": ("analyzeImage", "Run tasks on one image")}
    for alias in ALIASES:  # served by apis/analyze_routes.py's PathAliasMiddleware as /analyze itself
        paths[alias] = (ALIAS_IDS.get(alias, alias.strip("/")), f"Run tasks on one image ({alias}, the same as /analyze)")
    for path, (op_id, summary) in paths.items():
        out[(path, "post")] = operation(op_id, summary, "analysis", ok, body=multipart, errors=WORKER_ERRORS,
                                        description=description, auth=auth)
    return out


def _operation_routes(auth) -> dict:
    listing = operation("listOperations", "The /analyze operations and whether each can run here", "analysis",
                        {200: answer("every operation with its targets and parameters", ref("Operations"))}, auth=auth)
    return {
        ("/available_operations/", "get"): listing,
        ("/available_operations", "get"): {**listing, "operationId": "listOperationsNoSlash"},
        ("/model_stats", "get"): operation(
            "getModelStats", "Forward calls and images per model (batching at work)", "server",
            {200: answer("counters summed over every worker, and each model's availability", ref("ModelStats"))},
            auth=auth),
    }


def _embed(auth) -> dict:
    images = ("image_url", "image_base64", "image_file", "content")
    models = [*names("embedder"), *embedders()]
    body = form_body({**{name: image_text("the image") for name in images},
                      "model": {"enum": models, "description": "an embedder; default clip_vit_b_32"},
                      "normalize": {"anyOf": [BOOL, {"enum": [0, 1]}, {"type": "string", "pattern": words(
                          TRUE_WORDS + FALSE_WORDS, any_case=True, blank=True)}],
                                    "description": "L2-normalise the vector: true or false (as for YES_NO); default false, "
                                                   "an empty form field too"}},
                     files=("image_file", "content"), one_of=images, raw=True)
    return {("/embed", "post"): operation(
        "embedImage", "One embedding of one image", "embedding",
        {200: answer("the vector", ref("Embedding"))}, body=body, errors=WORKER_ERRORS, auth=auth)}


def _search(settings, auth) -> dict:
    match_errors = (400, 413, 415, 422, 500, 503, 504)

    def image_pair(url: str, file: str) -> dict:
        return {url: image_text(f"the image ({url} or {file}, not both)"),
                file: image_text(f"the image ({url} or {file}, not both)")}

    add = form_body({**image_pair("url", "image"), "filepath": FILEPATH,
                     "metadata": {"type": "object", "description": "stored with the record (a JSON object; in a form "
                                                                   "its JSON text)"}},
                    ["filepath"], files=("image",), one_of=("url", "image"), null_ok=("metadata",), urlencoded=False)
    search = form_body({**image_pair("url", "image"), "all_orientations": {**YES_NO, "description": "also try the "
                        "image turned and mirrored (default true)"}}, files=("image",), one_of=("url", "image"),
                       raw=True, null_ok=("all_orientations",))
    compare = form_body({**image_pair("url1", "image1"), **image_pair("url2", "image2")},
                        files=("image1", "image2"), one_of=())
    for media, item in compare["content"].items():
        if media == "multipart/form-data":
            item["schema"] = {**item["schema"], "required": ["image1", "image2"],
                              "properties": {k: v for k, v in item["schema"]["properties"].items() if "url" not in k}}
        else:
            item["schema"]["allOf"] = [{"oneOf": [{"required": ["url1"]}, {"required": ["image1"]}]},
                                       {"oneOf": [{"required": ["url2"]}, {"required": ["image2"]}]}]
    out = {
        ("/add", "post"): operation("addImage", "Index an image under a filepath", "near-duplicates",
                                    {200: answer("indexed (the same filepath again replaces it)", ref("MatchEmpty"))},
                                    body=add, errors=match_errors, shape="match", auth=auth),
        ("/search", "post"): operation("searchNearDuplicates", "Near-duplicates of an image, turned and mirrored too",
                                       "near-duplicates", {200: answer("best first", ref("MatchHits"))},
                                       body=search, errors=match_errors, shape="match", auth=auth),
        ("/compare", "post"): operation("compareImages", "Signature similarity of two images", "near-duplicates",
                                        {200: answer("the score, 100 for the same picture", ref("MatchScore"))},
                                        body=compare, errors=match_errors, shape="match", auth=auth),
        ("/delete", "delete"): operation(
            "deleteImage", "Remove a filepath from the index", "near-duplicates",
            {200: answer("removed, or was not indexed", ref("MatchEmpty"))},
            params=[query("filepath", FILEPATH, "the filepath to remove", required=True)],
            errors=(400, 503), shape="match", auth=auth),
    }
    reads = {
        "count": ("countImages", "Records in the index", "MatchCount", ()),
        "list": ("listImages", "Filepaths, oldest first", "MatchList",
                 [query("offset", DIGITS20, "default 0; below 0 counts as 0"),
                  query("limit", DIGITS20, "default 20; clamped to 0-1000")]),
        "get": ("getImageRecord", "One record by filepath ([] when not indexed)", "MatchRecord",
                [query("filepath", FILEPATH, "the record's filepath", required=True)]),
        "ping": ("ping", "Liveness of the near-duplicate API (answers when the index is down too)", "MatchEmpty", ()),
    }
    for name, (op_id, summary, schema, params) in reads.items():
        ok = {200: answer("the envelope", ref(schema))}
        errors = (400, 503) if name != "ping" else ()
        post_errors = (400, 422, 503) if name != "ping" else (422,)  # 422: a JSON body that is not an object
        out[(f"/{name}", "get")] = operation(op_id, summary, "near-duplicates", ok, params=params, errors=errors,
                                             shape="match", auth=auth)
        fields = {p["name"]: p["schema"] for p in params}
        required = [p["name"] for p in params if p["required"]]
        body = form_body(fields, required, null_ok=[name for name in fields if name not in required])
        body["required"] = bool(required)
        out[(f"/{name}", "post")] = operation(op_id + "Post", summary + " (fields in a form)", "near-duplicates", ok,
                                              body=body, errors=post_errors, shape="match", auth=auth)
    similar = form_body({"file": image_text("the query image (file or image_url, not both)"),
                         "image_url": image_text("the query image (file or image_url, not both)"),
                         "limit": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                                             {"type": "string", "pattern": LIMIT_TEXT}],
                                   "description": f"1-{MAX_LIMIT}, default 5 (an empty form field too)"},
                         "model": {"anyOf": [{"enum": list(settings.search_models)}, BLANK],
                                   "description": "one of SEARCH_MODELS; default mobilenet_v2 (an empty field too)"}},
                        files=("file",), one_of=("file", "image_url"), raw=True, null_ok=("limit", "model"))
    find = operation("findSimilar", "Indexed images most similar to an image, by embedding", "similarity",
                     {200: answer("best first; similarity is a cosine", ref("Similar"))}, body=similar,
                     errors=(400, 415, 422, 503, 504), shape="similar", auth=auth)
    out[("/find_similar/", "post")] = find
    out[("/find_similar", "post")] = {**find, "operationId": "findSimilarNoSlash"}
    immutable = {"Cache-Control": {"schema": STR, "description": "public, max-age=31536000, immutable"}}
    out[("/images/{sha256}", "get")] = operation(
        "getOriginal", "A stored original, or a preview of it", "originals",
        {200: image_answer(("image/*",), "the original's bytes with its type; with size, a JPEG (PNG with alpha)",
                           immutable)},
        params=[query("sha256", {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "64 lowercase hex digits",
                      where="path"),
                query("size", {"type": "integer", "minimum": THUMBNAIL_SIDES[0], "maximum": THUMBNAIL_SIDES[1]},
                      "a preview no larger than this many pixels")],
        errors=(400, 404, 413, 415), auth=auth)
    return out


def _background(settings, auth) -> dict:
    def number(high: int, default: int) -> dict:  # an integer, or its digits as text (int() reads them)
        digits = digits_up_to(high)
        return {"anyOf": [{"type": "integer", "minimum": 0, "maximum": high},
                          {"type": "string", "pattern": words([f"\\+?{digits}"], blank=True)}],
                "description": f"0-{high}, default {default}"}

    flag = {**YES_NO, "description": "true or false (as YES_NO); default false"}
    model = {"anyOf": [{"type": "string", "pattern": words(settings.background_models, blank=True)}],
             "description": f"a segmenter; default BACKGROUND_MODEL ({settings.background_model})"}
    colour = {"anyOf": [{"type": "string", "pattern": f"^[{_SPACE}]*$|^[{_SPACE}]*{BYTE_TEXT}[{_SPACE}]*"
                                                      f"(,[{_SPACE}]*{BYTE_TEXT}[{_SPACE}]*){{2,3}}$"},
                        {"type": "array", "minItems": 3, "maxItems": 4, "items": {"anyOf": [
                            {"type": "integer", "minimum": 0, "maximum": 255},
                            {"type": "string", "pattern": f"^{BYTE_TEXT}$"}]}}],
              "description": "\"r,g,b,a\" (or r,g,b), each 0-255: composite onto this colour"}
    options = {"model": model, "alpha_matting": flag, "alpha_matting_foreground_threshold": number(255, 240),
               "alpha_matting_background_threshold": number(255, 10),
               "alpha_matting_erode_size": number(MAX_ERODE, 10), "only_mask": flag, "post_process_mask": flag,
               "decontaminate": flag, "bgcolor": colour, "crop": flag}
    cut = image_answer(tuple(FORMATS.values()), "the cut-out (PNG with alpha by default)")
    remove = form_body({"file": image_text("the image"), "image": image_text("the image"),
                        "image_url": image_text("the image"), "image_base64": image_text("the image"), **options,
                        "format": {"type": "string", "pattern": words(["png", "webp", "json"], any_case=True, blank=True),
                                   "description": "png (the default), webp, or json: the image in base64 in JSON"}},
                       files=("file", "image"), one_of=("file", "image", "image_url", "image_base64"),
                       null_ok=(*options, "format"), in_forms={"bgcolor": colour["anyOf"][0]})
    rembg_fields = {"model": model, "a": flag, "af": number(255, 240), "ab": number(255, 10),
                    "ae": number(MAX_ERODE, 10), "om": flag, "ppm": flag, "dc": flag,
                    "vm": {"anyOf": [{"enum": [False, 0]}, {"type": "string", "pattern": words(FALSE_WORDS, any_case=True)}],
                           "description": "ViTMatte: not available here, only false is accepted"}}
    rembg_body = form_body({"file": IMAGE_FILE, **rembg_fields}, ["file"], files=("file",), json=False,
                           urlencoded=False)
    rembg_query = [query("bgc", colour["anyOf"][0], "\"r,g,b,a\" background colour"),
                   query("extras", {"type": "string", "pattern": f"^[{_SPACE}]*$|^[ \\t\\n\\r]*\\{{[ \\t\\n\\r]*\\}}[ \\t\\n\\r]*$"},
                         "empty or {}: no extras are supported here")]
    record_body = form_body({"image": image_text("the image"), "file": image_text("the image"),
                             "name": {"type": "string", "minLength": 1, "maxLength": GALLERY_NAME_MAX,
                                      "pattern": NOT_BLANK}, **options},
                            ["name"], files=("image", "file"), one_of=("image", "file"), null_ok=tuple(options),
                            in_forms={"bgcolor": colour["anyOf"][0]})
    record_errors = (*WORKER_ERRORS, 403, 409)
    record_id = query("record_id", {"type": "string"}, "the record's id", where="path")
    user = query(USER_COOKIE, {"type": "string"}, "the signed user cookie the server sets on a first visit: a "
                 "record is its user's alone (anyone else gets 404)", where="cookie")
    private = {"Cache-Control": {"schema": STR, "description": "private, max-age=3600"}}
    rename = {"required": True, "content": {"application/json": {"schema": obj(
        {"name": {"type": "string", "minLength": 1, "maxLength": GALLERY_NAME_MAX, "pattern": NOT_BLANK}})}}}
    seed_rename = {"required": True, "content": {"application/json": {"schema": obj(
        {"record_name": {"type": "string", "minLength": 1, "maxLength": GALLERY_NAME_MAX, "pattern": NOT_BLANK}})}}}
    message = {"anyOf": [ref("GalleryMessage"), ref("Detail")]}
    redirect = {"Location": {"schema": STR}, "X-Message": {"schema": STR, "description": "the seed's flash message"}}
    return {
        ("/remove-background", "post"): operation(
            "removeBackground", "The image with its background removed", "background removal",
            {200: {"description": "the cut-out, or with Accept: application/json or format=json, JSON",
                   "content": {**cut["content"], "application/json": {"schema": ref("Cutout")}}}},
            body=remove, errors=WORKER_ERRORS, auth=auth),
        ("/api/remove", "post"): operation(
            "rembgRemove", "rembg's server route: a file in, a PNG out", "background removal",
            {200: image_answer(("image/png",), "the cut-out")}, body=rembg_body, params=rembg_query,
            errors=WORKER_ERRORS, auth=auth),
        ("/api/remove", "get"): operation(
            "rembgRemoveUrl", "rembg's server route: an image URL in, a PNG out", "background removal",
            {200: image_answer(("image/png",), "the cut-out")},
            params=[query("url", {"type": "string", "format": "uri"},
                          "the image's http(s) URL", required=True),
                    *[query(k, v, k) for k, v in rembg_fields.items()], *rembg_query],
            errors=WORKER_ERRORS, auth=auth),
        ("/records", "post"): operation(
            "createRecord", "Remove an image's background and keep both images as a record of yours", "records",
            {200: answer("the record", ref("Record"))}, body=record_body, errors=record_errors, auth=auth),
        ("/records", "get"): operation(
            "listRecords", "Your records, newest first", "records", {200: answer("a page of them", ref("RecordList"))},
            params=[user, query("offset", {"type": "integer", "minimum": 0, "maximum": 10**9}, "default 0"),
                    query("limit", {"type": "integer", "minimum": 0, "maximum": LIST_MAX}, "default USER_LIMIT")],
            errors=(422, 503), auth=auth),
        ("/records/{record_id}", "get"): operation(
            "getRecord", "One record of yours", "records", {200: answer("the record", ref("Record"))},
            params=[record_id, user], errors=(404, 503), auth=auth),
        ("/records/{record_id}", "patch"): operation(
            "renameRecord", "Rename a record of yours", "records", {200: answer("the record", ref("Record"))},
            params=[record_id, user], body=rename, errors=(400, 403, 404, 422, 503), auth=auth),
        ("/records/{record_id}", "delete"): operation(
            "deleteRecord", "Delete a record of yours with its images", "records",
            {200: answer("deleted", ref("RecordDeleted"))}, params=[record_id, user], errors=(403, 404, 503), auth=auth),
        ("/records/{record_id}/original", "get"): operation(
            "getRecordOriginal", "A record's original image, to its owner", "records",
            {200: image_answer(("image/*",), "the original as uploaded", private)}, params=[record_id, user],
            errors=(404, 503), auth=auth),
        ("/records/{record_id}/processed", "get"): operation(
            "getRecordProcessed", "A record's processed image, to its owner", "records",
            {200: image_answer(("image/png",), "the cut-out", private)}, params=[record_id, user],
            errors=(404, 503), auth=auth),
        ("/", "post"): operation(
            "galleryCreate", "The gallery form: create a record, then back to /", "gallery form",
            {302: {"description": "to / with the outcome in X-Message, whether it worked or not", "headers": redirect}},
            body={**form_body({"name": STR, "image": IMAGE_FILE}, files=("image",), json=False), "required": False},
            errors=(400, 403, 413, 422, 503, 504), auth=auth,
            description="Every outcome of a form a browser can send is a 302 with the seed's message: \"Image "
                        "generated successfully\", \"Max limit reached. Please remove a record.\", \"Failed to "
                        "generate the image\" (no image, not an image, a bad name) or \"Something went wrong\". A "
                        "body that cannot be read as one form (not a form, a field given twice, too large) is "
                        "answered 4xx with its detail, as on every route."),
        ("/update/{record_id}", "put"): operation(
            "galleryRename", "The gallery's rename", "gallery form",
            {200: answer("{\"message\": \"success\"}", ref("GalleryMessage"))},
            params=[record_id, user], body=seed_rename, errors=(), auth=auth) | {"responses": {
                "200": answer("{\"message\": \"success\"}", ref("GalleryMessage")),
                **{str(s): answer(STATUS_TEXT[s], message) for s in (400, 403, 404, 413, 422, 500, 503)},
                **({"401": answer(STATUS_TEXT[401], ref("Detail"))} if auth else {})}},
        ("/remove/{record_id}", "delete"): operation(
            "galleryRemove", "The gallery's delete", "gallery form",
            {200: answer("{\"message\": \"success\"}", ref("GalleryMessage"))}, params=[record_id, user], auth=auth)
        | {"responses": {"200": answer("{\"message\": \"success\"}", ref("GalleryMessage")),
                         **{str(s): answer(STATUS_TEXT[s], message) for s in (403, 404, 500, 503)},
                         **({"401": answer(STATUS_TEXT[401], ref("Detail"))} if auth else {})}},
    }


def _server(auth) -> dict:
    return {
        ("/health", "get"): operation(
            "getHealth", "Readiness: every worker ready", "server",
            {200: answer("ready", ref("Health")), 503: answer("not ready yet", ref("Health"))}),
        ("/info", "get"): operation("getInfo", "Devices, workers and timeouts", "server",
                                    {200: answer("LitServe's server information", ref("Info"))}, auth=auth),
        ("/metrics", "get"): operation("getMetrics", "Counters and histograms for Prometheus", "server",
                                       {200: answer("Prometheus text exposition", STR, "text/plain; version=0.0.4")},
                                       auth=auth),
        ("/", "get"): operation(
            "getPage", "The web page (its files under /static)", "server",
            {200: answer("the page", STR, "text/html"), 304: {"description": "not modified (If-None-Match)"}},
            auth=auth),
        ("/page/config", "get"): operation("getPageConfig", "What the page needs to know of this server", "server",
                                           {200: answer("capabilities and their choices", {"type": "object"})},
                                           auth=auth),
        ("/openapi.json", "get"): operation("getOpenApi", "This document", "server",
                                            {200: answer("OpenAPI 3.1", {"type": "object"})}, auth=auth),
        ("/docs", "get"): operation("getSwaggerUi", "This document in Swagger UI (served offline)", "server",
                                    {200: answer("the page", STR, "text/html")}, auth=auth),
        ("/redoc", "get"): operation("getRedoc", "This document in ReDoc (served offline)", "server",
                                     {200: answer("the page", STR, "text/html")}, auth=auth),
    }


def operations(settings) -> dict:
    """(path, lower-case method) -> its OpenAPI operation, for every route the server can have."""
    auth = bool(settings.api_key)
    return {**_stats(auth), **_analyze(settings, auth), **_operation_routes(auth), **_embed(auth),
            **_search(settings, auth), **_background(settings, auth), **_server(auth)}


# ---------------------------------------------------------------- the document

def app_operations(app) -> list[tuple[str, str]]:
    """(path, lower-case method) of every route the app answers, /analyze's aliases included (they are
    rewritten to /analyze before routing); mounted file folders (/static, /docs-assets) are not operations."""
    found = []
    for route in app.router.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":  # Starlette adds HEAD to its GET routes by itself
                found.append((route.path, method.lower()))
    if ("/analyze", "post") in found:
        found += [(alias, "post") for alias in ALIASES]
    return found


def document(app, settings) -> dict:
    declared = operations(settings)
    paths: dict = {}
    for path, method in app_operations(app):
        if (path, method) in declared:
            paths.setdefault(path, {})[method] = declared[(path, method)]
    used = {tag for item in paths.values() for op in item.values() for tag in op["tags"]}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "imageserver", "version": "0.1.0",
                 "description": "Image statistics, analysis, embeddings, near-duplicate and similar-image search, "
                                "background removal. Each route answers its errors in the shape its clients "
                                "parse; every answer carries X-Request-ID. An image goes as a multipart file "
                                "part, as a URL the server fetches (format uri) or as base64 text (format byte); "
                                "the URL and base64 fields of a JSON body also work as multipart text fields."},
        "tags": [tag for tag in TAGS if tag["name"] in used],
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
    if settings.api_key:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
        doc["security"] = [{"apiKey": []}]
        public = [route for route in settings.public_routes]
        for path, item in paths.items():
            if path in public or any(r.endswith("*") and path.startswith(r[:-1]) for r in public):
                for op in item.values():
                    op["security"] = []
                    op["responses"].pop("401", None)
    return doc


def install(app, settings) -> None:
    """app.openapi answers this document (built once, on the first request for it)."""
    built = {}

    def openapi() -> dict:
        if "doc" not in built:
            built["doc"] = document(app, settings)
        return built["doc"]

    app.openapi = openapi
