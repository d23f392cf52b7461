"""What every model class shares: what it declares to the catalogue, `load(device)`, and one batched
`forward` (a list in, a list out).

Models know nothing of HTTP. Their modules import torch and the model libraries inside `load` and
`forward`, so that reading the declarations (models/catalogue.py) costs a process no torch. A model whose weights are missing or broken raises ModelUnavailable from
`load`, with a reason a person can act on; the server then reports it unavailable and serves the rest.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image


class ModelUnavailable(Exception):
    """The model cannot run here: weights missing (and downloads off), or they failed to load."""


@dataclass(frozen=True)
class Box:
    """A detection in pixel coordinates of the image it was found in: [x0, y0, x1, y1), x1 > x0, y1 > y0."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    @property
    def area(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    def shifted(self, dx: int, dy: int) -> "Box":
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy, self.score)


def clamp_box(x0, y0, x1, y1, score, width, height) -> Box | None:
    """Integer box clamped to the image; None when nothing of it is left."""
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(width, int(round(x1))), min(height, int(round(y1)))
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1, y1, float(score))


KINDS = ("embedder", "detector", "captioner", "segmenter")
REGIONS = ("prominent_person", "prominent_face")  # what a detector can find; "whole_image" needs none


class ImageModel(ABC):
    """Base class: subclasses declare the class attributes below and implement `load` and `forward`."""

    name: ClassVar[str]  # stable: /embed's `model`, SEARCH_MODELS, the router's embed_<name>, /model_stats
    kind: ClassVar[str]  # one of KINDS: what the router offers for it
    description: ClassVar[str]  # one line, shown by GET /available_operations/
    reads: ClassVar[tuple[str, ...]] = ()  # the environment variables it reads
    region: ClassVar[str | None] = None  # a detector's: one of REGIONS

    def __init__(self, settings):
        self.settings = settings
        self.device = "cpu"

    @abstractmethod
    def load(self, device: str) -> None:
        """Load weights onto `device` ("cpu" or "cuda:N"); raise ModelUnavailable with the reason."""

    @abstractmethod
    def forward(self, images: list[Image.Image], **params) -> list:
        """One result per image, in order. Images are RGB PIL images of any size."""


class EmbeddingModel(ImageModel):
    """forward -> one float32 vector per image (not normalised; callers normalise if asked)."""

    dim: int
    # the short side the preprocessing resizes to (known after load), or None when it does not resize
    # that way: callers may decode a large JPEG smaller (images.decode min_side), never below this
    input_side: int | None = None

    @abstractmethod
    def forward(self, images: list[Image.Image], **params) -> list[np.ndarray]: ...
