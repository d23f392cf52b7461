"""/analyze, /embed and /available_operations/ over HTTP, on a real server process whose models are
tiny real-architecture models (CLIP, BLIP), Faster R-CNN with random weights, the real MTCNN and
MobileNetV2 weights, and a trained classifier; DINOv2's weights are deliberately missing."""

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from classifier_training import train, write
from tests import photos
from tests.conftest import start_server
from tests.tiny_models import build_random_person_detector, build_tiny_blip, build_tiny_clip

ASTRONAUT_FACE = (181, 62, 268, 172)  # MTCNN on the 512x512 astronaut, checked by eye


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_tiny_clip(root / "open_clip" / "ViT-B-32" / "openai")  # found by the MODEL_DIR layout
    build_tiny_blip(root / "blip")
    build_random_person_detector(root / "frcnn-random.pth")
    rng = np.random.default_rng(0)  # a classifier over the tiny CLIP's 32-d embeddings
    model, _ = train(rng.normal(1, 1, (20, 32)), rng.normal(-1, 1, (20, 32)))
    write(root / "classifiers", 7, model, "embed_clip_vit_b_32", "whole_image", 32)
    return root


@pytest.fixture(scope="module")
def analyze_server(model_dir, cache_dir, server_logs):
    server = start_server(
        server_logs, "analyze", CAPABILITIES="analyze,embed", CACHE_DIR=cache_dir, MODEL_DIR=model_dir,
        CAPTION_MODEL=model_dir / "blip", PERSON_WEIGHTS=model_dir / "frcnn-random.pth", PERSON_MIN_SIZE=320,
        DINO_MODEL=model_dir / "no-dino-here", ANALYZE_MAX_BATCH_SIZE=8, ANALYZE_BATCH_TIMEOUT=0.2,
        EMBED_MAX_BATCH_SIZE=16, EMBED_BATCH_TIMEOUT=0.3, WORKERS_PER_DEVICE=1,
    )
    yield server.url
    server.stop()


def analyze(url, name, tasks, **kwargs):
    files = {"image_file": (f"{name}.png", photos.read(name))}
    return httpx.post(f"{url}/analyze_image_upload/", files=files, data={"tasks_json": json.dumps(tasks)},
                      timeout=120, **kwargs)


def test_available_operations_reports_missing_dino_and_everything_else_available(analyze_server):
    ops = httpx.get(f"{analyze_server}/available_operations/", timeout=10).json()["operations"]
    assert set(ops) == {"detect_bounding_box", "embed_clip_vit_b_32", "embed_dino_v2", "embed_mobilenet_v2",
                        "classify", "describe_image"}
    assert ops["embed_dino_v2"]["available"] is False
    assert "dino" in ops["embed_dino_v2"]["unavailable_models"]["dino_v2"].lower()
    assert all(ops[k]["available"] for k in ops if k != "embed_dino_v2")
    assert ops["detect_bounding_box"]["allowed_targets"] == ["prominent_person", "prominent_face"]


def test_astronaut_tasks_share_boxes_and_crops(analyze_server):
    tasks = [
        {"operation_id": "face", "type": "detect_bounding_box", "params": {"target": "prominent_face", "face_context": "whole_image"}},
        {"operation_id": "face_mobilenet", "type": "embed_mobilenet_v2", "params": {"target": "prominent_face", "face_context": "whole_image"}},
        {"operation_id": "clip", "type": "embed_clip_vit_b_32"},
        {"operation_id": "caption", "type": "describe_image", "params": {"max_length": 12}},
        {"operation_id": "member", "type": "classify", "params": {"collection_id": 7}},
        {"operation_id": "dino", "type": "embed_dino_v2"},
        {"operation_id": "bogus", "type": "embed_resnet"},
        {"operation_id": "bad_target", "type": "detect_bounding_box", "params": {"target": "whole_image"}},
    ]
    response = analyze(analyze_server, "astronaut", tasks)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_url"] == "uploaded:astronaut.png"
    results = body["results"]
    face = results["face"]
    assert face["status"] == "success" and all(abs(a - b) <= 4 for a, b in zip(face["data"], ASTRONAUT_FACE))
    crop = results["face_mobilenet"]
    assert crop["status"] == "success" and len(crop["data"]) == 1280
    assert crop["cropped_image_bbox"] == face["data"]  # the same face box, found once
    png = Image.open(io.BytesIO(base64.b64decode(crop["cropped_image_base64"])))
    x0, y0, x1, y1 = face["data"]
    assert png.format == "PNG" and png.size == (x1 - x0, y1 - y0)
    assert results["clip"]["status"] == "success" and len(results["clip"]["data"]) == 32
    assert results["clip"]["cropped_image_bbox"] is None
    assert results["caption"]["status"] == "success" and isinstance(results["caption"]["data"], str)
    assert set(results["member"]["data"]) == {"is_in_collection", "probability"}
    assert 0.0 <= results["member"]["data"]["probability"] <= 1.0
    assert results["dino"]["status"] == "error" and "dino_v2 is unavailable" in results["dino"]["error_message"]
    assert results["bogus"]["status"] == "error" and "unknown operation type" in results["bogus"]["error_message"]
    assert results["bad_target"]["status"] == "error" and "unsupported target" in results["bad_target"]["error_message"]


