"""POST /analyze (also /analyze_image/ and /analyze_image_upload/): a list of tasks on one image, batched.

Input: JSON {"image_url" | "image_base64", "tasks": [...]}, or multipart `image_file` + `tasks_json`.
Each task: {"operation_id", "type", "params"}. Answer: {"image_url", "results": {operation_id: result}}.
`predict` gets a batch of requests and runs each model once over all their images and crops.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from analysis.operations import MAX_ID_LENGTH, TaskError, parse_task
from analysis.runner import Analyzer
from apis.base import ImageAPI, ServerFault, error_response, log
from apis.handoff import Blob
from apis.model_status import write_counters, write_statuses
from apis.request_body import Upload, as_http_error, image_bytes, load_json, read_fields
from errors import InputError
from models.catalogue import names

IMAGE_FIELDS = ("image_url", "image_base64", "image_file", "content")
ROUTED_KINDS = ("detector", "embedder", "captioner")  # the models the router (analysis/runner.py) runs


@dataclass(frozen=True)
class AnalyzeRequest:
    image: Blob
    source: str  # echoed as "image_url": the URL, "uploaded:<name>" or "base64"
    tasks: list  # Task, or (operation_id, TaskError) for a task that cannot run


def image_field(fields: dict) -> str:
    present = [name for name in IMAGE_FIELDS if name in fields]
    if len(present) > 1:
        raise InputError(422, f"send one image, not {' and '.join(present)}")
    if not present:
        raise InputError(422, "missing image: send image_url or image_base64 (JSON), or image_file (multipart)")
    return present[0]


def parse_tasks(fields: dict, settings) -> list:
    """The request's tasks (JSON `tasks`, or multipart text `tasks_json`), at most MAX_TASKS of them."""
    raw = fields.get("tasks", fields.get("tasks_json"))
    if isinstance(raw, str):
        raw = load_json(raw, "tasks_json", settings.max_json_depth)
    if not isinstance(raw, list) or not raw:
        raise InputError(422, "tasks must be a non-empty list of {operation_id, type, params}")
    if len(raw) > settings.max_tasks:
        raise InputError(422, f"at most {settings.max_tasks} tasks per request (MAX_TASKS), got {len(raw)}")
    raw = [task for i, task in enumerate(raw) if task not in raw[:i]]  # a task sent twice is run once
    ids = [t.get("operation_id") if isinstance(t, dict) else None for t in raw]
    for op_id in ids:
        if not isinstance(op_id, str) or not op_id:
            raise InputError(422, "every task needs a non-empty string operation_id")
        if len(op_id) > MAX_ID_LENGTH:
            raise InputError(422, f"an operation_id is {len(op_id)} characters; the limit is {MAX_ID_LENGTH}")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(422, f"duplicate operation_id: {', '.join(duplicates)}")
    tasks = []
    for op_id, task in zip(ids, raw):
        try:
            tasks.append(parse_task(task))
        except TaskError as exc:
            tasks.append((op_id, exc))
    return tasks


async def read_analyze_request(request: Request):
    settings = request.app.state.settings
    try:
        fields = await read_fields(request, raw_field="image_file")
        field = image_field(fields)
        tasks = parse_tasks(fields, settings)
        data = await image_bytes(fields, field, settings)
    except InputError as exc:
        raise as_http_error(exc) from None
    value = fields[field]
    source = value.strip() if field == "image_url" else f"uploaded:{value.filename}" if isinstance(value, Upload) else "base64"
    with request.app.state.handoff.hold(data) as blob:
        yield AnalyzeRequest(blob, source[:2048], tasks)


class AnalyzeAPI(ImageAPI):
    def __init__(self, settings, status_dir: str):
        super().__init__(
            settings, api_path="/analyze",
            max_batch_size=settings.analyze_max_batch_size, batch_timeout=settings.analyze_batch_timeout,
        )
        self.status_dir = status_dir
        self.models_needed = names(*ROUTED_KINDS)

    def setup(self, device):
        from models.classifiers import CollectionClassifiers
        from models.catalogue import load_models

        models, unavailable = load_models(self.models_needed, self.settings, device)
        write_statuses(self.status_dir, self.models_needed, unavailable)
        classifiers = CollectionClassifiers(self.settings.classifier_dir or f"{self.settings.model_dir}/classifiers")
        self.analyzer = Analyzer(models, unavailable, classifiers)

    def decode_request(self, request: Annotated[AnalyzeRequest, Depends(read_analyze_request)]):
        decoded = self.decode(request.image)
        if isinstance(decoded, InputError):
            return decoded
        return request.source, decoded.image.convert("RGB"), request.tasks

    def infer(self, x):
        items = self.as_batch(x)
        valid = [i for i, item in enumerate(items) if isinstance(item, tuple)]
        outputs = list(items)
        try:
            results = self.analyzer.run([items[i][1] for i in valid], [items[i][2] for i in valid])
            for i, result in zip(valid, results):
                outputs[i] = {"image_url": items[i][0], "results": result}
        except Exception as exc:  # the Analyzer isolates model failures; anything else is our bug
            log.exception("analysis of a batch of %d failed", len(valid))
            for i in valid:
                outputs[i] = ServerFault(repr(exc))
        write_counters(self.status_dir, "analyze", self.analyzer.counters)
        return self.from_batch(outputs)

    def encode_response(self, output):
        return output if isinstance(output, dict) else error_response(output)
