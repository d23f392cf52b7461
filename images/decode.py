"""The one image decoder: bytes in, a loaded and upright Pillow image out, or an InputError.

Limits are checked in the order that keeps a hostile file cheap: byte count, then the file's
structure (images/jpeg.py, images/containers.py), then the format and the pixel count from the
header alone, and only then the pixel data. Image.open only tries the admitted formats, so a format
outside the allow-list is never parsed, and Pillow's own decompression-bomb guard stays on at our
pixel limit: it also checks the images inside containers (ICO, ICNS), which are decoded or sized
after the outer header has been read.
"""

import io
import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from errors import InputError
from images import containers
from images.jpeg import jpeg_shape
from images.modes import RESIZABLE, to_8bit

# the formats the decoder can bound; the last two are opt-in (IMAGE_FORMATS)
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "ICO", "ICNS")
DEFAULT_FORMATS = FORMATS[:7]
Image.init()  # register every plugin once, so that a refused file's format can be named


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 25 * 1024**2
    max_pixels: int = 64_000_000
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_aspect: float = 50.0  # longest side / shortest side
    max_frames: int = 1000  # frames or pages of an animation or a multi-page file
    max_jpeg_scans: int = 100
    # a progressive JPEG costs one pass over the blocks each scan covers (images/jpeg.py)
    max_jpeg_scan_pixels: int = 400_000_000

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"the decoder cannot bound {', '.join(unknown)}; it knows {', '.join(FORMATS)}")


@dataclass
class DecodedImage:
    image: Image.Image  # pixels loaded, L/LA/RGB/RGBA, EXIF orientation applied, reduced to max_side if asked
    format: str
    width: int  # full size, upright
    height: int
    exif: Image.Exif  # read from the original file, not from the reduced copy