def test_no_face_is_skipped_and_detection_is_null(analyze_server):
    tasks = [
        {"operation_id": "face", "type": "detect_bounding_box", "params": {"target": "prominent_face", "face_context": "whole_image"}},
        {"operation_id": "face_clip", "type": "embed_clip_vit_b_32", "params": {"target": "prominent_face", "face_context": "whole_image"}},
    ]
    results = analyze(analyze_server, "coffee", tasks).json()["results"]
    assert results["face"]["status"] == "success" and results["face"]["data"] is None
    assert results["face_clip"]["status"] == "skipped" and "no prominent face" in results["face_clip"]["error_message"]


def test_json_body_with_base64_and_request_level_errors(analyze_server):
    data = base64.b64encode(photos.read("chelsea")).decode()
    ok = httpx.post(f"{analyze_server}/analyze", json={"image_base64": data, "tasks": [
        {"operation_id": "m", "type": "embed_mobilenet_v2"}]}, timeout=60)
    assert ok.status_code == 200 and ok.json()["results"]["m"]["status"] == "success"
    duplicate = [{"operation_id": "a", "type": "embed_mobilenet_v2"}, {"operation_id": "a", "type": "describe_image"}]
    for body, status in [({"image_base64": data, "tasks": duplicate}, 422), ({"image_base64": data, "tasks": []}, 422),
                         ({"tasks": [{"operation_id": "a", "type": "embed_mobilenet_v2"}]}, 422),
                         ({"image_url": "http://169.254.169.254/", "tasks": [{"operation_id": "a", "type": "classify"}]}, 400)]:
        response = httpx.post(f"{analyze_server}/analyze_image/", json=body, timeout=30)
        assert response.status_code == status, response.text
        assert isinstance(response.json()["detail"], str)
    bad_json = httpx.post(f"{analyze_server}/analyze", files={"image_file": ("c.png", photos.read("chelsea"))},
                          data={"tasks_json": "[not json"}, timeout=30)
    assert bad_json.status_code == 400 and "tasks_json" in bad_json.json()["detail"]


def _stats(url):
    return httpx.get(f"{url}/model_stats", timeout=10).json()["models"]


def test_concurrent_embeds_are_batched_and_equal_sequential_answers(analyze_server):
    names = ["astronaut", "chelsea", "coffee", "rocket"] * 4
    sequential = {}
    for name in names[:4]:
        r = httpx.post(f"{analyze_server}/embed", files={"image_file": (name, photos.read(name))},
                       data={"model": "mobilenet_v2"}, timeout=60)
        assert r.status_code == 200, r.text
        sequential[name] = np.array(r.json()["embedding"])
    before = _stats(analyze_server).get("mobilenet_v2", {"forward_calls": 0, "images": 0})

    async def fire():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[
                client.post(f"{analyze_server}/embed", files={"image_file": (n, photos.read(n))},
                            data={"model": "mobilenet_v2", "normalize": "true"}) for n in names])

    responses = asyncio.run(fire())
    after = _stats(analyze_server)["mobilenet_v2"]
    calls, images = after["forward_calls"] - before["forward_calls"], after["images"] - before["images"]
    assert images == len(names) and calls < len(names), (calls, images)  # fewer forwards than requests
    for name, response in zip(names, responses):
        body = response.json()
        assert response.status_code == 200 and body["dim"] == 1280 and body["normalized"] is True
        reference = sequential[name] / np.linalg.norm(sequential[name])
        assert float(np.dot(body["embedding"], reference)) > 1 - 1e-4  # batching does not change results


def test_embed_of_a_missing_model_is_503_and_unknown_model_422(analyze_server):
    files = {"image_file": ("c.png", photos.read("chelsea"))}
    missing = httpx.post(f"{analyze_server}/embed", files=files, data={"model": "dino_v2"}, timeout=30)
    assert missing.status_code == 503 and "dino_v2" in missing.json()["detail"]
    unknown = httpx.post(f"{analyze_server}/embed", files=files, data={"model": "resnet"}, timeout=30)
    assert unknown.status_code == 422


def run_client(capsys, *argv) -> tuple[int, dict | None, str]:
    import client

    code = client.main(list(argv))
    captured = capsys.readouterr()
    try:
        return code, json.loads(captured.out), captured.err
    except ValueError:
        return code, None, captured.err


