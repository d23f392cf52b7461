"""Preprocessing whose cost does not depend on the aspect ratio.

MobileNetV2, CLIP and DINOv2 resize an image's short side to S (keeping the aspect ratio) and then
keep the centre C x C. For a 1 x N image that first resize makes S x (S * N) pixels, almost all of
them thrown away by the crop. `centre_window` cuts the image down to the part the centre crop keeps
(plus a margin for the resize filter) before the model's own transform runs, so an image costs no
more than a square of its short side. The cut only happens when the long side is well beyond that
part, so ordinary photos (aspect ratio up to about 2) go through the transform untouched.
"""

import math

from PIL import Image

FILTER_RADIUS = 3  # source pixels each output pixel reads, per unit of scale (bicubic 2, Lanczos 3)
TRIGGER = 2.0  # cut only when the long side exceeds this many windows
UNCROPPED_ASPECT = 3  # a short-side resize without a centre crop keeps at most this aspect ratio


def centre_window(image: Image.Image, short_side: int, crop: int | None) -> Image.Image:
    """The centre of `image` along its long side that "resize the short side to `short_side`, then
    centre-crop `crop`" keeps, with a margin; `image` itself when nothing much would be cut. With
    `crop` None (no centre crop) the long side is cut to UNCROPPED_ASPECT times the short side."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short < 1:
        return image
    keep = math.ceil(crop * short / short_side) if crop else UNCROPPED_ASPECT * short
    margin = math.ceil(FILTER_RADIUS * max(1.0, short / short_side)) + 2
    # never shorter than the short side: the transform must still see the same short side
    window = max(short, keep) + 2 * margin
    if long <= TRIGGER * window:
        return image
    start = (long - window) // 2
    box = (start, 0, start + window, height) if width > height else (0, start, width, start + window)
    return image.crop(box)


def transform_window(transform) -> tuple[int, int | None] | None:
    """(short side, centre crop) of a torchvision Compose that resizes the short side, else None
    (a fixed-size or longest-side resize already bounds the work)."""
    size = crop = None
    for step in getattr(transform, "transforms", ()):
        kind = type(step).__name__
        if kind == "Resize":
            value = step.size
            if isinstance(value, int) or (isinstance(value, (list, tuple)) and len(value) == 1):
                size = int(value if isinstance(value, int) else value[0])
            else:
                return None
        elif kind == "CenterCrop" and size is not None:
            value = step.size
            crop = int(max(value) if isinstance(value, (list, tuple)) else value)
    return (size, crop) if size else None


def processor_window(processor) -> tuple[int, int | None] | None:
    """(short side, centre crop) of a transformers image processor that resizes the short side
    ({"shortest_edge": S}), else None."""
    size = getattr(processor, "size", None) or {}
    size = {"shortest_edge": size} if isinstance(size, int) else dict(size)
    if not size.get("shortest_edge") or not getattr(processor, "do_resize", True):
        return None
    crop = None
    if getattr(processor, "do_center_crop", False):
        crop_size = getattr(processor, "crop_size", None) or {}
        crop_size = {"height": crop_size, "width": crop_size} if isinstance(crop_size, int) else dict(crop_size)
        sides = [v for k, v in crop_size.items() if k in ("height", "width") and v]
        crop = int(max(sides)) if sides else None
    return int(size["shortest_edge"]), crop
