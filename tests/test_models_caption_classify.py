"""The captioner (a tiny BLIP of the real architecture, saved as save_pretrained does) and the collection
classifiers (scikit-learn, both best_models.json formats, old and new). In-process, no HTTP, no downloads."""

import json
import os

import joblib
import numpy as np
import pytest
from PIL import Image

from classifier_training import train, write
from models.base import ModelUnavailable
from models.captioner import Captioner
from models.classifiers import CollectionClassifiers, UnknownCollection
from settings import Settings
from tests import photos
from tests.tiny_models import build_tiny_blip

os.environ["HF_HUB_OFFLINE"] = "1"
PHOTOS = ("astronaut", "chelsea", "coffee")


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    folder = build_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))
    settings = Settings(caption_model=str(folder), allow_downloads=False,
                        model_dir=str(tmp_path_factory.mktemp("models")))
    model = Captioner(settings)
    model.load("cpu")
    return model


@pytest.fixture(scope="module")
def images():
    return [Image.open(photos.path(name)).convert("RGB") for name in PHOTOS]


@pytest.mark.slow  # BLIP generation to max_length, one caption at a time: out of `make test-fast`
def test_captions_of_real_photos_batch_equals_one_by_one(captioner, images):
    batch = captioner.forward(images)
    assert len(batch) == 3 and all(isinstance(c, str) for c in batch)
    assert any(batch), "the tiny model should say something for at least one photo"
    assert all(c == " ".join(c.split()) for c in batch)  # whitespace collapsed
    assert batch == [captioner.forward([image])[0] for image in images]  # greedy: batch-independent
    assert captioner.forward([]) == []


@pytest.mark.slow  # BLIP generation to max_length, one caption at a time: out of `make test-fast`
def test_max_length_counts_tokens(captioner, images):
    tokenizer = captioner.processor.tokenizer
    long = captioner.forward(images, max_length=30)
    short = captioner.forward(images, max_length=4)
    for s, l in zip(short, long):
        tokens = tokenizer(s, add_special_tokens=False).input_ids
        assert len(tokens) <= 3  # max_length counts the [DEC] start token
        assert tokenizer(l, add_special_tokens=False).input_ids[: len(tokens)] == tokens  # greedy: a prefix
    with pytest.raises(ValueError, match="max_length"):
        captioner.forward(images, max_length=1)


def test_missing_caption_model_is_unavailable(tmp_path):
    settings = Settings(caption_model="nobody/no-such-blip", allow_downloads=False, model_dir=str(tmp_path))
    with pytest.raises(ModelUnavailable, match="nobody/no-such-blip"):
        Captioner(settings).load("cpu")


# ---------------------------------------------------------------- classifiers

def clusters(n_pos=60, n_neg=140, dim=32, seed=0):
    """Two Gaussian clusters of unit-norm vectors (embeddings are compared normalised) with distinct centres."""
    rng = np.random.default_rng(seed)
    centre_pos, centre_neg = rng.normal(size=dim), rng.normal(size=dim)
    pos = centre_pos + 0.6 * rng.normal(size=(n_pos, dim))
    neg = centre_neg + 0.6 * rng.normal(size=(n_neg, dim))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    return unit(pos).astype(np.float32), unit(neg).astype(np.float32)


def test_train_write_get_predict_round_trip(tmp_path):
    pos, neg = clusters()
    model, report = train(pos, neg)
    assert report["precision"] > 0.9 and report["recall"] > 0.9 and report["f1"] > 0.9
    assert (report["n_train"], report["n_test"], report["threshold"]) == (160, 40, 0.5)
    path = write(tmp_path, 7, model, "embed_clip_vit_b_32", "prominent_person", 32)
    assert path.parent == tmp_path and path.name.startswith("collection_7_classifier_")
    assert json.loads((tmp_path / "best_models.json").read_text())["7"]["model_file"] == path.name
    second = write(tmp_path, 7, model, "embed_clip_vit_b_32", "prominent_person", 32)  # same second: distinct name
    assert second.name > path.name and not list(tmp_path.glob("*.tmp"))

    store = CollectionClassifiers(tmp_path)
    classifier = store.get(7)
    assert classifier.embedding_types == ["embed_clip_vit_b_32"]
    assert (classifier.target, classifier.dimensionality) == ("prominent_person", 32)
    results = classifier.predict(list(pos[:5]) + list(neg[:5]))
    assert [r["is_in_collection"] for r in results] == [True] * 5 + [False] * 5
    assert all(r["probability"] > 0.5 for r in results[:5]) and all(r["probability"] < 0.5 for r in results[5:])
    assert store.get("7").model is classifier.model  # cached per file
    listed = store.available_collections()
    assert listed == [{"id": 7, "embedding_type": "embed_clip_vit_b_32", "target": "prominent_person"}]
    with pytest.raises(ValueError, match="expects 32 values"):
        classifier.predict([np.zeros(31, np.float32)])
    with pytest.raises(UnknownCollection, match="'8'"):
        store.get(8)


def test_classifier_directories_already_in_use_are_read_and_their_files_found(tmp_path):
    """The best_models.json entries existing classifier directories hold (a bare file name, or an object
    with "derivative_type" for the target) and how their files are found."""
    pos, neg = clusters(dim=512)
    model, _ = train(pos, neg)
    joblib.dump(model, tmp_path / "collection_3_compatible_classifier.pkl")
    joblib.dump(model, tmp_path / "collection_5_classifier_2024-01-02.pkl")
    joblib.dump(model, tmp_path / "collection_5_classifier_2024-03-01_120000.pkl")
    mapping = {
        "3": "collection_3_compatible_classifier.pkl",  # old format: CLIP, whole image, 512-d
        "5": {"embedding_type": "embed_clip_vit_b_32+embed_dino_v2", "derivative_type": "prominent_face"},
        "6": {"model_file": "../outside.pkl", "embedding_type": "embed_clip_vit_b_32"},
        "9": {"model_file": "collection_9_gone.pkl"},
    }
    (tmp_path / "best_models.json").write_text(json.dumps(mapping))
    store = CollectionClassifiers(tmp_path)

    old = store.get(3)
    assert (old.embedding_types, old.target, old.dimensionality) == (["embed_clip_vit_b_32"], "whole_image", 512)
    assert old.predict([pos[0]])[0]["is_in_collection"] is True
    newest = store.get("5")  # no file named: newest by the date in the name
    assert newest.path.name == "collection_5_classifier_2024-03-01_120000.pkl"
    assert newest.embedding_types == ["embed_clip_vit_b_32", "embed_dino_v2"] and newest.target == "prominent_face"
    with pytest.raises(ModelUnavailable, match="refused"):
        store.get(6)
    with pytest.raises(ModelUnavailable, match="missing"):
        store.get(9)

    # a retrained model replacing the file is picked up (mtime changed)
    flipped, _ = train(neg[:60], pos)
    joblib.dump(flipped, tmp_path / "collection_3_compatible_classifier.pkl")
    os.utime(tmp_path / "collection_3_compatible_classifier.pkl", ns=(1, 10**18))
    assert store.get(3).predict([pos[0]])[0]["is_in_collection"] is False
