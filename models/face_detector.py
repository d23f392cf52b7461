"""The most confident face in each image (or inside a given region of it): facenet-pytorch's MTCNN.

MTCNN's three small nets ship inside the facenet-pytorch wheel, so this model needs no download.
"""

from PIL import Image

from models import weights
from models.base import Box, ImageModel, clamp_box


class FaceDetector(ImageModel):
    name = "face_detector"

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
        searches: dict[int, tuple[Image.Image, int, int]] = {}
        for i, image in enumerate(images):
            image = image.convert("RGB")
            region = regions[i] if regions is not None else None
            dx = dy = 0
            if region is not None:
                clamped = clamp_box(region.x0, region.y0, region.x1, region.y1, 0, *image.size)
                if clamped is None:
                    continue  # the region lies outside the image: no face in it
                image, dx, dy = image.crop(tuple(clamped.as_list())), clamped.x0, clamped.y0
            # below min_face_size MTCNN's image pyramid is empty and detect() raises instead of "none"
            if min(image.size) >= self.mtcnn.min_face_size:
                searches[i] = (image, dx, dy)
        # MTCNN.detect batches only equal-size images, so one call per distinct size
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, (image, _, _) in searches.items():
            by_size.setdefault(image.size, []).append(i)
        results: list[Box | None] = [None] * len(images)
        for indices in by_size.values():
            batch_boxes, batch_probs = self.mtcnn.detect([searches[i][0] for i in indices])
            for i, boxes, probs in zip(indices, batch_boxes, batch_probs):
                if boxes is None:  # no face: detect() gives None and [None]
                    continue
                # boxes come as a numpy object array, sorted by area, not by probability
                best = max(range(len(probs)), key=lambda k: float(probs[k]))
                x0, y0, x1, y1 = (float(v) for v in boxes[best])
                crop, dx, dy = searches[i]
                # clamp to what was searched (the face may poke out of it), then back to image coordinates
                face = clamp_box(x0, y0, x1, y1, float(probs[best]), *crop.size)
                results[i] = face.shifted(dx, dy) if face else None
        return results
