"""The JSON schemas of the OpenAPI document (apis/openapi_doc.py): every answer's shape and every error
shape of apis/error_shapes.py, written once each and referenced by name from the operations.

Request fields that carry an image are described by `image_text` (an http(s) URL the server fetches, or
base64 / a data: URL) and `IMAGE_FILE` (a multipart file part).
"""

STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
ANY_OBJECT = {"type": "object"}
REQUEST_ID = {"type": "string", "description": "the request's id (also in X-Request-ID); on 5xx answers only"}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict, required=None, **extra) -> dict:
    """An object schema; every property is required unless `required` says otherwise."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else list(required), **extra}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


IMAGE_FILE = {"type": "string", "format": "binary", "contentMediaType": "image/*",
              "description": "the image file (any format the server decodes; its part's Content-Type is not read)"}
RAW_IMAGE = {"type": "string", "format": "binary", "description": "the image's bytes as the whole body"}


def image_text(description: str) -> dict:
    """A text field holding an image: an http(s) URL the server fetches, or base64 (or a data: URL)."""
    return {"type": "string", "minLength": 1, "anyOf": [{"format": "uri"}, {"format": "byte"}],
            "description": f"{description}: an http(s) URL the server fetches, or the image as base64 (or a data: URL)"}


# ---------------------------------------------------------------- errors (apis/error_shapes.py)

ERRORS = {
    "Detail": obj({"detail": STR, "request_id": REQUEST_ID}, ["detail"],
                  description="the error answer of most routes"),
    "MatchFail": obj({"status": {"const": "fail"}, "error": {"type": "array", "items": STR, "minItems": 1},
                      "method": STR, "result": {"type": "array", "maxItems": 0}, "request_id": REQUEST_ID},
                     ["status", "error", "method", "result"],
                     description="the near-duplicate routes' envelope on an error (match's clients parse it)"),
    "SimilarError": obj({"error": STR, "detail": STR, "request_id": REQUEST_ID}, ["error", "detail"],
                        description="/find_similar/'s error: `error` for PicTrace's clients, `detail` like every route"),
    "GalleryMessage": obj({"message": STR, "detail": STR}, ["message"],
                          description="the gallery form's answer: \"success\", or the seed's error message"),
}

# ---------------------------------------------------------------- answers

RGB = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 3, "maxItems": 3}
HEX = {"type": "string", "pattern": "^#[0-9a-f]{6}$"}
BOX = {"type": "array", "items": NUM, "minItems": 4, "maxItems": 4, "description": "[xmin, ymin, xmax, ymax] in pixels"}

ANSWERS = {
    "Stats": obj({
        "exif_data": {"type": "object", "description": "every EXIF tag, made JSON-safe; GPSInfo and Interop nested"},
        "color_data": nullable(obj({
            "avg_color": obj({"rgb": RGB, "hex": HEX, "method": {"enum": ["arithmetic", "geometric", "harmonic"]}}),
            "dominant_color": obj({"rgb": RGB, "hex": HEX, "share": {"type": "number", "minimum": 0, "maximum": 1},
                                   "hsv_bin": {"type": "array", "items": INT, "minItems": 3, "maxItems": 3}}),
        })),
        "gps": nullable(obj({"latitude": NUM, "longitude": NUM, "altitude": nullable(NUM)}, ["latitude", "longitude"])),
        "image": obj({"format": nullable(STR), "width": INT, "height": INT}),
    }),
    "Task": obj({
        "operation_id": {"type": "string", "minLength": 1, "maxLength": 256,
                         "description": "the key of this task's result: two different tasks with one id are "
                                        "refused (422), the same task sent twice runs once"},
        "type": {"description": "an operation of GET /available_operations/ (an unknown one makes this task `error`)",
                 "examples": ["detect_bounding_box", "embed_clip_vit_b_32", "describe_image", "classify"]},
        "params": {"description": "target, face_context, prominent, max_length, collection_id (a bad one makes "
                                  "this task `error`)", "examples": [{"target": "prominent_face"}]},
    }, ["operation_id"]),
    "TaskResult": obj({
        "status": {"enum": ["success", "error", "skipped"]},
        "data": {"description": "a box, a vector, a caption or {is_in_collection, probability}; null when none"},
        "cropped_image_bbox": nullable(BOX),
        "cropped_image_base64": nullable({"type": "string", "description": "the crop as a base64 PNG"}),
        "error_message": nullable(STR),
    }),
    "Analysis": obj({"image_url": {"type": "string", "description": "the URL, \"uploaded:<name>\" or \"base64\""},
                     "results": {"type": "object", "additionalProperties": ref("TaskResult")}}),
    "Operations": obj({"operations": {"type": "object", "additionalProperties": obj({
        "description": STR, "allowed_targets": {"type": "array", "items": STR}, "default_target": STR,
        "params": {"type": "object", "additionalProperties": STR}, "available": BOOL,
        "unavailable_models": {"type": "object", "additionalProperties": STR}})}}),
    "ModelStats": obj({
        "models": {"type": "object", "additionalProperties": obj(
            {"forward_calls": INT, "images": INT, "mean_batch": NUM})},
        "availability": {"type": "object", "additionalProperties": nullable(STR),
                         "description": "model -> null (loaded) or the reason it is not"}}),
    "Embedding": obj({"model": STR, "dim": INT, "normalized": BOOL, "embedding": {"type": "array", "items": NUM}}),
    "MatchEmpty": obj({"status": {"const": "ok"}, "error": {"type": "array", "maxItems": 0}, "method": STR,
                       "result": {"type": "array", "maxItems": 0}}),
    "MatchHits": obj({"status": {"const": "ok"}, "error": {"type": "array", "maxItems": 0}, "method": {"const": "search"},
                      "result": {"type": "array", "items": obj({"score": NUM, "filepath": STR,
                                                                "metadata": ANY_OBJECT, "url": STR})}}),
    "MatchScore": obj({"status": {"const": "ok"}, "error": {"type": "array", "maxItems": 0},
                       "method": {"const": "compare"},
                       "result": {"type": "array", "items": obj({"score": NUM}), "minItems": 1, "maxItems": 1}}),
    "MatchCount": obj({"status": {"const": "ok"}, "error": {"type": "array", "maxItems": 0}, "method": {"const": "count"},
                       "result": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                  "minItems": 1, "maxItems": 1}}),
    "MatchList": obj({"status": {"const": "ok"}, "error": {"type": "array", "maxItems": 0}, "method": {"const": "list"},
                      "result": {"type": "array", "items": STR}}),
    "MatchRecord": obj({"status": {"const": "ok"}, "error": {"type": "array", "maxItems": 0}, "method": {"const": "get"},
                        "result": {"type": "array", "maxItems": 1, "items": obj({
                            "filepath": STR, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                            "metadata": ANY_OBJECT, "url": STR})}}),
    "Similar": obj({"filename": STR, "model": STR, "total_indexed": {"type": "integer", "minimum": 0},
                    "similar_images": {"type": "array", "items": obj({
                        "filepath": STR, "filename": STR, "similarity": NUM,
                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "metadata": ANY_OBJECT,
                        "url": STR})}}),
    "Cutout": obj({"model": STR, "format": {"enum": ["png", "webp"]}, "width": INT, "height": INT,
                   "image_base64": {"type": "string", "contentEncoding": "base64"}}),
    "Record": obj({"id": STR, "name": STR, "created_on": {"type": "string", "description": "UTC, YYYY-MM-DD HH:MM:SS"},
                   "model": STR, "original_url": STR, "processed_url": STR}),
    "RecordList": obj({"records": {"type": "array", "items": ref("Record")}, "total": {"type": "integer", "minimum": 0},
                       "user_limit": INT}),
    "RecordDeleted": obj({"id": STR, "deleted": {"const": True}}),
    "Health": obj({"status": {"enum": ["Healthy", "not ready"]}}),
    "Info": obj({"model": {}, "server": {"type": "object"}}, ["server"]),
}

SCHEMAS = {**ERRORS, **ANSWERS}
