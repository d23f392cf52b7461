"""The model catalogue (models/catalogue.py): every model declares what the server derives from it, the
declarations cost no torch, and a model added by one file plus one catalogue line reaches every list."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis import operations
from models import catalogue
from models.base import KINDS, REGIONS, EmbeddingModel
from settings import VARIABLES, load_settings

ROOT = Path(__file__).resolve().parent.parent


class MeanColourEmbedder(EmbeddingModel):
    """A whole (if small) embedder, as a newcomer would add one: the image's mean RGB, 3-d."""

    name = "mean_colour"
    kind = "embedder"
    description = "Mean RGB colour, 3-d"
    dim = 3

    def load(self, device: str) -> None:
        self.device = device

    def forward(self, images, **params):
        return [np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0) for image in images]


@pytest.fixture
def with_mean_colour(monkeypatch):
    """The catalogue with one more line, as in docs/architecture.md's example."""
    sys.modules[__name__].MeanColourEmbedder = MeanColourEmbedder
    monkeypatch.setattr(catalogue, "CATALOGUE", catalogue.CATALOGUE + (f"{__name__}:MeanColourEmbedder",))
    catalogue.model_classes.cache_clear()
    yield
    catalogue.model_classes.cache_clear()


def test_every_model_declares_a_kind_a_description_and_real_variables():
    classes = catalogue.model_classes()
    assert len(classes) == len(catalogue.CATALOGUE)
    for name, cls in classes.items():
        assert cls.name == name and cls.kind in KINDS and cls.description
        unknown = set(cls.reads) - set(VARIABLES)
        assert not unknown, f"{name} reads {unknown}, which settings.py does not define"
        assert (cls.region in REGIONS) == (cls.kind == "detector")


def test_reading_the_catalogue_and_the_operations_imports_no_torch():
    """The HTTP processes derive /available_operations/ and /embed's models without loading torch."""
    code = ("import sys; from models import catalogue; from analysis import operations; import settings; "
            "catalogue.model_classes(); settings.load_settings({'SEARCH_MODELS': 'mobilenet_v2'}); "
            "print(sorted(m for m in ('torch', 'torchvision', 'open_clip', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_lists_each_route_uses_are_the_catalogues():
    embedders = catalogue.names("embedder")
    assert embedders == ("clip_vit_b_32", "dino_v2", "mobilenet_v2")
    assert catalogue.embedders() == {f"embed_{name}": name for name in embedders}
    assert set(operations.OPERATIONS) == {*catalogue.embedders(), "detect_bounding_box", "classify", "describe_image"}
    assert operations.TARGETS == ("whole_image", "prominent_person", "prominent_face")
    assert operations.models_for_type("detect_bounding_box") == ("person_detector", "face_detector")


def test_a_declaration_that_breaks_the_rules_stops_start_up(monkeypatch):
    class Nameless(MeanColourEmbedder):
        kind = "classifier"

    sys.modules[__name__].Nameless = Nameless
    monkeypatch.setattr(catalogue, "CATALOGUE", (f"{__name__}:Nameless",))
    catalogue.model_classes.cache_clear()
    try:
        with pytest.raises(TypeError, match="kind must be one of"):
            catalogue.model_classes()
    finally:
        catalogue.model_classes.cache_clear()


def test_an_embedder_added_by_one_catalogue_line_reaches_every_list(with_mean_colour):
    assert "mean_colour" in catalogue.names("embedder")
    assert catalogue.embedders()["embed_mean_colour"] == "mean_colour"
    offered = operations._operations()
    assert offered["embed_mean_colour"].description == "Mean RGB colour, 3-d"
    assert offered["embed_mean_colour"].targets == operations.TARGETS
    assert load_settings({"SEARCH_MODELS": "mean_colour,mobilenet_v2"}).search_models == ("mean_colour", "mobilenet_v2")
    loaded, unavailable = catalogue.load_models(["mean_colour"], load_settings({}), "cpu")
    assert not unavailable
    vector = loaded["mean_colour"].forward([Image.new("RGB", (4, 4), (10, 20, 30))])[0]
    assert vector.tolist() == [10.0, 20.0, 30.0]


def test_one_model_failing_in_a_batch_fails_only_its_own_inputs():
    class Broken(MeanColourEmbedder):
        def forward(self, images, **params):
            raise RuntimeError("out of memory")

    models = {"good": MeanColourEmbedder(None), "bad": Broken(None)}
    counters = {}
    out = catalogue.run_grouped(models, {"good": [Image.new("RGB", (2, 2))] * 2, "bad": [Image.new("RGB", (2, 2))]},
                                lambda name, exc: f"{name}: {exc}", counters)
    assert len(out["good"]) == 2 and all(isinstance(v, np.ndarray) for v in out["good"])
    assert out["bad"] == ["bad: out of memory"]
    assert counters == {"good": {"forward_calls": 1, "images": 2}, "bad": {"forward_calls": 1, "images": 1}}
