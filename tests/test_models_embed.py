"""The embedding models in-process: tiny CLIP and DINOv2 of the real architectures, saved the way the
loaders read them, and MobileNetV2 with the real packaged ImageNet weights. No HTTP, no downloads."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: it reads this once
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import io  # noqa: E402
import shutil  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from models import weights  # noqa: E402
from models.base import ModelUnavailable  # noqa: E402
from models.clip import ClipEmbedder  # noqa: E402
from models.dino import DinoEmbedder  # noqa: E402
from models.mobilenet import FILENAME, MobileNetEmbedder, imagenet_transform  # noqa: E402
from settings import Settings  # noqa: E402
from tests import photos  # noqa: E402
from tests.tiny_models import TINY_CLIP_CFG, build_tiny_clip, build_tiny_dino  # noqa: E402

BATCH = ["astronaut", "coffee", "chelsea", "rocket"]  # different sizes: 512x512, 400x600, 300x451, 427x640


def photo(name: str) -> Image.Image:
    return Image.open(io.BytesIO(photos.read(name))).convert("RGB")


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def images():
    return [photo(name) for name in BATCH]


@pytest.fixture(scope="module")
def base_settings(tmp_path_factory):
    """Downloads off and an empty MODEL_DIR: only what a test puts there (or a package ships) loads."""
    return Settings(model_dir=str(tmp_path_factory.mktemp("model-dir")), allow_downloads=False)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def tiny_dino_dir(tmp_path_factory):
    return build_tiny_dino(tmp_path_factory.mktemp("tiny-dino"))


@pytest.fixture(scope="module")
def clip(base_settings, tiny_clip_dir):
    model = ClipEmbedder(replace(base_settings, clip_pretrained=str(tiny_clip_dir)))
    model.load("cpu")
    return model


@pytest.fixture(scope="module")
def dino(base_settings, tiny_dino_dir):
    model = DinoEmbedder(replace(base_settings, dino_model=str(tiny_dino_dir)))
    model.load("cpu")
    return model


@pytest.fixture(scope="module")
def mobilenet(base_settings):
    model = MobileNetEmbedder(base_settings)
    model.load("cpu")
    return model


@pytest.fixture(scope="module", params=["clip", "dino", "mobilenet"])
def embedder(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------- every model


def test_batch_equals_one_at_a_time(embedder, images):
    batched = embedder.forward(images)
    assert len(batched) == len(images)
    for image, vector in zip(images, batched):
        (single,) = embedder.forward([image])
        assert vector.dtype == np.float32 and vector.shape == (embedder.dim,)
        assert single.dtype == np.float32 and single.shape == (embedder.dim,)
        assert np.isfinite(vector).all()
        assert 1 - cosine(vector, single) < 1e-4
        np.testing.assert_allclose(vector, single, rtol=1e-3, atol=1e-4 * np.abs(single).max())
    # not normalised, and different photos give different vectors
    assert any(abs(np.linalg.norm(v) - 1) > 1e-3 for v in batched)
    assert cosine(batched[0], batched[1]) < 0.9999


def test_empty_batch_and_non_rgb_input(embedder, images):
    assert embedder.forward([]) == []
    grey, rgba = images[0].convert("L"), images[0].convert("RGBA")
    rgb = embedder.forward([images[0].convert("L").convert("RGB")])[0]
    for vector in embedder.forward([grey, rgba]):
        assert vector.shape == (embedder.dim,)
    assert 1 - cosine(embedder.forward([grey])[0], rgb) < 1e-5


# ---------------------------------------------------------------- CLIP


def test_clip_loads_the_saved_weights_with_the_val_transform(clip, tiny_clip_dir, images):
    import open_clip
    from safetensors.torch import load_file

    assert clip.name == "clip_vit_b_32" and clip.dim == TINY_CLIP_CFG["embed_dim"]
    assert isinstance(clip.model, open_clip.model.CLIP) and not clip.model.training
    reference = open_clip.model.CLIP(**TINY_CLIP_CFG).eval()
    reference.load_state_dict(load_file(str(tiny_clip_dir / "open_clip_model.safetensors")))
    # the inference transform, by hand: shortest side to 64 (bicubic), centre crop, OpenAI mean/std
    image = images[1]
    scale = 64 / min(image.size)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (resized.width - 64) // 2, (resized.height - 64) // 2
    crop = np.asarray(resized.crop((left, top, left + 64, top + 64)), np.float32) / 255
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    pixels = torch.from_numpy(((crop - mean) / std).transpose(2, 0, 1).astype(np.float32))[None]
    with torch.inference_mode():
        expected = reference.encode_image(pixels)[0].numpy()
    assert 1 - cosine(clip.forward([image])[0], expected) < 1e-3  # PIL vs torchvision bicubic differ slightly


def test_clip_from_model_dir_layout(base_settings, tiny_clip_dir, clip, images):
    settings = replace(base_settings, clip_model="ViT-B-32", clip_pretrained="tiny")
    shutil.copytree(tiny_clip_dir, weights.model_dir(settings) / "open_clip" / "ViT-B-32" / "tiny")
    model = ClipEmbedder(settings)
    model.load("cpu")
    np.testing.assert_allclose(model.forward(images[:1])[0], clip.forward(images[:1])[0], rtol=1e-5, atol=1e-6)


def test_clip_missing_weights(base_settings, tmp_path):
    missing = tmp_path / "no-such-clip-folder"
    with pytest.raises(ModelUnavailable, match="no-such-clip-folder"):
        ClipEmbedder(replace(base_settings, clip_pretrained=str(missing))).load("cpu")
    with pytest.raises(ModelUnavailable, match="ViT-Nope-32"):
        ClipEmbedder(replace(base_settings, clip_model="ViT-Nope-32")).load("cpu")


def test_clip_config_without_weights_is_unavailable(base_settings, tiny_clip_dir, tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(tiny_clip_dir / "open_clip_config.json", folder)
    with pytest.raises(ModelUnavailable, match="could not be loaded"):  # not a randomly initialised model
        ClipEmbedder(replace(base_settings, clip_pretrained=str(folder))).load("cpu")


# ---------------------------------------------------------------- DINOv2


def test_dino_embedding_is_the_cls_token(dino, images):
    assert dino.name == "dino_v2" and dino.dim == 32
    inputs = dino.processor(images=images[:2], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (2, 3, 224, 224)
    with torch.inference_mode():
        output = dino.model(**inputs)
    cls = output.last_hidden_state[:, 0].numpy()
    for vector, expected in zip(dino.forward(images[:2]), cls):
        np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-5)


def test_dino_missing_weights(base_settings):
    with pytest.raises(ModelUnavailable, match="facebook/no-such-dinov2"):
        DinoEmbedder(replace(base_settings, dino_model="facebook/no-such-dinov2")).load("cpu")


def test_dino_folder_that_does_not_exist_is_named_as_a_missing_folder(base_settings, tmp_path):
    with pytest.raises(ModelUnavailable, match=f"folder {tmp_path / 'nope'} not found"):
        DinoEmbedder(replace(base_settings, dino_model=str(tmp_path / "nope"))).load("cpu")
    with pytest.raises(ModelUnavailable, match="has no config.json"):
        DinoEmbedder(replace(base_settings, dino_model=str(tmp_path))).load("cpu")


# ---------------------------------------------------------------- MobileNetV2 (real ImageNet weights)


def test_mobilenet_verifies_the_packaged_hash(base_settings, monkeypatch):
    checked = []
    original = weights.check_hash
    monkeypatch.setattr(weights, "check_hash", lambda path: (checked.append(path), original(path))[1])
    MobileNetEmbedder(base_settings).load("cpu")
    assert [p.name for p in checked] == [FILENAME]


def test_mobilenet_corrupt_copy_is_refused(tmp_path):
    settings = Settings(model_dir=str(tmp_path), allow_downloads=False)
    target = tmp_path / "torchvision" / FILENAME
    target.parent.mkdir()
    data = bytearray(weights._packaged(FILENAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailable, match="sha256"):
        MobileNetEmbedder(settings).load("cpu")


def test_mobilenet_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "PACKAGED", {})
    hub_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(ModelUnavailable, match=f"{FILENAME} not found.*ALLOW_DOWNLOADS is off"):
            MobileNetEmbedder(Settings(model_dir=str(tmp_path / "models"), allow_downloads=False)).load("cpu")
    finally:
        torch.hub.set_dir(hub_dir)


def test_mobilenet_transform_matches_torchvision(images):
    from torchvision.models import MobileNet_V2_Weights

    reference = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()  # the preset itself, no weights fetched
    for image in images[:2]:
        torch.testing.assert_close(imagenet_transform()(image), reference(image), atol=1e-5, rtol=0)


def test_mobilenet_features_are_imagenet_features(mobilenet, base_settings):
    """The 1280-d vector is what the real classifier reads: chelsea comes out as a cat."""
    state = weights.torchvision_state_dict(base_settings, FILENAME, "")
    (vector,) = mobilenet.forward([photo("chelsea")])
    logits = state["classifier.1.weight"].numpy() @ vector + state["classifier.1.bias"].numpy()
    assert int(np.argmax(logits)) in range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_mobilenet_similar_photos_are_close(mobilenet):
    astronaut = photo("astronaut")
    out = io.BytesIO()
    astronaut.resize((400, 400), Image.BILINEAR).save(out, format="JPEG", quality=75)
    copy = Image.open(io.BytesIO(out.getvalue())).convert("RGB")
    original, recompressed, coffee = mobilenet.forward([astronaut, copy, photo("coffee")])
    same, different = cosine(original, recompressed), cosine(original, coffee)
    assert same > 0.9
    assert different < same - 0.2


# ---------------------------------------------------------------- decoding large JPEGs smaller (/embed)


def test_each_model_reports_the_short_side_its_preprocessing_resizes_to(clip, dino, mobilenet):
    assert mobilenet.input_side == 256  # torchvision's recipe: resize 256, crop 224
    assert clip.input_side == TINY_CLIP_CFG["vision_cfg"]["image_size"]
    assert dino.input_side == dino.processor.size["shortest_edge"]


def test_draft_decode_at_twice_the_input_side_keeps_mobilenet_embeddings(mobilenet):
    """/embed decodes a large JPEG at >= 2x the model's input side: fewer pixels, nearly the same vector."""
    from apis.embed import DRAFT_OVERSAMPLE
    from images.decode import DecodeLimits, decode_image

    for name in ["astronaut", "coffee", "brick", "ihc"]:  # brick and ihc: fine texture, the hardest case
        big = photo(name).resize((2048, 2048), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        big.save(out, "JPEG", quality=90)
        full = decode_image(out.getvalue(), DecodeLimits()).image
        reduced = decode_image(out.getvalue(), DecodeLimits(), min_side=mobilenet.input_side * DRAFT_OVERSAMPLE).image
        assert full.size == (2048, 2048) and reduced.size == (512, 512)  # libjpeg decoded at 1/4 scale
        a, b = mobilenet.forward([full.convert("RGB"), reduced.convert("RGB")])
        assert cosine(a, b) > 0.998, name
