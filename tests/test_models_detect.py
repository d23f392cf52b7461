"""Person and face detectors in-process: MTCNN with its real (packaged) weights, Faster R-CNN with random
weights through the production loading path, and the prominent-person rule. No HTTP, no downloads."""

import os

import pytest
import torch
from PIL import Image
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from models.base import Box, ModelUnavailable
from models.face_detector import FaceDetector
from models.person_detector import PersonDetector, pick_prominent
from settings import Settings
from tests import photos

DEFAULT_WEIGHTS = Settings().person_weights


def photo(name: str) -> Image.Image:
    return Image.open(photos.path(name)).convert("RGB")


@pytest.fixture(scope="module")
def faces():
    detector = FaceDetector(Settings())
    detector.load("cpu")
    return detector


def test_face_in_whole_image_and_in_a_region(faces):
    astronaut = photo("astronaut")  # 512x512; her face spans about x 181-268, y 62-172
    whole, inside, none_region = faces.forward(
        [astronaut] * 3, regions=[None, Box(100, 0, 400, 512, 1.0), Box(0, 300, 100, 400, 1.0)]
    )
    assert whole.score > 0.99 and 150 <= whole.x0 < whole.x1 <= 300 and 40 <= whole.y0 < whole.y1 <= 220
    assert 60 <= whole.x1 - whole.x0 <= 130 and 80 <= whole.y1 - whole.y0 <= 150
    # found in the crop, reported in full-image coordinates
    assert all(abs(a - b) <= 5 for a, b in zip(inside.as_list(), whole.as_list())), (inside, whole)
    assert none_region is None


def test_no_face(faces):
    assert faces.forward([photo("coffee"), photo("rocket")]) == [None, None]
    # regions too small for MTCNN's pyramid, or outside the image, are "no face", not an error
    assert faces.forward([photo("astronaut")] * 2, [Box(0, 0, 10, 10, 1.0), Box(600, 600, 700, 700, 1.0)]) == [None] * 2


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """The real architecture with random weights, biased towards "person" so that detections exist."""
    torch.manual_seed(0)
    state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    state["roi_heads.box_predictor.cls_score.bias"][1] = 5.0
    path = tmp_path_factory.mktemp("weights") / "person.pth"
    torch.save(state, path)
    return str(path)


@pytest.mark.slow  # random-weight Faster R-CNN, nine forward passes: out of `make test-fast`
def test_person_detector_batched_equals_one_by_one(random_weights, tmp_path):
    detector = PersonDetector(Settings(person_weights=random_weights, person_min_size=128, model_dir=str(tmp_path)))
    detector.load("cpu")
    images = [photo("astronaut"), photo("coffee"), photo("rocket")]  # two padded shapes: 128x128 and 128x192
    batched = detector.forward(images)
    assert len(batched) == 3 and any(batched)
    for box, image in zip(batched, images):
        assert box is None or (0 <= box.x0 < box.x1 <= image.width and 0 <= box.y0 < box.y1 <= image.height)
    for box, image in zip(batched, images):
        (alone,) = detector.forward([image])
        assert (box is None) == (alone is None)
        if box:
            assert all(abs(a - b) <= 1 for a, b in zip(box.as_list(), alone.as_list()))
            assert box.score == pytest.approx(alone.score, abs=1e-4)
    by_area = detector.forward(images, prominent="area")
    assert all(a is None or a.area >= (b.area if b else 0) for a, b in zip(by_area, batched))
    with pytest.raises(ValueError):
        detector.forward(images, prominent="biggest")


def test_person_weights_missing_or_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no stray hub-cache copy
    offline = dict(model_dir=str(tmp_path), allow_downloads=False)
    with pytest.raises(ModelUnavailable, match=DEFAULT_WEIGHTS):
        PersonDetector(Settings(**offline)).load("cpu")
    with pytest.raises(ModelUnavailable, match="no such file"):
        PersonDetector(Settings(person_weights=str(tmp_path / "nope" / "x.pth"), **offline)).load("cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ModelUnavailable):
        PersonDetector(Settings(person_weights=str(junk), **offline)).load("cpu")
    (tmp_path / "torchvision").mkdir()  # the default name in MODEL_DIR, but not the file its hash names
    (tmp_path / "torchvision" / DEFAULT_WEIGHTS).write_bytes(os.urandom(4096))
    with pytest.raises(ModelUnavailable, match="sha256"):
        PersonDetector(Settings(**offline)).load("cpu")
    wrong = tmp_path / "wrong.pth"  # readable, but not this architecture's state dict
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ModelUnavailable, match="Faster R-CNN"):
        PersonDetector(Settings(person_weights=str(wrong), **offline)).load("cpu")


def test_pick_prominent():
    boxes = [[10, 10, 30, 30], [0, 0, 90, 90], [0, 0, 100, 100], [50, 50, 50, 80], [200, 200, 300, 300]]
    scores = [0.9, 0.6, 0.99, 0.95, 0.97]
    labels = [1, 1, 3, 1, 1]  # a car (3) outscores and outsizes every person; it must be ignored
    # box 3 has zero width, box 4 lies outside the 100x100 image: both are dropped
    assert pick_prominent(boxes, scores, labels, 100, 100, "score") == Box(10, 10, 30, 30, 0.9)
    assert pick_prominent(boxes, scores, labels, 100, 100, "area") == Box(0, 0, 90, 90, 0.6)
    assert pick_prominent([[-5, -5, 120, 50]], [0.5], [1], 100, 100) == Box(0, 0, 100, 50, 0.5)  # clamped
    assert pick_prominent(boxes, scores, [2] * 5, 100, 100) is None
    assert pick_prominent([], [], [], 100, 100) is None
