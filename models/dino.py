"""DINOv2 image embeddings (transformers): one vector per image.

DINO_MODEL is a repo id (found in MODEL_DIR/huggingface/<id>/ or the cache MODEL_DIR/hub-cache) or a
folder written by `save_pretrained`; models/weights.py decides which.
"""

import numpy as np
from PIL import Image

from models import weights
from models.base import EmbeddingModel
from models.preprocess import centre_window, processor_window


class DinoEmbedder(EmbeddingModel):
    """`forward(images)` -> one unnormalised float32 vector of length `dim` (hidden size) per image.

    The embedding is `pooler_output` when the model returns one, else the CLS token
    `last_hidden_state[:, 0]`. For Dinov2Model the two are the same tensor: pooler_output is the CLS
    token after the final layernorm (last_hidden_state is already layernormed).
    """

    name = "dino_v2"
    kind = "embedder"
    description = "DINOv2 ViT-B/14 image embedding (transformers)"
    reads = ("DINO_MODEL", "MODEL_DIR", "ALLOW_DOWNLOADS")

    def __init__(self, settings):
        super().__init__(settings)
        self.model = None
        self.processor = None
        self.dim = None
        self.window = None  # (short side, centre crop) of the image processor

    def load(self, device: str) -> None:
        from transformers import AutoImageProcessor, AutoModel  # heavy import, only when this model is used

        weights.offline_guard(self.settings)
        name = self.settings.dino_model
        try:
            source, kwargs = weights.pretrained_source(self.settings, name)
            processor = AutoImageProcessor.from_pretrained(source, **kwargs)
            model = AutoModel.from_pretrained(source, **kwargs)
            model.eval().to(device)
        except Exception as exc:
            raise weights.describe_failure(exc, f"DINOv2 {name}") from exc
        self.model, self.processor, self.device = model, processor, device
        self.dim = int(model.config.hidden_size)
        self.input_side = _resize_side(processor)
        self.window = processor_window(processor)

    def forward(self, images: list[Image.Image], **params) -> list[np.ndarray]:
        import torch

        if not images:
            return []
        # one processor call: every image is resized and cropped to the same size, so they stack
        bounded = [centre_window(image, *self.window) if self.window else image for image in images]
        inputs = self.processor(images=[image.convert("RGB") for image in bounded], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device)
        with torch.inference_mode():
            output = self.model(pixel_values=pixels)
        pooled = getattr(output, "pooler_output", None)
        vectors = pooled if pooled is not None else output.last_hidden_state[:, 0]
        return list(vectors.float().cpu().numpy().astype(np.float32, copy=False))


def _resize_side(processor) -> int | None:
    """The short side the image processor resizes to ({"shortest_edge": 256} for DINOv2), if it says."""
    size = getattr(processor, "size", None) or {}
    size = dict(size) if not isinstance(size, int) else {"shortest_edge": size}
    if size.get("shortest_edge"):
        return int(size["shortest_edge"])
    sides = [v for k, v in size.items() if k in ("height", "width") and v]
    return int(max(sides)) if sides else None
