"""Average and dominant colour of an image, vectorised with NumPy.

Pixels with alpha < 128 are ignored, as the original /stats algorithm did, so existing clients get the same
colours. Colours are reported as floats in [0, 1] and as a hex string whose channels are rounded half-up
(the original truncated: a fix listed in docs/api.md, "Compatibility").
"""

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from atomic_files import write_atomically

ALPHA_CUTOFF = 128
HSV_BINS = 10  # per channel; keys are h*100 + s*10 + v, so no two (h, s, v) bins share a key


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def opaque_rgb(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """(RGB image, mask of the pixels with alpha >= 128 or None when every pixel counts)."""
    if not _has_alpha(image):
        return image.convert("RGB"), None
    rgba = image.convert("RGBA")
    mask = rgba.getchannel("A").point(lambda a: 255 if a >= ALPHA_CUTOFF else 0)
    return rgba.convert("RGB"), mask


def packed_pixels(rgb: Image.Image, mask: Image.Image | None) -> np.ndarray:
    """Opaque pixels as uint32 r | g << 8 | b << 16, in row-major order."""
    packed = np.asarray(rgb.convert("RGBX")).view("<u4").ravel() & 0xFFFFFF
    if mask is None:
        return packed
    return packed[np.asarray(mask).ravel() != 0]


def to_hex(rgb) -> str:
    return "#" + "".join(f"{int(c * 255 + 0.5):02x}" for c in rgb)


def average_colour(histogram: list[int], method: str) -> list[float]:
    """Mean of each channel from a 768-bin RGB histogram, as floats in [0, 1].

    Geometric and harmonic means treat 0 as 1/255: a true zero would make the geometric mean 0 and
    the harmonic mean undefined as soon as one pixel is black (the original /stats algorithm used 1e-8,
    which gives the same answers in practice).
    """
    counts = np.asarray(histogram, dtype=np.float64).reshape(3, 256)
    n = counts[0].sum()
    levels = np.arange(256, dtype=np.float64)
    safe = np.maximum(levels, 1.0)
    if method == "arithmetic":
        means = counts @ levels / n
    elif method == "geometric":
        means = np.exp(counts @ np.log(safe) / n)
    elif method == "harmonic":
        means = n / (counts @ (1.0 / safe))
    else:
        raise ValueError(f"unknown averaging method {method!r}")
    return [float(m) / 255.0 for m in means]


def hsv_bin_keys(pixels: np.ndarray) -> np.ndarray:
    """HSV bin key (h*100 + s*10 + v, each bin 0-9) per pixel, with colorsys.rgb_to_hsv's arithmetic."""
    rgb = pixels.astype(np.float64) / 255.0
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    maxc = rgb.max(axis=1)
    minc = rgb.min(axis=1)
    spread = maxc - minc
    chroma = spread > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(chroma, spread / maxc, 0.0)
        rc = (maxc - r) / spread
        gc = (maxc - g) / spread
        bc = (maxc - b) / spread
    # colorsys checks r first, then g, then b: the same precedence here
    h = np.where(r == maxc, bc - gc, np.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(chroma, (h / 6.0) % 1.0, 0.0)

    def bins(x):
        return np.minimum((x * HSV_BINS).astype(np.int64), HSV_BINS - 1)

    return bins(h) * 100 + bins(s) * 10 + bins(maxc)


@cache
def bin_table(cache_dir: str | None = None) -> np.ndarray:
    """HSV bin key of every 24-bit colour, indexed by r | g << 8 | b << 16 (32 MB).

    Looking keys up is 5x faster than computing them per pixel. Building takes a few seconds, so the
    table is saved under `cache_dir` once and read by every worker after that. Read, not memory-mapped:
    mapped pages are dropped under memory pressure and faulted back as photos with new colours arrive,
    so a worker's RSS would wander by up to 32 MB with no request of its own to blame.
    """
    path = Path(cache_dir or Path.home() / ".cache" / "imageserver") / f"hsv-bins-{HSV_BINS}-v1.npy"
    if path.exists():
        return np.load(path)
    table = np.empty(1 << 24, dtype=np.uint16)
    step = 1 << 20
    for start in range(0, 1 << 24, step):
        index = np.arange(start, start + step, dtype=np.uint32)
        rgb = np.stack([index & 255, (index >> 8) & 255, index >> 16], axis=1).astype(np.uint8)
        table[start : start + step] = hsv_bin_keys(rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda out: np.save(out, table))  # a concurrent worker never reads a half-written table
    return table


def dominant_colour(packed: np.ndarray, table: np.ndarray) -> dict:
    """The most populated HSV bin and the mean RGB of its pixels.

    Ties go to the bin whose first pixel comes first in row-major order, as they always have on /stats. The colour
    reported is the bin's mean, not one arbitrary pixel of it, so it does not depend on pixel order.
    """
    keys = table[packed]
    counts = np.bincount(keys, minlength=1000)
    best = counts.max()
    tied = np.flatnonzero(counts == best)
    key = int(tied[0]) if len(tied) == 1 else int(keys[np.isin(keys, tied)][0])
    members = packed[keys == key]
    rgb = [float(((members >> shift) & 255).mean()) / 255.0 for shift in (0, 8, 16)]
    return {
        "rgb": rgb,
        "hex": to_hex(rgb),
        "share": float(best) / packed.shape[0],
        "hsv_bin": [key // 100, key // 10 % 10, key % 10],
    }


def colour_stats(image: Image.Image, method: str, table: np.ndarray) -> dict | None:
    """`color_data` of the /stats answer, or None when no pixel is opaque enough."""
    rgb, mask = opaque_rgb(image)
    histogram = rgb.histogram(mask)  # C-speed per-channel counts; the means need nothing else
    if sum(histogram[:256]) == 0:
        return None
    avg = average_colour(histogram, method)
    return {
        "avg_color": {"rgb": avg, "hex": to_hex(avg), "method": method},
        "dominant_color": dominant_colour(packed_pixels(rgb, mask), table),
    }
