"""Training and saving collection classifiers, for client.py's train-classifier command.

The server only reads classifiers (models/classifiers.py, which owns the file layout: `best_models.json`
and the joblib pickles it names); this module makes them: a logistic regression over image
embeddings, and the files written so that a server reading them at the same time never sees half of one.
"""

import fcntl
import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import joblib
import numpy as np

from atomic_files import write_atomically
from models.classifiers import MAPPING, TARGETS

_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def train(positives: np.ndarray, negatives: np.ndarray, seed: int = 42) -> tuple[object, dict]:
    """A balanced logistic regression, like the classifiers best_models.json already names, scored on a
    stratified 80/20 hold-out, then refit on everything."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import precision_recall_fscore_support
    from sklearn.model_selection import train_test_split

    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1] or min(len(pos), len(neg)) < 5:
        raise ValueError(f"need (n, d) arrays with one d and n >= 5 each; got {pos.shape} and {neg.shape}")
    x, y = np.vstack([pos, neg]), np.r_[np.ones(len(pos), dtype=bool), np.zeros(len(neg), dtype=bool)]

    def fresh():
        return LogisticRegression(class_weight="balanced", C=0.1, solver="liblinear", random_state=seed)

    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    predicted = fresh().fit(x_train, y_train).predict(x_test)
    precision, recall, f1, _ = precision_recall_fscore_support(y_test, predicted, average="binary", zero_division=0)
    report = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
              "n_train": len(y_train), "n_test": len(y_test), "threshold": 0.5}
    return fresh().fit(x, y), report


def write(directory, collection_id, model, embedding_type: str, target: str, dimensionality: int) -> Path:
    """Save `model` as collection_{id}_classifier_{YYYY-MM-DD_HHMMSS}.pkl and point best_models.json at it."""
    key, directory = str(collection_id), Path(directory)
    if not _ID.match(key) or target not in TARGETS or not all(embedding_type.split("+")):
        raise ValueError(f"bad collection id {key!r}, target {target!r} or embedding type {embedding_type!r}")
    if getattr(model, "n_features_in_", dimensionality) != dimensionality:
        raise ValueError(f"the model takes {model.n_features_in_} values, not {dimensionality}")
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".best_models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent trainings must not lose each other's mapping entries
        when = datetime.now()
        while (path := directory / f"collection_{key}_classifier_{when:%Y-%m-%d_%H%M%S}.pkl").exists():
            when += timedelta(seconds=1)  # two runs in one second still get distinct names, in order
        # owner-only permissions (0o600), as the tempfile.mkstemp these were written through made them
        write_atomically(path, lambda out: joblib.dump(model, out), mode=0o600)
        mapping = json.loads((directory / MAPPING).read_text()) if (directory / MAPPING).exists() else {}
        # "derivative_type" is target's older name, which older readers of best_models.json look for
        mapping[key] = {"model_file": path.name, "embedding_type": embedding_type, "target": target,
                        "derivative_type": target, "dimensionality": int(dimensionality)}
        write_atomically(directory / MAPPING, (json.dumps(mapping, indent=2) + "\n").encode(), mode=0o600)
    return path