@contextmanager
def pillow_guard(max_pixels: int):
    """Pillow's bomb check at `max_pixels`, its warning (between 1x and 2x) raised as an error, and any
    bomb answered 413. Other warnings are silenced: Pillow warns on odd but readable EXIF."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's message names the size it saw
        size = f"{found.group(1)} pixels" if found else f"larger than {max_pixels} pixels"
        raise InputError(413, f"the image is {size}; the limit is {max_pixels} (MAX_IMAGE_PIXELS)") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


# signatures that another format's files often start with too: named with both
_AMBIGUOUS = {"CUR": "CUR or TGA"}  # a TGA header (no ID, no palette, true colour) reads as a cursor's


def sniff(data: bytes) -> str | None:
    """The format whose signature `data` starts with, among every format Pillow knows; nothing is parsed."""
    prefix = data[:16]
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(prefix) is True:
                return name
        except Exception:  # an accept function that chokes on a short prefix
            continue
    return None


def _check_size(width: int, height: int, limits: DecodeLimits, what: str = "the image") -> None:
    if width * height > limits.max_pixels:
        raise InputError(
            413,
            f"{what} is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} (MAX_IMAGE_PIXELS)",
        )
    if width < 1 or height < 1:
        raise InputError(400, f"{what} declares an empty size {width}x{height}")
    if max(width, height) > limits.max_aspect * min(width, height):
        raise InputError(
            413, f"{what} is {width}x{height}: its long side is more than {limits.max_aspect:g} times its short side "
            "(MAX_IMAGE_ASPECT)"
        )


def _check_structure(data: bytes, name: str, limits: DecodeLimits) -> float:
    """Walk the structure of a file whose signature is `name`'s; return a JPEG's decoding passes (0 otherwise)."""
    if name == "JPEG":
        return jpeg_shape(data, limits.max_jpeg_scans).passes
    if name == "GIF":
        frames = containers.gif_frames(data, limits.max_frames)
        if frames > limits.max_frames:
            raise InputError(413, f"the GIF has more than {limits.max_frames} frames (MAX_IMAGE_FRAMES)")
    elif name == "PNG":
        containers.png_chunks(data)
    elif name == "TIFF":
        if containers.tiff_pages(data, limits.max_frames) > limits.max_frames:
            raise InputError(413, f"the TIFF has more than {limits.max_frames} pages (MAX_IMAGE_FRAMES)")
    elif name == "BMP":
        containers.check_bmp(data)
    elif name == "WEBP":
        size = containers.webp_size(data)
        if size is not None:
            _check_size(*size, limits)
    elif name in ("ICO", "ICNS"):
        sizes = (containers.ico_sizes if name == "ICO" else containers.icns_sizes)(data, limits.max_frames)
        for width, height in sizes:
            _check_size(width, height, limits, f"an image inside the {name}")
    return 0.0


def open_checked(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Parse only the header and enforce the byte, structure, format, pixel, aspect and frame limits."""
    if not data:
        raise InputError(400, "the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InputError(413, f"the image is {len(data)} bytes; the limit is {limits.max_bytes} (MAX_UPLOAD_BYTES)")
    detected = sniff(data)
    admitted = detected in limits.formats or (detected == "JPEG" and "MPO" in limits.formats)
    passes = _check_structure(data, detected, limits) if admitted else 0.0
    # MPO files open through Pillow's JPEG plugin, which has no "MPO" entry of its own
    plugins = tuple(dict.fromkeys("JPEG" if f == "MPO" else f for f in limits.formats))
    try:
        with pillow_guard(limits.max_pixels):
            image = Image.open(io.BytesIO(data), formats=plugins)
    except UnidentifiedImageError:
        if admitted:
            raise InputError(400, f"the {detected} header is corrupt") from None
        if detected is not None:
            named = _AMBIGUOUS.get(detected, detected)
            raise InputError(415, f"{named} images are not accepted; accepted: {', '.join(limits.formats)}") from None
        raise InputError(415, "the data is not an image in a recognised format") from None
    except InputError:
        raise
    except Exception as exc:  # a header so broken that Pillow cannot even size it
        raise InputError(400, f"the image header is corrupt: {exc}") from None
    if image.format not in limits.formats:
        raise InputError(415, f"{image.format} images are not accepted; accepted: {', '.join(limits.formats)}")
    _check_size(*image.size, limits)
    frames = getattr(image, "n_frames", 1) if image.format in ("PNG", "WEBP", "MPO") else 1  # read from headers
    if frames > limits.max_frames:
        raise InputError(
            413, f"the {image.format} has {frames} frames; the limit is {limits.max_frames} (MAX_IMAGE_FRAMES)"
        )
    if passes * image.width * image.height > limits.max_jpeg_scan_pixels:
        raise InputError(
            413, f"the JPEG's scans go over its {image.width}x{image.height} pixels {passes:.3g} times, more than "
            f"{limits.max_jpeg_scan_pixels} pixels in all (MAX_JPEG_SCAN_PIXELS)"
        )
    return image


def decode_image(data: bytes, limits: DecodeLimits, max_side: int | None = None,
                 min_side: int | None = None) -> DecodedImage:
    """Decode `data` within `limits`; with `max_side`, return a copy no larger than max_side on either side.

    For JPEG the reduction uses the decoder's draft mode (DCT scaling), so a 12-megapixel photo is never
    decoded at full size when a thumbnail is all that is needed. `min_side` asks for draft mode alone:
    a JPEG is decoded at 1/2, 1/4 or 1/8 scale as long as its shorter side stays >= min_side, and is not
    resampled further (a model that resizes to a 224 px short side needs no more pixels than that);
    other formats decode at full size. Every pixel mode comes out as L, LA, RGB or RGBA.
    """
    image = open_checked(data, limits)
    full_size, image_format = image.size, image.format  # draft() below changes the size in place
    try:
        with pillow_guard(limits.max_pixels):  # ICNS sizes its icon only when loading it
            if max_side is not None and max(image.size) > max_side:
                # JPEG: let libjpeg decode at 1/2, 1/4 or 1/8 scale, the smallest still >= the thumbnail
                image.draft(None, fit_within(image.size, max_side))
            elif min_side is not None and draft_reduces(image.size, image.format, min_side):
                scale = min_side / min(image.size)
                image.draft(None, (max(1, math.ceil(image.size[0] * scale)), max(1, math.ceil(image.size[1] * scale))))
            image.load()
            # after loading: PNG keeps eXIf anywhere in the file, so reading it first would decode twice
            exif = _exif_of(image)
        if image_format not in ("JPEG", "MPO"):  # no draft: what was loaded is the full image
            full_size = image.size
            _check_size(*full_size, limits)
        # BOX needs 8-bit or RGB-like modes (not palettes, 1-bit or 16-bit); every other mode is
        # reduced after resizing, when it has the fewest pixels
        pixels = image if image.mode in RESIZABLE else to_8bit(image)
        if max_side is not None and max(image.size) > max_side:
            # BOX averages every source pixel into the thumbnail, which keeps colour statistics honest;
            # reducing_gap lets Pillow halve by whole factors first, which is faster and as exact
            pixels = pixels.resize(fit_within(image.size, max_side), Image.Resampling.BOX, reducing_gap=2.0)
        pixels = to_8bit(pixels)
        orientation = _orientation(exif)
        upright = pixels
        if orientation in _TRANSPOSE:
            upright = pixels.transpose(_TRANSPOSE[orientation])
            for key in ("exif", "xmp", "XML:com.adobe.xmp"):  # copies that would still say "rotate me"
                upright.info.pop(key, None)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, IndexError, TypeError, EOFError) as exc:
        raise InputError(400, f"the image data is truncated or corrupt: {exc}") from None
    width, height = image_size_upright(full_size, orientation)
    return DecodedImage(image=upright, format=image_format, width=width, height=height, exif=exif)


def _exif_of(image: Image.Image) -> Image.Exif:
    """The image's EXIF, or an empty one when it is too broken for Pillow to read: the pixels still count."""
    try:
        return image.getexif()
    except Exception:
        return Image.Exif()


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(exif: Image.Exif) -> int:
    """The EXIF orientation, 1 (as stored) for a missing value or one of the wrong type or range."""
    value = exif.get(0x0112, 1)
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def draft_reduces(size: tuple[int, int], image_format: str, min_side: int) -> bool:
    """Whether decode_image(min_side=...) decodes fewer pixels than the full image (JPEG at scale <= 1/2)."""
    return image_format in ("JPEG", "MPO") and min(size) // 2 >= min_side


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """`size` scaled so its longest side is `max_side` (at least 1 px each way)."""
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def image_size_upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """Orientations 5-8 swap width and height."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
