"""The most confident face in each image (or inside a given region of it): facenet-pytorch's MTCNN.

MTCNN's three small nets ship inside the facenet-pytorch wheel, so this model needs no download.

MTCNN's image pyramid costs about 0.35 us of CPU per pixel: 14 s for a 40-megapixel photo. An image (or
region) over SEARCH_PIXELS is searched at that size instead, and the box is scaled back; a face is
then at least 20 px of the reduced image (about 1% of its side), which a prominent face always is.
"""

import math

from PIL import Image

from models import weights
from models.base import Box, ImageModel, clamp_box


SEARCH_PIXELS = 2_500_000  # about 1 s of CPU; a 2000x1072 camera photo is searched at full size


def reduced(image: Image.Image) -> tuple[Image.Image, float]:
    """`image`, scaled down to SEARCH_PIXELS when larger, and the scale applied."""
    pixels = image.size[0] * image.size[1]
    if pixels <= SEARCH_PIXELS:
        return image, 1.0
    scale = math.sqrt(SEARCH_PIXELS / pixels)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), size[0] / image.size[0]


class FaceDetector(ImageModel):
    name = "face_detector"
    kind = "detector"
    region = "prominent_face"
    description = "prominent face (MTCNN)"

    def __init__(self, settings):
        super().__init__(settings)
        self.mtcnn = None

    def load(self, device: str) -> None:
        try:
            from facenet_pytorch import MTCNN

            # keep_all: detect() returns every face with its probability; we choose the best ourselves
            self.mtcnn = MTCNN(keep_all=True, device=device).eval()
        except Exception as exc:
            raise weights.describe_failure(exc, "MTCNN (facenet-pytorch)") from None
        self.device = device

    def forward(self, images: list[Image.Image], regions: list[Box | None] | None = None) -> list[Box | None]:
        if regions is not None and len(regions) != len(images):
            raise ValueError(f"{len(regions)} regions for {len(images)} images")
        # what to search in each image: the whole image or the region's crop, and the crop's offset
        searches: dict[int, tuple] = {}  # i -> (searched image, offset x, offset y, scale, size before scaling)
        for i, image in enumerate(images):
            image = image.convert("RGB")
            region = regions[i] if regions is not None else None
            dx = dy = 0
            if region is not None:
                clamped = clamp_box(region.x0, region.y0, region.x1, region.y1, 0, *image.size)
                if clamped is None:
                    continue  # the region lies outside the image: no face in it
                image, dx, dy = image.crop(tuple(clamped.as_list())), clamped.x0, clamped.y0
            size = image.size
            image, scale = reduced(image)
            # below min_face_size MTCNN's image pyramid is empty and detect() raises instead of "none"
            if min(image.size) >= self.mtcnn.min_face_size:
                searches[i] = (image, dx, dy, scale, size)
        # MTCNN.detect batches only equal-size images, so one call per distinct size
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, (image, *_) in searches.items():
            by_size.setdefault(image.size, []).append(i)
        results: list[Box | None] = [None] * len(images)
        for indices in by_size.values():
            batch_boxes, batch_probs = self.mtcnn.detect([searches[i][0] for i in indices])
            for i, boxes, probs in zip(indices, batch_boxes, batch_probs):
                if boxes is None:  # no face: detect() gives None and [None]
                    continue
                # boxes come as a numpy object array, sorted by area, not by probability
                best = max(range(len(probs)), key=lambda k: float(probs[k]))
                _, dx, dy, scale, size = searches[i]
                x0, y0, x1, y1 = (float(v) / scale for v in boxes[best])
                # clamp to what was searched (the face may poke out of it), then back to image coordinates
                face = clamp_box(x0, y0, x1, y1, float(probs[best]), *size)
                results[i] = face.shifted(dx, dy) if face else None
        return results
