"""The /analyze operations (image_embed's catalogue), and the validation of one task against it.

A task is `{"operation_id", "type", "params"}`. A task that names an unknown type, a target its type
does not allow, or bad parameters becomes a TaskError: that task answers status "error", the others run.
"""

from dataclasses import dataclass, field

TARGETS = ("whole_image", "prominent_person", "prominent_face")
FACE_CONTEXTS = ("prominent_person", "whole_image")
PROMINENT = ("score", "area")
MAX_CAPTION_LENGTH = 512
MAX_ID_LENGTH = 256  # characters of an operation_id or a collection_id: names, not documents
EMBEDDERS = {  # operation type -> embedding model name
    "embed_clip_vit_b_32": "clip_vit_b_32",
    "embed_dino_v2": "dino_v2",
    "embed_mobilenet_v2": "mobilenet_v2",
}


@dataclass(frozen=True)
class Operation:
    description: str
    targets: tuple[str, ...]
    default_target: str
    params: dict  # name -> description, shown by GET /available_operations/


_COMMON = {
    "target": "whole_image | prominent_person | prominent_face (see allowed_targets)",
    "face_context": "prominent_person (default: look for the face inside the person box) | whole_image",
    "prominent": "score (default: the most confident detection, as image_embed) | area (the largest)",
}

OPERATIONS = {
    "detect_bounding_box": Operation(
        "Bounding box [xmin, ymin, xmax, ymax] of the prominent person (Faster R-CNN, COCO) or face (MTCNN)",
        ("prominent_person", "prominent_face"), "prominent_person", _COMMON,
    ),
    "embed_clip_vit_b_32": Operation("CLIP ViT-B/32 image embedding (open_clip)", TARGETS, "whole_image", _COMMON),
    "embed_dino_v2": Operation("DINOv2 ViT-B/14 image embedding (transformers)", TARGETS, "whole_image", _COMMON),
    "embed_mobilenet_v2": Operation("MobileNetV2 ImageNet features, 1280-d (torchvision)", TARGETS, "whole_image", _COMMON),
    "classify": Operation(
        "Is the image in a collection? A logistic regression over embeddings; its target comes from the classifier",
        TARGETS, "whole_image", {**_COMMON, "collection_id": "required: the collection's id (see classifier mapping)"},
    ),
    "describe_image": Operation(
        "A caption (BLIP through transformers)", TARGETS, "whole_image",
        {**_COMMON, "max_length": f"tokens, 1-{MAX_CAPTION_LENGTH}, default 50"},
    ),
}


class TaskError(ValueError):
    """A task that cannot run as asked; the message is the task's error_message."""


@dataclass(frozen=True)
class Task:
    operation_id: str
    type: str
    target: str
    face_context: str = "prominent_person"
    prominent: str = "score"
    params: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def region(self) -> tuple:
        """What part of the image the task looks at: results for the same region are computed once."""
        if self.target == "whole_image":
            return ("whole_image",)
        if self.target == "prominent_person":
            return ("prominent_person", self.prominent)
        return ("prominent_face", self.face_context, self.prominent)


def _shown(value) -> str:
    """A client's value in a message: text quoted and cut short, anything else by its type alone."""
    if isinstance(value, str):
        return repr(value[:40])
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:40]
    kind = {dict: "object", list: "array"}.get(type(value), type(value).__name__)
    return f"a JSON {kind}"


def _choice(params: dict, name: str, allowed: tuple, default: str) -> str:
    value = params.get(name, default)
    if not isinstance(value, str) or value not in allowed:
        raise TaskError(f"{name} {_shown(value)} is not one of {', '.join(allowed)}")
    return value


def parse_task(raw) -> Task:
    """A validated Task, or TaskError naming what is wrong."""
    if not isinstance(raw, dict):
        raise TaskError("a task must be an object with operation_id, type and params")
    kind = raw.get("type")
    operation = OPERATIONS.get(kind) if isinstance(kind, str) else None
    if operation is None:
        raise TaskError(f"unknown operation type {_shown(kind)}; known: {', '.join(OPERATIONS)}")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise TaskError("params must be an object")
    target = params.get("target", operation.default_target)
    if not isinstance(target, str) or target not in operation.targets:
        raise TaskError(f"unsupported target {_shown(target)} for {kind}; allowed: {', '.join(operation.targets)}")
    clean = {}
    if kind == "classify":
        collection = params.get("collection_id")
        if isinstance(collection, bool) or not isinstance(collection, (int, str)) or str(collection).strip() == "":
            raise TaskError("classify needs params.collection_id (an integer or a string id)")
        if len(str(collection)) > MAX_ID_LENGTH:
            raise TaskError(f"collection_id is longer than {MAX_ID_LENGTH} characters")
        clean["collection_id"] = str(collection).strip()
    if kind == "describe_image":
        length = params.get("max_length", 50)
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_CAPTION_LENGTH:
            raise TaskError(f"max_length must be an integer from 1 to {MAX_CAPTION_LENGTH}")
        clean["max_length"] = length
    return Task(
        operation_id=str(raw.get("operation_id")),
        type=kind,
        target=target,
        face_context=_choice(params, "face_context", FACE_CONTEXTS, "prominent_person"),
        prominent=_choice(params, "prominent", PROMINENT, "score"),
        params=clean,
    )


def catalogue(availability: dict[str, str | None]) -> dict:
    """GET /available_operations/: every operation with targets, parameters and whether it can run.

    `availability` maps model name -> None when loaded, or the reason it is not (or "loading").
    """
    out = {}
    for kind, operation in OPERATIONS.items():
        reasons = {name: availability.get(name, "loading") for name in models_for_type(kind)}
        missing = {name: why for name, why in reasons.items() if why}
        out[kind] = {
            "description": operation.description,
            "allowed_targets": list(operation.targets),
            "default_target": operation.default_target,
            "params": operation.params,
            "available": not missing,
            "unavailable_models": missing,
        }
    return {"operations": out}


def models_for_type(kind: str) -> tuple[str, ...]:
    """Models an operation type needs whatever its target (detectors are needed only for crops)."""
    if kind in EMBEDDERS:
        return (EMBEDDERS[kind],)
    return {"detect_bounding_box": ("person_detector", "face_detector"), "describe_image": ("captioner",)}.get(kind, ())