def test_client_analyze_and_embed_commands(analyze_server, capsys):
    path = str(photos.path("astronaut"))
    code, body, _ = run_client(capsys, "--url", analyze_server, "analyze", path,
                               "--task", "detect_bounding_box:prominent_face,face_context=whole_image",
                               "--task", "embed_mobilenet_v2")
    assert code == 0
    assert body["results"]["detect_bounding_box_prominent_face"]["status"] == "success"
    assert len(body["results"]["embed_mobilenet_v2"]["data"]) == 1280
    code, body, _ = run_client(capsys, "--url", analyze_server, "embed", path, "--model", "mobilenet_v2", "--normalize")
    assert code == 0 and abs(np.linalg.norm(body["embedding"]) - 1) < 1e-5
    code, _, err = run_client(capsys, "--url", analyze_server, "embed", path, "--model", "dino_v2")
    assert code == 1 and err.startswith("error: HTTP 503")


def test_client_caption_folder_writes_skips_and_forces(analyze_server, tmp_path, capsys):
    for name in ("chelsea", "rocket"):
        (tmp_path / f"{name}{photos.path(name).suffix}").write_bytes(photos.read(name))
    code, summary, _ = run_client(capsys, "--url", analyze_server, "caption-folder", str(tmp_path), "--max-length", "8")
    assert code == 0 and summary["written"] == 2
    caption = (tmp_path / "chelsea.txt").read_text()
    assert caption.strip() and not list(tmp_path.glob("*.part"))
    (tmp_path / "chelsea.txt").write_text("kept\n")
    code, summary, _ = run_client(capsys, "--url", analyze_server, "caption-folder", str(tmp_path))
    assert code == 0 and summary["written"] == 0 and summary["skipped_existing"] == 2
    assert (tmp_path / "chelsea.txt").read_text() == "kept\n"
    code, summary, _ = run_client(capsys, "--url", analyze_server, "caption-folder", str(tmp_path), "--force")
    assert code == 0 and summary["written"] == 2 and (tmp_path / "chelsea.txt").read_text() != "kept\n"


def test_client_train_classifier_from_folders_then_classify(analyze_server, model_dir, tmp_path, capsys):
    # positives: scikit-image's colour photos; negatives: camera JPEG thumbnails and others
    groups = {"positives": ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "ihc"],
              "negatives": ["canon", "olympus", "sony", "flower", "iptc", "sugarshack"]}
    for group, names in groups.items():
        (tmp_path / group).mkdir()
        for name in names:
            (tmp_path / group / f"{name}{photos.path(name).suffix}").write_bytes(photos.read(name))
    code, body, err = run_client(
        capsys, "--url", analyze_server, "train-classifier", "--collection-id", "42", "--model", "mobilenet_v2",
        "--positives", str(tmp_path / "positives"), "--negatives", str(tmp_path / "negatives"),
        "--classifier-dir", str(model_dir / "classifiers"))
    assert code == 0, err
    assert set(body["report"]) >= {"precision", "recall"} and body["model_file"].endswith(".pkl")
    mapping = json.loads((model_dir / "classifiers" / "best_models.json").read_text())
    assert mapping["42"]["embedding_type"] == "embed_mobilenet_v2" and "7" in mapping  # the older entry is kept
    response = analyze(analyze_server, "astronaut", [{"operation_id": "c", "type": "classify", "params": {"collection_id": 42}}])
    result = response.json()["results"]["c"]
    assert result["status"] == "success" and result["data"]["is_in_collection"] is True  # a training positive


def test_concurrent_analyze_requests_are_batched_and_match_sequential(analyze_server):
    tasks = [
        {"operation_id": "face", "type": "detect_bounding_box", "params": {"target": "prominent_face", "face_context": "whole_image"}},
        {"operation_id": "face_clip", "type": "embed_clip_vit_b_32", "params": {"target": "prominent_face", "face_context": "whole_image"}},
        {"operation_id": "mobile", "type": "embed_mobilenet_v2"},
        {"operation_id": "person", "type": "detect_bounding_box"},
    ]
    names = ["astronaut", "chelsea", "coffee", "astronaut", "rocket", "chelsea"]
    sequential = {name: analyze(analyze_server, name, tasks).json()["results"] for name in set(names)}
    before = _stats(analyze_server)["mobilenet_v2"]

    async def fire():
        async with httpx.AsyncClient(timeout=180) as client:
            return await asyncio.gather(*[client.post(
                f"{analyze_server}/analyze", files={"image_file": (n, photos.read(n))},
                data={"tasks_json": json.dumps(tasks)}) for n in names])

    responses = asyncio.run(fire())
    after = _stats(analyze_server)["mobilenet_v2"]
    assert after["images"] - before["images"] == len(names)
    assert after["forward_calls"] - before["forward_calls"] < len(names)  # requests shared forwards
    for name, response in zip(names, responses):
        assert response.status_code == 200, response.text
        got, want = response.json()["results"], sequential[name]
        for op in ("face", "person"):
            assert got[op]["data"] == want[op]["data"]
        assert got["face_clip"]["status"] == want["face_clip"]["status"]
        for op in ("face_clip", "mobile"):
            if want[op]["status"] == "success":
                a, b = np.array(got[op]["data"]), np.array(want[op]["data"])
                assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 1 - 1e-4
