"""Every model class by its stable name, imported only where it is loaded (the model workers)."""

import importlib
import logging

from models.base import ModelUnavailable
from models.runtime import configure_worker

log = logging.getLogger("imageserver.models")

MODEL_CLASSES = {
    "person_detector": "models.person_detector:PersonDetector",
    "face_detector": "models.face_detector:FaceDetector",
    "clip_vit_b_32": "models.clip:ClipEmbedder",
    "dino_v2": "models.dino:DinoEmbedder",
    "mobilenet_v2": "models.mobilenet:MobileNetEmbedder",
    "captioner": "models.captioner:Captioner",
}
EMBEDDING_MODELS = ("clip_vit_b_32", "dino_v2", "mobilenet_v2")


def model_class(name: str):
    module, _, attr = MODEL_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def load_models(names, settings, device: str) -> tuple[dict, dict]:
    """(loaded models by name, reasons by name for those that could not be loaded). Never raises."""
    configure_worker(settings)
    loaded, unavailable = {}, {}
    for name in names:
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
    return loaded, unavailable
