"""The original /stats algorithm (bench/README.md names its project), ported as-is to serve as the baseline.

This is the per-request work the baseline did once LitServe had handed it the upload, kept deliberately
unoptimised: full decode (`image.copy()` loads every pixel before `thumbnail`, so JPEG draft never
applies), `_getexif()` read twice with a `json.dumps` test per tag, LANCZOS thumbnail, RGBA conversion,
and one `colorsys.rgb_to_hsv` call per valid pixel in Python. Only the HTTP layer is left out, so the
time it measures is a lower bound of the baseline's request time (and its rps an upper bound).

Run alone: `.venv/bin/python -m bench.baseline_stats` prints ms per photo of the corpus.
"""

import io
import json
import time
from collections import Counter
from colorsys import rgb_to_hsv

import numpy as np
from PIL import ExifTags, Image

THUMBNAIL_SIZE = 512


def _thumbnail(image: Image.Image) -> Image.Image:
    if max(image.size) <= THUMBNAIL_SIZE:
        return image
    width, height = image.size
    if width > height:
        size = (THUMBNAIL_SIZE, int(height * THUMBNAIL_SIZE / width))
    else:
        size = (int(width * THUMBNAIL_SIZE / height), THUMBNAIL_SIZE)
    thumb = image.copy()  # copy() loads the full image: the baseline never decoded at reduced size
    thumb.thumbnail(size, Image.Resampling.LANCZOS)
    return thumb


def _gps_or_none(gps):
    # the baseline kept GPSInfo unless it looked like a placeholder
    if isinstance(gps, str):
        return None if ("(0.0, 0.0, 0.0)" in gps or "'1970:01:01'" in gps or "0.0" in gps) else gps
    if isinstance(gps, dict):
        return gps if gps.get(2, (0, 0, 0)) != (0, 0, 0) else None
    return None


def exif_data(image: Image.Image) -> dict:
    out = {}
    try:
        if hasattr(image, "_getexif") and image._getexif():  # parsed twice, as the baseline did
            for tag, value in image._getexif().items():
                if tag not in ExifTags.TAGS:
                    continue
                name = ExifTags.TAGS[tag]
                try:
                    if hasattr(value, "numerator") and hasattr(value, "denominator"):
                        value = float(value.numerator) / value.denominator if value.denominator else 0
                    json.dumps(value)  # the baseline's per-tag serialisability test
                    out[name] = value
                except (TypeError, OverflowError):
                    out[name] = str(value)
    except Exception:
        pass
    if "GPSInfo" in out:
        gps = _gps_or_none(out["GPSInfo"])
        if gps is None:
            del out["GPSInfo"]
        else:
            out["GPSInfo"] = gps
    return out


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(c * 255):02x}" for c in rgb)  # truncates, as the baseline did


def dominant_rgb(valid: np.ndarray) -> np.ndarray:
    rgb = valid[:, :3] / 255.0
    hsv = np.array([rgb_to_hsv(r, g, b) for r, g, b in rgb])  # the hot loop: one Python call per pixel
    keys = (hsv[:, 0] * 10).astype(int) * 1000 + (hsv[:, 1] * 10).astype(int) * 10 + (hsv[:, 2] * 10).astype(int)
    key = Counter(keys).most_common(1)[0][0]
    return valid[np.where(keys == key)[0][0], :3] / 255.0


def colour_data(image: Image.Image, method: str = "arithmetic") -> dict | None:
    thumb = _thumbnail(image)
    if thumb.mode != "RGBA":
        thumb = thumb.convert("RGBA")
    pixels = np.array(thumb).reshape(-1, 4)
    valid = pixels[pixels[:, 3] >= 128]
    if len(valid) == 0:
        return None
    avg = valid[:, :3].mean(axis=0) / 255.0
    dom = dominant_rgb(valid)
    return {
        "avg_color": {"rgb": avg.tolist(), "hex": _hex(avg), "method": method},
        "dominant_color": {"rgb": dom.tolist(), "hex": _hex(dom)},
    }


def seed_stats(data: bytes) -> str:
    """One request's work, bytes in, JSON text out (LitServe serialised the baseline's dict the same way)."""
    image = Image.open(io.BytesIO(data))
    return json.dumps({"exif_data": exif_data(image), "color_data": colour_data(image)})


def measure(corpus: dict[str, bytes], passes: int = 1) -> dict[str, float]:
    """Mean ms per photo of seed_stats; a photo the baseline could not process is reported as NaN."""
    out = {}
    for name, data in corpus.items():
        try:
            start = time.perf_counter()
            for _ in range(passes):
                seed_stats(data)
            out[name] = (time.perf_counter() - start) / passes * 1000
        except Exception:
            out[name] = float("nan")
    return out


if __name__ == "__main__":
    from tests import photos

    times = measure(photos.corpus())
    for name, ms in times.items():
        print(f"{name:20s} {ms:8.1f} ms")
    print(f"{'mean':20s} {sum(times.values()) / len(times):8.1f} ms")
