"""Collection classifiers: scikit-learn logistic regressions over image embeddings, one per collection.

The layout is the one existing classifier directories hold, so they serve unchanged: `best_models.json`
maps str(collection_id) to a file name (old format: CLIP ViT-B/32, whole image, 512-d) or to
{"model_file", "embedding_type" ("a+b" = concatenated in that order), "target" (or its older name
"derivative_type"), "dimensionality"}; models are joblib pickles.
This module reads them; classifier_training.py trains and writes them (for client.py's train-classifier).
"""

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from models.base import REGIONS, ModelUnavailable
from models.weights import model_dir

MAPPING = "best_models.json"
OLD_FORMAT = {"embedding_type": "embed_clip_vit_b_32", "target": "whole_image", "dimensionality": 512}
TARGETS = ("whole_image", *REGIONS)  # where a classifier's embeddings are taken


class UnknownCollection(ValueError):
    """No classifier is configured for this collection id."""


def classifier_directory(settings) -> Path:
    return Path(settings.classifier_dir) if settings.classifier_dir else model_dir(settings) / "classifiers"


@dataclass
class Classifier:
    collection_id: str
    embedding_types: list[str]
    target: str
    dimensionality: int
    model: object
    path: Path

    def predict(self, vectors: list[np.ndarray]) -> list[dict]:
        for i, vector in enumerate(vectors):
            if np.ndim(vector) != 1 or len(vector) != self.dimensionality:
                raise ValueError(f"vector {i} has shape {np.shape(vector)}; collection {self.collection_id} expects "
                                 f"{self.dimensionality} values ({'+'.join(self.embedding_types)})")
        if not vectors:
            return []
        x = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
        positive = list(self.model.classes_).index(True)  # classes_ may be [False, True] or [0, 1]
        probabilities = self.model.predict_proba(x)[:, positive]
        labels = self.model.predict(x)  # the model's own rule (probability > 0.5 for a logistic regression)
        return [{"is_in_collection": bool(label), "probability": float(p)} for label, p in zip(labels, probabilities)]


class CollectionClassifiers:
    def __init__(self, directory):
        self.directory = Path(directory)
        self._models: dict[Path, tuple[tuple, object]] = {}  # path -> ((mtime_ns, size), model)
        self._lock = threading.Lock()

    def mapping(self) -> dict[str, dict]:
        """best_models.json, every entry as {"model_file", "embedding_type", "target", "dimensionality"}."""
        try:
            raw = json.loads((self.directory / MAPPING).read_text())
            entries = {str(k): {"model_file": v, **OLD_FORMAT} if isinstance(v, str) else dict(v)
                       for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # unreadable, not JSON, not {id: str|dict}
            raise ModelUnavailable(f"{self.directory / MAPPING} could not be read: {exc}") from None
        return {key: {"model_file": e.get("model_file"),
                      "embedding_type": e.get("embedding_type", OLD_FORMAT["embedding_type"]),
                      "target": e.get("target", e.get("derivative_type", "whole_image")),
                      "dimensionality": e.get("dimensionality")} for key, e in entries.items()}

    def available_collections(self) -> list[dict]:
        return [{"id": int(key) if key.isdigit() else key, "embedding_type": e["embedding_type"], "target": e["target"]}
                for key, e in sorted(self.mapping().items(), key=lambda item: (len(item[0]), item[0]))]

    def get(self, collection_id) -> Classifier:
        key = str(collection_id)
        entry = self.mapping().get(key)
        if entry is None:
            raise UnknownCollection(f"no classifier for collection {key!r} in {self.directory / MAPPING}")
        if entry["target"] not in TARGETS:
            raise ModelUnavailable(f"collection {key}: target {entry['target']!r} is not one of {', '.join(TARGETS)}")
        path = self._model_path(key, entry["model_file"])
        model = self._load(path)
        expected = getattr(model, "n_features_in_", None)
        dimensionality = int(entry["dimensionality"] or expected or 0)
        if expected is not None and expected != dimensionality:
            raise ModelUnavailable(f"collection {key}: {path.name} takes {expected} values, not {dimensionality}")
        return Classifier(key, entry["embedding_type"].split("+"), entry["target"], dimensionality, model, path)

    def _model_path(self, key: str, name: str | None) -> Path:
        root = self.directory.resolve()
        if name:
            path = (root / name).resolve()
            if Path(name).is_absolute() or not path.is_relative_to(root):  # the mapping may only name files in here
                raise ModelUnavailable(f"collection {key}: model file {name!r} is outside {self.directory}; refused")
            return path
        # no file named: the newest by the date in its name (YYYY-MM-DD[_HHMMSS] sorts as text)
        pattern = re.compile(rf"collection_{re.escape(key)}_classifier_(\d{{4}}-\d\d-\d\d(?:_\d{{6}})?)\.pkl")
        dated = [(m.group(1), p) for p in root.glob("collection_*.pkl") if (m := pattern.fullmatch(p.name))]
        if not dated:
            raise ModelUnavailable(f"collection {key}: no model file named, no collection_{key}_classifier_<date>.pkl")
        return max(dated)[1]

    def _load(self, path: Path):
        try:
            stat = path.stat()
        except OSError:
            raise ModelUnavailable(f"classifier {path} is missing") from None
        with self._lock:  # one load per file even when worker threads ask at once
            cached = self._models.get(path)
            if cached and cached[0] == (stat.st_mtime_ns, stat.st_size):
                return cached[1]
            try:
                model = joblib.load(path)
            except Exception as exc:
                raise ModelUnavailable(f"classifier {path} could not be loaded: {exc}") from None
            if not hasattr(model, "predict_proba") or True not in list(getattr(model, "classes_", [])):
                raise ModelUnavailable(f"classifier {path} is not a fitted binary classifier with a True class")
            self._models[path] = ((stat.st_mtime_ns, stat.st_size), model)  # reloaded when the file changes
            return model

