"""The most prominent person in each image: torchvision's Faster R-CNN (ResNet-50 FPN, COCO labels)."""

import math
from pathlib import Path

from PIL import Image

from models import weights
from models.base import Box, ImageModel, ModelUnavailable, clamp_box

PERSON = 1  # COCO category id of "person" in torchvision's 91-class head
PROMINENT = ("score", "area")
URL = "https://download.pytorch.org/models/{}"


def pick_prominent(boxes, scores, labels, width: int, height: int, prominent: str = "score") -> Box | None:
    """The person box with the highest score ("score") or the largest clamped area ("area"), or None.

    Ties keep the earlier detection (torchvision sorts by score, so the more confident one wins).
    """
    if prominent not in PROMINENT:
        raise ValueError(f"prominent must be one of {', '.join(PROMINENT)}, not {prominent!r}")
    best = None
    for box, score, label in zip(boxes, scores, labels):
        if int(label) != PERSON:
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        candidate = clamp_box(x0, y0, x1, y1, float(score), width, height)
        if candidate is None:
            continue
        key = candidate.score if prominent == "score" else candidate.area
        if best is None or key > best[0]:
            best = (key, candidate)
    return best[1] if best else None


class PersonDetector(ImageModel):
    name = "person_detector"
    kind = "detector"
    region = "prominent_person"
    description = "prominent person (Faster R-CNN, COCO)"
    reads = ("PERSON_WEIGHTS", "PERSON_MIN_SIZE", "MODEL_DIR", "ALLOW_DOWNLOADS")

    def __init__(self, settings):
        super().__init__(settings)
        self.min_size = settings.person_min_size
        self.max_size = round(self.min_size * 1333 / 800)  # torchvision's default ratio
        self.model = None

    def _state_dict(self) -> dict:
        value = self.settings.person_weights
        if Path(value).is_file():  # an explicit path is used as is
            path = Path(value)
            weights.check_hash(path)
            return weights.state_dict(path)
        if "/" in value or "\\" in value:  # looks like a path, not a torchvision file name
            raise ModelUnavailable(f"PERSON_WEIGHTS={value}: no such file")
        return weights.torchvision_state_dict(self.settings, value, URL.format(value))

    def load(self, device: str) -> None:
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        state = self._state_dict()
        try:
            model = fasterrcnn_resnet50_fpn(
                weights=None, weights_backbone=None, num_classes=91, min_size=self.min_size, max_size=self.max_size,
            )
            model.load_state_dict(state)
            self.model = model.eval().to(device)
        except Exception as exc:
            raise weights.describe_failure(exc, f"Faster R-CNN ({self.settings.person_weights})") from None
        self.device = device

    def _padded_shape(self, image: Image.Image) -> tuple[int, int]:
        """The tensor shape GeneralizedRCNNTransform gives this image alone (resize, then pad to /32)."""
        w, h = image.size
        scale = min(self.min_size / min(w, h), self.max_size / max(w, h))
        return tuple(math.ceil(math.floor(d * scale) / 32) * 32 for d in (h, w))

    def forward(self, images: list[Image.Image], prominent: str = "score") -> list[Box | None]:
        import torch
        from torchvision.transforms.functional import to_tensor

        if prominent not in PROMINENT:
            raise ValueError(f"prominent must be one of {', '.join(PROMINENT)}, not {prominent!r}")
        # One model call per padded shape, not one for the whole list: torchvision zero-pads a batch
        # to its largest image, which changes FPN features near the border and can change the
        # answer; grouping keeps each result independent of what else was in the batch.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            shape = self._padded_shape(image)
            if min(shape) > 0:  # a sliver whose short side scales below 1 px holds no person (torchvision fails on it)
                groups.setdefault(shape, []).append(i)
        results: list[Box | None] = [None] * len(images)
        for indices in groups.values():
            tensors = [to_tensor(images[i].convert("RGB")).to(self.device) for i in indices]
            with torch.inference_mode():
                found = self.model(tensors)
            for i, out in zip(indices, found):
                width, height = images[i].size
                results[i] = pick_prominent(
                    out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(), width, height, prominent,
                )
        return results
