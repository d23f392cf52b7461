"""CLIP image embeddings (open_clip): one vector per image.

Weights come only through models/weights.py: a folder with open_clip_config.json (MODEL_DIR/open_clip/
<arch>/<tag>/ or CLIP_PRETRAINED given as a folder) loads with open_clip's `local-dir:` schema; anything
else is an (arch, tag) pair resolved through the Hugging Face cache in MODEL_DIR/hub-cache.
"""

import contextlib

import numpy as np
from PIL import Image

from models import weights
from models.base import EmbeddingModel
from models.preprocess import centre_window, transform_window


class ClipEmbedder(EmbeddingModel):
    """`forward(images)` -> one unnormalised float32 vector of length `dim` per image (dim is known after load)."""

    name = "clip_vit_b_32"
    kind = "embedder"
    description = "CLIP ViT-B/32 image embedding (open_clip)"
    reads = ("CLIP_MODEL", "CLIP_PRETRAINED", "MODEL_DIR", "ALLOW_DOWNLOADS")

    def __init__(self, settings):
        super().__init__(settings)
        self.model = None
        self.preprocess = None
        self.dim = None
        self.window = None  # (short side, centre crop) of the val transform, when it resizes the short side

    def load(self, device: str) -> None:
        import open_clip

        weights.offline_guard(self.settings)
        arch, tag = self.settings.clip_model, self.settings.clip_pretrained
        try:
            model_name, pretrained, kwargs = weights.open_clip_source(self.settings, arch, tag)
            # open_clip 3 only *warns* when a tag was trained with QuickGELU (openai) and the built-in
            # config says GELU; the vectors would drift from those the weights were trained to give, so follow the tag
            tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if pretrained else {}
            # require_pretrained: a config folder without a weights file must fail, not give a random model
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained, require_pretrained=True,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu")), **kwargs,
            )
            model.eval().to(device)
        except Exception as exc:
            raise weights.describe_failure(exc, f"CLIP {arch}/{tag}") from exc
        self.model, self.preprocess, self.device = model, preprocess, device  # the *val* transform: no augmentation
        self.dim = int(model.visual.output_dim)
        self.window = transform_window(preprocess)
        # open_clip's image_size is the side its val transform resizes to (shortest-side mode) or
        # squashes/pads to: the short side never needs more pixels than that
        size = getattr(model.visual, "image_size", None)
        self.input_side = max(size) if isinstance(size, (tuple, list)) else int(size) if size else None

    def _bounded(self, image: Image.Image) -> Image.Image:
        return centre_window(image, *self.window) if self.window else image

    def _autocast(self):
        import torch

        # fp16 halves the time on a GPU; CPU stays fp32 (CPU half precision is slow and less exact)
        if str(self.device).startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def forward(self, images: list[Image.Image], **params) -> list[np.ndarray]:
        import torch

        if not images:
            return []
        batch = torch.stack([self.preprocess(self._bounded(image).convert("RGB")) for image in images]).to(self.device)
        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(batch)  # normalize=False: callers normalise if asked
        return list(features.float().cpu().numpy().astype(np.float32, copy=False))
