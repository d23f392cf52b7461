"""The /analyze operations, derived from the model catalogue, and the validation of one task against them.

An embedder offers `embed_<name>`; the detectors offer detect_bounding_box and their regions as targets;
a captioner offers describe_image; classify runs a collection's classifier over the embedders' vectors.
A task is `{"operation_id", "type", "params"}`. A task that names an unknown type, a target its type
does not allow, or bad parameters becomes a TaskError: that task answers status "error", the others run.
"""

from dataclasses import dataclass, field

from models.catalogue import detector_for, embedders, model_class, names
from models.base import REGIONS

TARGETS = ("whole_image",) + tuple(region for region in REGIONS if detector_for(region))
FACE_CONTEXTS = ("prominent_person", "whole_image")
PROMINENT = ("score", "area")
MAX_CAPTION_LENGTH = 512
MAX_ID_LENGTH = 256  # characters of an operation_id or a collection_id: names, not documents


@dataclass(frozen=True)
class Operation:
    description: str
    targets: tuple[str, ...]
    default_target: str
    params: dict  # name -> description, shown by GET /available_operations/


_COMMON = {
    "target": "whole_image | prominent_person | prominent_face (see allowed_targets)",
    "face_context": "prominent_person (default: look for the face inside the person box) | whole_image",
    "prominent": "score (default: the most confident detection) | area (the largest)",
}



def _operations() -> dict[str, Operation]:
    operations = {}
    detectors = names("detector")
    if detectors:
        found = " or ".join(model_class(name).description for name in detectors)
        operations["detect_bounding_box"] = Operation(
            f"Bounding box [xmin, ymin, xmax, ymax] of the {found}", TARGETS[1:], TARGETS[1], _COMMON)
    for kind, name in embedders().items():
        operations[kind] = Operation(model_class(name).description, TARGETS, "whole_image", _COMMON)
    if embedders():
        operations["classify"] = Operation(
            "Is the image in a collection? A logistic regression over embeddings; its target comes from the classifier",
            TARGETS, "whole_image", {**_COMMON, "collection_id": "required: the collection's id (see classifier mapping)"},
        )
    for name in names("captioner")[:1]:
        operations["describe_image"] = Operation(
            model_class(name).description, TARGETS, "whole_image",
            {**_COMMON, "max_length": f"tokens, 1-{MAX_CAPTION_LENGTH}, default 50"},
        )
    return operations


OPERATIONS = _operations()


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
        if isinstance(length, float) and length.is_integer():  # JSON Schema's integer takes 30.0
            length = int(length)
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
    if kind in embedders():
        return (embedders()[kind],)
    return {"detect_bounding_box": names("detector"), "describe_image": names("captioner")[:1]}.get(kind, ())
