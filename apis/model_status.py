"""Which models each worker loaded, shared with the HTTP processes through small files.

Models load in the worker processes; GET /available_operations/ and GET /model_stats are answered by
the HTTP process, which holds no models. Each worker writes one status file per model after setup,
and its forward counters after every batch (the proof, and the measure, of cross-request batching).
"""

import json
import os
from pathlib import Path

from atomic_files import write_atomically


def write_status(directory: str, model: str, reason: str | None) -> None:
    write_atomically(Path(directory) / f"status-{model}.json", json.dumps({"model": model, "reason": reason}).encode())


def write_statuses(directory: str, models, unavailable: dict) -> None:
    for model in models:
        write_status(directory, model, unavailable.get(model))


def read_status(directory: str) -> dict[str, str | None]:
    """model -> None (loaded) or the reason it is not; models not reported yet are absent."""
    return {entry["model"]: entry["reason"] for entry in _read_all(directory, "status-*.json")}


def write_counters(directory: str, owner: str, counters: dict) -> None:
    """Forward calls and images per model, from one worker (file named by api and pid)."""
    write_atomically(Path(directory) / f"counters-{owner}-{os.getpid()}.json", json.dumps(counters).encode())


def read_counters(directory: str) -> dict:
    """Counters summed over every worker: model -> {forward_calls, images, mean_batch}."""
    total = {}
    for counters in _read_all(directory, "counters-*.json"):
        for model, entry in counters.items():
            into = total.setdefault(model, {"forward_calls": 0, "images": 0})
            into["forward_calls"] += entry["forward_calls"]
            into["images"] += entry["images"]
    for entry in total.values():
        entry["mean_batch"] = round(entry["images"] / entry["forward_calls"], 2) if entry["forward_calls"] else 0
    return total


def _read_all(directory: str, pattern: str):
    """The JSON of every worker's file matching `pattern`; one being replaced right now is skipped."""
    for path in Path(directory).glob(pattern):
        try:
            yield json.loads(path.read_text())
        except (OSError, ValueError):
            continue
