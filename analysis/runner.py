"""Run the tasks of a batch of /analyze requests, one stage at a time, each model once per stage.

Stages: person boxes -> face boxes -> crops -> embeddings (per model) -> captions -> classifiers.
A box, crop or embedding that several tasks (of one request or of several) need is computed once:
results are keyed by (request index, region). A model that is unavailable or fails turns only the
tasks that need it into errors.
"""

import base64
import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from analysis.operations import Task, TaskError
from models.base import Box
from models.catalogue import detector_for, embedders, names, run_grouped

log = logging.getLogger("imageserver.analyze")


@dataclass
class Region:
    """The part of one request's image that tasks look at."""

    image: Image.Image | None  # None: nothing to look at (no face); `error` says why
    box: Box | None = None  # set when the region is a crop
    error: str | None = None
    skipped: bool = False


def png_base64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


class Analyzer:
    def __init__(self, models: dict, unavailable: dict[str, str], classifiers=None):
        self.models = models  # name -> loaded model
        self.unavailable = unavailable  # name -> reason
        self.classifiers = classifiers
        self.counters = {}  # model -> {"forward_calls", "images"}: how well requests were batched
        self.embedders = embedders()  # operation type -> model
        self.person, self.face = detector_for("prominent_person"), detector_for("prominent_face")
        self.captioner = next(iter(names("captioner")), None)

    def _run_stage(self, name: str | None, images: list, **params) -> list:
        """model.forward over `images`, or one error per item when the model is missing or fails (a model
        bug must not take the batch's other stages with it)."""
        if not images:
            return []
        if name not in self.models:
            why = self.unavailable.get(name, "not loaded") if name else "the catalogue has no such model"
            return [TaskError(f"{name or 'a model'} is unavailable: {why}")] * len(images)
        failed = lambda model, exc: TaskError(f"{model} failed: {exc}")  # noqa: E731
        return run_grouped(self.models, {name: images}, failed, self.counters, **params)[name]

    def run(self, images: list[Image.Image], task_lists: list[list]) -> list[dict]:
        plans = [[self._resolve(task) for task in tasks] for tasks in task_lists]
        regions = self._regions(images, plans)
        embeddings = self._embeddings(regions, plans)
        captions = self._captions(regions, plans)
        return [
            {item.operation_id if isinstance(item, Task) else item[0]: self._result(i, item, regions, embeddings, captions)
             for item in plan}
            for i, plan in enumerate(plans)
        ]

    def _resolve(self, item):
        """Classify tasks take their target and embeddings from the classifier: it was trained on those alone."""
        if not isinstance(item, Task) or item.type != "classify":
            return item
        try:
            if self.classifiers is None:
                raise TaskError("no classifier directory is configured (CLASSIFIER_DIR)")
            classifier = self.classifiers.get(item.params["collection_id"])
        except Exception as exc:
            return (item.operation_id, TaskError(str(exc)))
        resolved = Task(item.operation_id, item.type, classifier.target, item.face_context, item.prominent,
                        {**item.params, "classifier": classifier})
        return resolved

    def _regions(self, images, plans) -> dict:
        wanted = {(i, t.region) for i, plan in enumerate(plans) for t in plan if isinstance(t, Task)}
        person_keys = sorted({(i, r[1]) for i, r in wanted if r[0] == "prominent_person"}
                             | {(i, r[2]) for i, r in wanted if r[0] == "prominent_face" and r[1] == "prominent_person"})
        persons = {}
        for mode in ("score", "area"):
            keys = [k for k in person_keys if k[1] == mode]
            for key, box in zip(keys, self._run_stage(self.person, [images[i] for i, _ in keys], prominent=mode)):
                persons[key] = box
        face_keys = sorted({(i, r) for i, r in wanted if r[0] == "prominent_face"})
        search_in = []
        for i, (_, context, mode) in face_keys:
            person = persons.get((i, mode)) if context == "prominent_person" else None
            search_in.append(person if isinstance(person, Box) else None)  # no person: search the whole image
        faces = dict(zip(face_keys, self._run_stage(self.face, [images[i] for i, _ in face_keys], regions=search_in)))
        out = {}
        for i, region in wanted:
            if region[0] == "whole_image":
                out[i, region] = Region(images[i])
                continue
            found = persons.get((i, region[1])) if region[0] == "prominent_person" else faces.get((i, region))
            if isinstance(found, Exception):
                out[i, region] = Region(None, error=str(found))
            elif region[0] == "prominent_person" and found is None:
                out[i, region] = Region(images[i])  # no person: the whole image, as /analyze's clients expect
            elif found is None:
                out[i, region] = Region(None, error="no prominent face found", skipped=True)
            else:
                out[i, region] = Region(images[i].crop(found.as_list()), box=found)
        return out

    def _embeddings(self, regions, plans) -> dict:
        needs = {}  # model name -> [(i, region)]
        for i, plan in enumerate(plans):
            for task in plan:
                if not isinstance(task, Task):
                    continue
                kinds = task.params["classifier"].embedding_types if task.type == "classify" else [task.type]
                for kind in kinds:
                    if kind in self.embedders and regions[i, task.region].image is not None:
                        needs.setdefault(self.embedders[kind], set()).add((i, task.region))
        out = {}
        for name, keys in needs.items():
            keys = sorted(keys)
            vectors = self._run_stage(name, [regions[k].image for k in keys])
            out.update({(name, *k): v for k, v in zip(keys, vectors)})
        return out

    def _captions(self, regions, plans) -> dict:
        wanted = {(i, t.region, t.params["max_length"]) for i, plan in enumerate(plans) for t in plan
                  if isinstance(t, Task) and t.type == "describe_image" and regions[i, t.region].image is not None}
        out = {}
        for length in sorted({w[2] for w in wanted}):
            keys = sorted(k for k in wanted if k[2] == length)
            texts = self._run_stage(self.captioner, [regions[k[0], k[1]].image for k in keys], max_length=length)
            out.update(zip(keys, texts))
        return out

    def _result(self, i, item, regions, embeddings, captions) -> dict:
        result = {"status": "success", "data": None, "cropped_image_bbox": None,
                  "cropped_image_base64": None, "error_message": None}
        if not isinstance(item, Task):
            error = item[1] if isinstance(item, tuple) else item
            return {**result, "status": "error", "error_message": str(error)}
        region = regions[i, item.region]
        if region.error and not (item.type == "detect_bounding_box" and region.skipped):
            return {**result, "status": "skipped" if region.skipped else "error", "error_message": region.error}
        if region.box is not None and item.type != "classify":
            result["cropped_image_bbox"] = region.box.as_list()
            if item.type != "detect_bounding_box":
                result["cropped_image_base64"] = png_base64(region.image)
        try:
            result["data"] = self._data(i, item, region, embeddings, captions)
        except TaskError as exc:
            return {**result, "status": "error", "error_message": str(exc), "data": None}
        if item.type == "classify" and region.box is not None:
            result["cropped_image_bbox"] = region.box.as_list()
        return result

    def _data(self, i, item, region, embeddings, captions):
        if item.type == "detect_bounding_box":
            return region.box.as_list() if region.box is not None else None
        if item.type in self.embedders:
            return _vector(embeddings.get((self.embedders[item.type], i, item.region))).tolist()
        if item.type == "describe_image":
            return _value(captions.get((i, item.region, item.params["max_length"])))
        classifier = item.params["classifier"]
        unserved = [k for k in classifier.embedding_types if k not in self.embedders]
        if unserved:
            raise TaskError(f"the classifier needs {', '.join(unserved)}, which this server does not compute")
        parts = [_vector(embeddings.get((self.embedders[k], i, item.region))) for k in classifier.embedding_types]
        try:
            return classifier.predict([np.concatenate(parts)])[0]
        except ValueError as exc:
            raise TaskError(str(exc)) from None


def _value(value):
    if value is None:
        raise TaskError("no result was computed")
    if isinstance(value, Exception):
        raise TaskError(str(value))
    return value


def _vector(value) -> np.ndarray:
    return np.asarray(_value(value), dtype=np.float32)
