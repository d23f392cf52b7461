"""The model catalogue: one line per model class. What the server offers is derived from it.

Each class declares its name, kind, description, the variables it reads and (a detector) the region it
finds (models/base.py). From those: /embed's models and SEARCH_MODELS's choices (the embedders), the
router's operations (`embed_<name>` per embedder, detect_bounding_box from the detectors,
describe_image from the captioner, classify over the embedders; analysis/operations.py), and
`make weights`. Adding a model is its file plus one line here (docs/architecture.md shows one).

Reading the catalogue imports the model modules but not torch: they import it when a model loads.
"""

import functools
import importlib
import logging

from models.base import KINDS, REGIONS, ImageModel, ModelUnavailable
from telemetry import metrics

log = logging.getLogger("imageserver.models")

CATALOGUE = (
    "models.person_detector:PersonDetector",
    "models.face_detector:FaceDetector",
    "models.clip:ClipEmbedder",
    "models.dino:DinoEmbedder",
    "models.mobilenet:MobileNetEmbedder",
    "models.captioner:Captioner",
    "models.background:U2Net",
    "models.background:U2NetP",
    "models.background:U2NetHumanSeg",
    "models.background:Silueta",
    "models.background:IsNetGeneral",
    "models.background:BiRefNetGeneral",
    "models.background:BiRefNetGeneralLite",
    "models.background:BiRefNetPortrait",
    "models.background:BiRefNetDIS",
    "models.background:BiRefNetHRSOD",
    "models.background:BiRefNetCOD",
    "models.background:BiRefNetMassive",
    "models.background:CustomU2Net",
)


@functools.cache
def model_classes() -> dict[str, type[ImageModel]]:
    """name -> class, in catalogue order; a declaration that breaks the rules fails here, at start-up."""
    classes = {}
    for line in CATALOGUE:
        module, _, attr = line.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if cls.name in classes:
            raise TypeError(f"{line}: the name {cls.name!r} is taken by {classes[cls.name].__name__}")
        if cls.kind not in KINDS or not cls.description:
            raise TypeError(f"{line}: kind must be one of {', '.join(KINDS)} and description set")
        if (cls.kind == "detector") != (cls.region in REGIONS):
            raise TypeError(f"{line}: a detector, and only a detector, declares a region ({', '.join(REGIONS)})")
        classes[cls.name] = cls
    return classes


def names(*kinds: str) -> tuple[str, ...]:
    """The models of these kinds (all when none is given), in catalogue order."""
    return tuple(name for name, cls in model_classes().items() if not kinds or cls.kind in kinds)


def model_class(name: str) -> type[ImageModel]:
    return model_classes()[name]


def detector_for(region: str) -> str | None:
    """The detector that finds `region`, or None when the catalogue has none."""
    return next((name for name, cls in model_classes().items() if cls.region == region), None)


def embedders() -> dict[str, str]:
    """The router's embedding operation types -> the embedder each runs: embed_<name>."""
    return {f"embed_{name}": name for name in names("embedder")}


def load_models(wanted, settings, device: str) -> tuple[dict, dict]:
    """(loaded models by name, reasons by name for those that could not be loaded). Never raises."""
    from models.runtime import configure_worker

    configure_worker(settings)
    loaded, unavailable = {}, {}
    for name in wanted:
        try:
            model = model_class(name)(settings)
            model.load(device)
            loaded[name] = model
        except ModelUnavailable as exc:
            unavailable[name] = str(exc)
        except Exception as exc:  # a library's own failure (missing package, bad file) is still "unavailable"
            log.exception("loading %s failed", name)
            unavailable[name] = f"{type(exc).__name__}: {exc}"[:300]
        if name in unavailable:
            log.warning("model %s unavailable: %s", name, unavailable[name])
        metrics.model_available(name, name in loaded)
    return loaded, unavailable


def run_grouped(models: dict, groups: dict[str, list], on_failure, counters: dict | None = None, **params) -> dict:
    """One forward per model over its group of inputs: {name: results, one per input}. A model that fails
    gives each of its inputs `on_failure(name, exception)`, so a failure stays with its own requests."""
    out = {}
    for name, inputs in groups.items():
        if not inputs:
            continue
        try:
            if counters is not None:
                count(counters, name, len(inputs))
            with metrics.model_forward(name, len(inputs)):  # its batch size and time (GET /metrics)
                out[name] = models[name].forward(inputs, **params)
        except Exception as exc:
            log.exception("%s failed on a batch of %d", name, len(inputs))
            out[name] = [on_failure(name, exc)] * len(inputs)
    return out


def count(counters: dict, name: str, images: int) -> None:
    """How well requests are batched: per model, forward calls and images (GET /model_stats)."""
    entry = counters.setdefault(name, {"forward_calls": 0, "images": 0})
    entry["forward_calls"] += 1
    entry["images"] += images
