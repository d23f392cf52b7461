"""The one image decoder: bytes in, a loaded and upright Pillow image out, or an InputError.

Limits are checked in the order that keeps a hostile file cheap: byte count, then the format and
the pixel count from the header alone, and only then the pixel data.
"""

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from errors import InputError

# Pillow's own bomb guard raises at twice this; ours (max_pixels) is the one users configure, so
# Pillow's is moved out of the way instead of producing a second, differently worded error.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 25 * 1024**2
    max_pixels: int = 64_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")


@dataclass
class DecodedImage:
    image: Image.Image  # pixels loaded, EXIF orientation applied, reduced to max_side if asked
    format: str
    width: int  # full size, upright
    height: int
    exif: Image.Exif  # read from the original file, not from the reduced copy


def open_checked(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Parse only the header and enforce the byte, format and pixel limits."""
    if not data:
        raise InputError(400, "the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InputError(413, f"the image is {len(data)} bytes; the limit is {limits.max_bytes} (MAX_UPLOAD_BYTES)")
    try:
        image = Image.open(io.BytesIO(data), formats=None)
    except UnidentifiedImageError:
        raise InputError(415, "the data is not an image in a recognised format") from None
    except Exception as exc:  # a header so broken that Pillow cannot even size it
        raise InputError(400, f"the image header is corrupt: {exc}") from None
    if image.format not in limits.formats:
        raise InputError(415, f"{image.format} images are not accepted; accepted: {', '.join(limits.formats)}")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InputError(
            413, f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} (MAX_IMAGE_PIXELS)"
        )
    if width < 1 or height < 1:
        raise InputError(400, f"the image declares an empty size {width}x{height}")
    return image


def decode_image(data: bytes, limits: DecodeLimits, max_side: int | None = None,
                 min_side: int | None = None) -> DecodedImage:
    """Decode `data` within `limits`; with `max_side`, return a copy no larger than max_side on either side.

    For JPEG the reduction uses the decoder's draft mode (DCT scaling), so a 12-megapixel photo is never
    decoded at full size when a thumbnail is all that is needed. `min_side` asks for draft mode alone:
    a JPEG is decoded at 1/2, 1/4 or 1/8 scale as long as its shorter side stays >= min_side, and is not
    resampled further (a model that resizes to a 224 px short side needs no more pixels than that);
    other formats decode at full size.
    """
    image = open_checked(data, limits)
    full_size, image_format = image.size, image.format  # draft() below changes the size in place
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd but readable EXIF; the data is still used
            if max_side is not None and max(image.size) > max_side:
                # JPEG: let libjpeg decode at 1/2, 1/4 or 1/8 scale, the smallest still >= the thumbnail
                image.draft(None, _fit(image.size, max_side))
            elif min_side is not None and draft_reduces(image.size, image.format, min_side):
                scale = min_side / min(image.size)
                image.draft(None, (max(1, math.ceil(image.size[0] * scale)), max(1, math.ceil(image.size[1] * scale))))
            image.load()
            # after loading: PNG keeps eXIf anywhere in the file, so reading it first would decode twice
            exif = image.getexif()
        pixels = image
        if image.mode in ("1", "P", "PA"):  # Pillow resizes these with NEAREST only; colour needs averaging
            transparent = image.mode == "PA" or "transparency" in image.info
            pixels = image.convert("RGBA" if transparent else "RGB")
        if max_side is not None and max(image.size) > max_side:
            # BOX averages every source pixel into the thumbnail, which keeps colour statistics honest;
            # reducing_gap lets Pillow halve by whole factors first, which is faster and as exact
            pixels = pixels.resize(_fit(image.size, max_side), Image.Resampling.BOX, reducing_gap=2.0)
        orientation = exif.get(0x0112, 1)
        upright = ImageOps.exif_transpose(pixels) if orientation in range(2, 9) else pixels
        upright = _as_8bit(upright)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, IndexError, TypeError, EOFError) as exc:
        raise InputError(400, f"the image data is truncated or corrupt: {exc}") from None
    width, height = image_size_upright(full_size, orientation)
    return DecodedImage(image=upright, format=image_format, width=width, height=height, exif=exif)


def draft_reduces(size: tuple[int, int], image_format: str, min_side: int) -> bool:
    """Whether decode_image(min_side=...) decodes fewer pixels than the full image (JPEG at scale <= 1/2)."""
    return image_format in ("JPEG", "MPO") and min(size) // 2 >= min_side


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def image_size_upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """Orientations 5-8 swap width and height."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size



def _as_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale scaled to 8-bit "L"; Pillow's convert() would clip them to white."""
    if image.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode == "F":
        scale = 255.0 if peak <= 1.0 else 1.0
    else:
        scale = 1.0 if peak <= 255 else 1.0 / 257.0
    return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), "L")
