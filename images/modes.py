"""Every pixel mode Pillow can produce, reduced to one of L, LA, RGB and RGBA.

Greyscale deeper than 8 bits (I;16 and its byte orders, I, F) is scaled, not clipped: Pillow's own
convert() would turn most of a 16-bit image white. The scaling runs over horizontal strips, so a
64-megapixel image never needs a full-size wide copy (float64 of it would be 512 MB).
"""

import numpy as np
from PIL import Image

from errors import InputError

EIGHT_BIT = frozenset({"L", "LA", "RGB", "RGBA"})
# modes Pillow resizes with BOX as they are; the others are reduced to 8 bits first
RESIZABLE = EIGHT_BIT | {"RGBX", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa"}
_DIRECT = {"1": "L", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB",
           "HSV": "RGB"}
STRIP_PIXELS = 1 << 22


def to_8bit(image: Image.Image) -> Image.Image:
    """`image` in L, LA, RGB or RGBA; a palette keeps its transparency as alpha. InputError (415) for a
    mode with no sensible conversion."""
    mode = image.mode
    if mode in EIGHT_BIT:
        return image
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if transparent else "RGB")
    if mode in _DIRECT:
        return image.convert(_DIRECT[mode])
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scaled_grey(image)
    raise InputError(415, f"images with pixel mode {mode} are not supported")


def _scaled_grey(image: Image.Image) -> Image.Image:
    """Deep greyscale to L. 16-bit samples are on a 0-65535 scale whatever their values (a dark
    picture stays dark), so they are divided by 257. 32-bit integers: kept if all within 0-255, divided
    by 257 if within 16 bits, else scaled to their peak. Floats: multiplied by 255 if within [0, 1]."""
    lut = None
    if image.mode.startswith("I;16"):  # uint16: one table lookup per pixel, no wide copy at all
        lut = np.minimum(np.arange(65536) / 257.0 + 0.5, 255).astype(np.uint8)
    else:
        # numpy rather than getextrema(): one strip at a time, and it ignores NaN
        high = max((_peak(strip) for _, strip in _strips(image)), default=0.0)
        if image.mode == "F":
            scale = 255.0 if high <= 1.0 else 1.0
        else:
            scale = 1.0 if high <= 255 else 1.0 / 257.0 if high <= 65535 else 255.0 / high
    out = Image.new("L", image.size)
    for top, strip in _strips(image):
        if lut is not None:
            grey = lut[strip]
        else:
            values = np.nan_to_num(strip.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
            grey = np.clip(values * np.float32(scale) + np.float32(0.5), 0, 255).astype(np.uint8)
        out.paste(Image.fromarray(grey, "L"), (0, top))
    return out


def _strips(image: Image.Image):
    """(top row, pixels as an array) for horizontal strips of about STRIP_PIXELS pixels."""
    rows = max(1, STRIP_PIXELS // max(1, image.width))
    for top in range(0, image.height, rows):
        yield top, np.asarray(image.crop((0, top, image.width, min(image.height, top + rows))))


def _peak(strip: np.ndarray) -> float:
    finite = strip if strip.dtype.kind in "iu" else strip[np.isfinite(strip)]
    return float(finite.max()) if finite.size else 0.0
