"""The /stats model in-process: colour binning and averaging, the decoder, EXIF and GPS. No HTTP."""

import base64
import colorsys
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageDraw, ImageOps, TiffImagePlugin

from errors import InputError
from images.decode import DecodeLimits, decode_image, open_checked
from stats.colour import bin_table, colour_stats, hsv_bin_keys, opaque_rgb, packed_pixels, to_hex
from stats.exif import exif_to_json
from tests import photos

LIMITS = DecodeLimits()
METHODS = ("arithmetic", "geometric", "harmonic")


@pytest.fixture(scope="module")
def table(cache_dir):
    return bin_table(cache_dir)


def thumbnail(name: str, max_side: int = 512) -> Image.Image:
    return decode_image(photos.read(name), LIMITS, max_side=max_side).image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def colorsys_key(r: int, g: int, b: int) -> int:
    h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
    return min(int(h * 10), 9) * 100 + min(int(s * 10), 9) * 10 + min(int(v * 10), 9)


def opaque_array(image: Image.Image) -> np.ndarray:
    """Opaque pixels (alpha >= 128) as an (n, 3) float array on the 0..255 scale, computed directly."""
    rgba = np.asarray(image.convert("RGBA"))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    keep = rgba[..., 3] >= 128 if has_alpha else np.ones(rgba.shape[:2], bool)
    return rgba[..., :3][keep].astype(np.float64)


def reference_average(pixels: np.ndarray, method: str) -> np.ndarray:
    safe = np.maximum(pixels, 1.0)
    if method == "arithmetic":
        means = pixels.mean(axis=0)
    elif method == "geometric":
        means = np.exp(np.log(safe).mean(axis=0))
    else:
        means = len(safe) / (1.0 / safe).sum(axis=0)
    return means / 255.0


# ------------------------------------------------------------------------------------- HSV bins


@pytest.mark.parametrize("name", ["astronaut", "coffee", "hubble_deep_field"])
def test_hsv_bins_equal_colorsys_on_every_pixel_of_a_real_photo(name, table):
    rgb, mask = opaque_rgb(thumbnail(name))
    packed = packed_pixels(rgb, mask)
    colours = np.unique(packed)  # the key depends on the colour alone: check each distinct one once
    triples = np.stack([colours & 255, (colours >> 8) & 255, colours >> 16], axis=1).astype(np.uint8)
    expected = np.array([colorsys_key(*map(int, t)) for t in triples])
    assert np.array_equal(hsv_bin_keys(triples), expected)
    assert np.array_equal(table[colours], expected)  # the precomputed table the server uses
    assert len(colours) > 1000


def test_hsv_bins_on_edge_colours_equal_colorsys(table):
    levels = [0, 1, 25, 26, 127, 128, 229, 230, 254, 255]
    triples = np.array([(r, g, b) for r in levels for g in levels for b in levels], dtype=np.uint8)
    expected = np.array([colorsys_key(*map(int, t)) for t in triples])
    assert np.array_equal(hsv_bin_keys(triples), expected)
    packed = triples[:, 0].astype(np.uint32) | triples[:, 1].astype(np.uint32) << 8 | triples[:, 2].astype(np.uint32) << 16
    assert np.array_equal(table[packed], expected)


def test_colours_whose_packed_keys_once_collided_fall_in_different_bins(table):
    """White-pink and near-black, one bin under the original /stats key (its s and v digits mixed)."""
    pair = np.array([[255, 229, 229], [10, 8, 8]], dtype=np.uint8)
    keys = hsv_bin_keys(pair)
    assert keys[0] != keys[1]
    assert list(keys) == [colorsys_key(255, 229, 229), colorsys_key(10, 8, 8)]
    # and the dominant colour of an image holding both keeps them apart
    image = Image.new("RGB", (10, 1), (255, 229, 229))
    image.paste((10, 8, 8), (0, 0, 4, 1))
    dominant = colour_stats(image, "arithmetic", table)["dominant_color"]
    assert dominant["share"] == pytest.approx(0.6)
    assert dominant["rgb"] == pytest.approx([1.0, 229 / 255, 229 / 255], abs=1e-12)


def test_dominant_colour_is_the_most_populated_bin_and_its_mean(table):
    image = thumbnail("chelsea")
    rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
    keys = np.array([colorsys_key(*map(int, p)) for p in np.unique(rgb, axis=0)])
    lookup = dict(zip(map(tuple, np.unique(rgb, axis=0)), keys))
    per_pixel = np.array([lookup[tuple(p)] for p in rgb])
    counts = np.bincount(per_pixel, minlength=1000)
    best = int(np.argmax(counts))
    assert (counts == counts[best]).sum() == 1  # no tie on this photo, so the answer is unique
    dominant = colour_stats(image, "arithmetic", table)["dominant_color"]
    assert dominant["hsv_bin"] == [best // 100, best // 10 % 10, best % 10]
    assert dominant["share"] == pytest.approx(counts[best] / len(rgb), abs=1e-12)
    assert dominant["rgb"] == pytest.approx(list(rgb[per_pixel == best].mean(axis=0) / 255), abs=1e-12)
    assert dominant["hex"] == to_hex(dominant["rgb"])


@pytest.mark.parametrize("first", [(10, 200, 10), (200, 10, 10)])
def test_dominant_colour_tie_goes_to_the_bin_seen_first(first, table):
    second = (200, 10, 10) if first == (10, 200, 10) else (10, 200, 10)
    image = Image.new("RGB", (4, 2), second)
    image.paste(first, (0, 0, 2, 2))  # columns 0-1: first; row-major, pixel (0, 0) is `first`
    dominant = colour_stats(image, "arithmetic", table)["dominant_color"]
    assert dominant["share"] == 0.5
    assert dominant["rgb"] == pytest.approx([c / 255 for c in first], abs=1e-12)


# ------------------------------------------------------------------------------- average colour


@pytest.mark.parametrize("name", ["astronaut", "rocket", "dice_rgba", "camera"])
@pytest.mark.parametrize("method", METHODS)
def test_average_colour_equals_a_direct_numpy_reference(name, method, table):
    image = thumbnail(name)
    got = colour_stats(image, method, table)["avg_color"]
    assert got["method"] == method
    assert got["rgb"] == pytest.approx(list(reference_average(opaque_array(image), method)), abs=1e-9)
    assert got["hex"] == to_hex(got["rgb"])


@pytest.mark.parametrize("method", ["geometric", "harmonic"])
def test_black_pixels_count_as_one_not_zero(method, table):
    image = thumbnail("coffee").copy()
    ImageDraw.Draw(image).rectangle((0, 0, 99, 99), fill=(0, 0, 0))  # 10,000 pure-black pixels
    pixels = opaque_array(image)
    assert (pixels == 0).all(axis=1).sum() >= 10_000
    got = colour_stats(image, method, table)["avg_color"]["rgb"]
    assert got == pytest.approx(list(reference_average(pixels, method)), abs=1e-9)
    assert all(c > 1 / 255 for c in got)  # a zero would have pulled every channel to 0


def test_all_black_image_gives_one_level_not_zero_or_nan(table):
    image = Image.new("RGB", (8, 8))
    for method in METHODS:
        rgb = colour_stats(image, method, table)["avg_color"]["rgb"]
        expected = 0.0 if method == "arithmetic" else 1 / 255
        assert rgb == pytest.approx([expected] * 3, abs=1e-12)


def test_hex_rounds_half_up():
    assert to_hex([0.5, 0.5, 0.5]) == "#808080"
    assert to_hex([127.5 / 255, 0.0, 1.0]) == "#8000ff"
    assert to_hex([127.49 / 255, 0.0, 0.0]) == "#7f0000"
    for level in range(256):  # every exact level survives the float round trip
        assert to_hex([level / 255] * 3) == "#" + f"{level:02x}" * 3


# ------------------------------------------------------------------------------------------ alpha


def test_transparent_pixels_are_ignored(table):
    image = thumbnail("dice_rgba")
    alpha = np.asarray(image.getchannel("A"))
    assert 0.6 < (alpha < 128).mean() < 0.8  # the photo really is mostly transparent
    got = colour_stats(image, "arithmetic", table)["avg_color"]["rgb"]
    every_pixel = np.asarray(image.convert("RGB")).reshape(-1, 3).mean(axis=0) / 255
    assert max(abs(a - b) for a, b in zip(got, every_pixel)) > 0.02
    assert got == pytest.approx(list(reference_average(opaque_array(image), "arithmetic")), abs=1e-9)


def test_alpha_cutoff_is_128(table):
    image = Image.new("RGBA", (4, 1), (255, 0, 0, 127))
    image.putpixel((3, 0), (0, 0, 255, 128))
    stats = colour_stats(image, "arithmetic", table)
    assert stats["avg_color"]["rgb"] == [0.0, 0.0, 1.0]
    assert stats["dominant_color"]["share"] == 1.0


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_fully_transparent_image_has_no_colour_data(mode, table):
    image = thumbnail("chelsea").convert(mode)
    image.putalpha(Image.new("L", image.size, 127))
    assert colour_stats(image, "arithmetic", table) is None
    decoded = decode_image(encode(image, "PNG"), LIMITS, max_side=512)
    assert colour_stats(decoded.image, "arithmetic", table) is None


# ------------------------------------------------------------------------------ JPEG draft mode

JPEGS_OVER_512 = [
    name for name in photos.CORPUS
    if Image.open(photos.path(name)).format in ("JPEG", "MPO") and max(Image.open(photos.path(name)).size) > 512
]


def test_corpus_has_large_jpegs():
    assert {"xmp_camera", "retina"} <= set(JPEGS_OVER_512)


@pytest.mark.parametrize("name", JPEGS_OVER_512)
def test_jpeg_draft_mode_is_within_the_documented_tolerance(name, table):
    data = photos.read(name)
    fast = decode_image(data, LIMITS, max_side=512).image
    full = Image.open(io.BytesIO(data))
    full.load()
    full = ImageOps.exif_transpose(full.convert("RGB"))
    exact = full.resize(fast.size, Image.Resampling.BOX)
    a = colour_stats(fast, "arithmetic", table)
    b = colour_stats(exact, "arithmetic", table)
    assert a["avg_color"]["rgb"] == pytest.approx(b["avg_color"]["rgb"], abs=0.005)
    assert a["dominant_color"]["hsv_bin"] == b["dominant_color"]["hsv_bin"]


# ------------------------------------------------------------------------------------------- EXIF


def exif_of(data: bytes) -> tuple[dict, dict | None]:
    return exif_to_json(decode_image(data, LIMITS, max_side=512).exif)


@pytest.mark.parametrize(
    "name, make, gps_tags",
    [("canon", "Canon", {ExifTags.GPS.GPSVersionID}), ("olympus", "OLYMPUS", {ExifTags.GPS.GPSVersionID}),
     ("sony", "SONY", set())],
)
def test_camera_exif_is_named_and_json_safe(name, make, gps_tags):
    data, gps = exif_of(photos.read(name))
    assert isinstance(data["Make"], str) and data["Make"].startswith(make)
    assert isinstance(data["Model"], str) and data["Model"]
    for tag in ("ExposureTime", "FNumber", "FocalLength", "XResolution"):
        assert isinstance(data[tag], float), (tag, data[tag])
    assert isinstance(data["DateTimeOriginal"], str)
    json.dumps(data, allow_nan=False)
    # canon's and olympus's GPS block holds only GPSVersionID (sony has none): no position, dropped
    raw = Image.open(photos.path(name)).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert set(raw) == gps_tags
    assert "GPSInfo" not in data and gps is None


@pytest.mark.parametrize("name", photos.CORPUS + ["gps_placeholder"])
def test_every_photo_gives_strict_json(name):
    data, gps = exif_of(photos.read(name))
    text = json.dumps({"exif_data": data, "gps": gps}, allow_nan=False)
    assert json.loads(text) == {"exif_data": data, "gps": gps}
    assert all(isinstance(key, str) for key in data)


def test_exif_values_become_json():
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam\x00\x00"
    ifd = exif.get_ifd(ExifTags.IFD.Exif)
    ifd[ExifTags.Base.ExposureTime] = TiffImagePlugin.IFDRational(1, 0)  # zero denominator
    ifd[ExifTags.Base.FNumber] = TiffImagePlugin.IFDRational(28, 10)
    ifd[ExifTags.Base.UserComment] = b"ASCII\x00\x00\x00hello there"
    ifd[ExifTags.Base.MakerNote] = bytes(range(200))
    ifd[0xC4A5] = b"\x00\x01\x02"  # a short binary blob
    data, gps = exif_of(encode(Image.new("RGB", (8, 8), (200, 10, 10)), "JPEG", exif=exif))
    assert data["Make"] == "TestCam"
    assert data["ExposureTime"] is None
    assert data["FNumber"] == pytest.approx(2.8)
    assert data["UserComment"] == "hello there"
    assert data["MakerNote"] == "base64:" + base64.b64encode(bytes(range(200))).decode()
    assert data["PrintImageMatching"] == [0, 1, 2]
    assert gps is None
    json.dumps(data, allow_nan=False)


def test_real_gps_fix_gives_decimal_position():
    data, gps = exif_of(photos.read("gps_tiff"))
    assert data["GPSInfo"]["GPSLatitudeRef"] == "N" and data["GPSInfo"]["GPSLongitudeRef"] == "W"
    assert gps["latitude"] == pytest.approx(35.5999986, abs=1e-6)
    assert gps["longitude"] == pytest.approx(-111.6618272, abs=1e-6)
    assert gps["altitude"] == pytest.approx(1845.656, abs=1e-6)


def test_placeholder_gps_block_is_kept_but_has_no_position():
    data, gps = exif_of(photos.read("gps_placeholder"))
    assert "GPSInfo" in data
    assert any(v not in (0, 0.0, [0, 0, 0], "") for k, v in data["GPSInfo"].items() if k != "GPSVersionID")
    assert gps is None


def jpeg_with_gps(gps_tags: dict) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update(gps_tags)
    return encode(thumbnail("chelsea", 64), "JPEG", exif=exif)


G = ExifTags.GPS


@pytest.mark.parametrize(
    "tags",
    [
        {G.GPSVersionID: b"\x02\x02\x00\x00", G.GPSLatitudeRef: "N", G.GPSLatitude: (0.0, 0.0, 0.0),
         G.GPSLongitudeRef: "E", G.GPSLongitude: (0.0, 0.0, 0.0), G.GPSAltitude: 0.0},
        {G.GPSDateStamp: "1970:01:01"},
        {G.GPSVersionID: b"\x02\x02\x00\x00", G.GPSDateStamp: "1970:01:01", G.GPSTimeStamp: (0.0, 0.0, 0.0)},
    ],
    ids=["all zeros", "1970 date only", "1970 date and zero time"],
)
def test_placeholder_gps_blocks_are_dropped(tags):
    data, gps = exif_of(jpeg_with_gps(tags))
    assert data["Make"] == "TestCam"
    assert "GPSInfo" not in data and gps is None


def test_real_gps_block_with_zero_parts_is_kept():
    tags = {G.GPSLatitudeRef: "N", G.GPSLatitude: (40.0, 0.0, 0.0), G.GPSLongitudeRef: "W",
            G.GPSLongitude: (74.0, 0.0, 30.5), G.GPSAltitudeRef: b"\x00", G.GPSAltitude: 0.0,
            G.GPSDateStamp: "2020:01:01"}
    data, gps = exif_of(jpeg_with_gps(tags))
    assert data["GPSInfo"]["GPSLatitude"] == [40.0, 0.0, 0.0]
    assert gps["latitude"] == pytest.approx(40.0, abs=1e-9)
    assert gps["longitude"] == pytest.approx(-(74 + 30.5 / 3600), abs=1e-6)
    assert gps["altitude"] == 0.0


def test_gps_altitude_below_sea_level_is_negative():
    tags = {G.GPSLatitudeRef: "S", G.GPSLatitude: (33.0, 52.0, 0.0), G.GPSLongitudeRef: "E",
            G.GPSLongitude: (151.0, 12.0, 0.0), G.GPSAltitudeRef: b"\x01", G.GPSAltitude: 12.5}
    _, gps = exif_of(jpeg_with_gps(tags))
    assert gps == pytest.approx({"latitude": -(33 + 52 / 60), "longitude": 151.2, "altitude": -12.5}, abs=1e-6)


# ------------------------------------------------------------------------------------ orientation


def with_orientation(image: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(image, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


def test_exif_orientation_6_is_applied_exactly_on_png():
    original = Image.open(photos.path("chelsea")).convert("RGB")  # 451 x 300
    decoded = decode_image(with_orientation(original, "PNG", 6), LIMITS)
    assert (decoded.width, decoded.height) == (300, 451)
    assert decoded.image.size == (300, 451)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(original.transpose(Image.Transpose.ROTATE_270)))


def test_exif_orientation_6_is_applied_on_jpeg_thumbnail():
    original = Image.open(photos.path("coffee")).convert("RGB")  # 600 x 400
    decoded = decode_image(with_orientation(original, "JPEG", 6), LIMITS, max_side=200)
    assert (decoded.width, decoded.height) == (400, 600)  # full size, upright
    assert decoded.image.size == (133, 200)
    # the same JPEG data without the tag, rotated by hand: identical pixels
    plain = decode_image(with_orientation(original, "JPEG", 1), LIMITS, max_side=200)
    assert (plain.width, plain.height) == (600, 400)
    expected = plain.image.transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(decoded.image), np.asarray(expected))

    # and close to the rotated original (JPEG loss only); the opposite rotation is far off
    def distance(other):
        other = other.resize(decoded.image.size, Image.Resampling.BOX)
        return np.abs(np.asarray(decoded.image, np.int16) - np.asarray(other, np.int16)).mean()

    assert distance(original.transpose(Image.Transpose.ROTATE_270)) < 5
    assert distance(original.transpose(Image.Transpose.ROTATE_90)) > 20


# --------------------------------------------------------------------------------- decoder limits


def test_16_bit_greyscale_tiff_is_scaled_not_clipped(table):
    source = np.asarray(Image.open(photos.path("gps_tiff")), dtype=np.float64)
    assert Image.open(photos.path("gps_tiff")).mode == "I;16" and source.max() > 255
    decoded = decode_image(photos.read("gps_tiff"), LIMITS, max_side=512)
    avg = colour_stats(decoded.image, "arithmetic", table)["avg_color"]["rgb"]
    assert all(c < 0.5 for c in avg)
    assert avg == pytest.approx([source.mean() / 257 / 255] * 3, abs=0.005)
    assert np.asarray(decoded.image).max() < 255


def huge_png_header(width: int, height: int) -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + chunk(b"IEND", b""))


def test_pixel_limit_is_413_from_the_header_alone():
    data = huge_png_header(30000, 30000)
    for check in (lambda: open_checked(data, LIMITS), lambda: decode_image(data, LIMITS, max_side=512)):
        with pytest.raises(InputError) as caught:
            check()
        assert caught.value.status == 413 and "MAX_IMAGE_PIXELS" in caught.value.detail


def test_pixel_limit_boundary_on_a_real_photo():
    data = photos.read("chelsea")  # 451 x 300
    decode_image(data, DecodeLimits(max_pixels=451 * 300))
    with pytest.raises(InputError) as caught:
        decode_image(data, DecodeLimits(max_pixels=451 * 300 - 1))
    assert caught.value.status == 413


def test_byte_and_format_limits():
    data = photos.read("chelsea")
    with pytest.raises(InputError) as too_big:
        decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    assert too_big.value.status == 413
    with pytest.raises(InputError) as not_allowed:
        decode_image(data, DecodeLimits(formats=("JPEG",)))
    assert not_allowed.value.status == 415
    with pytest.raises(InputError) as empty:
        decode_image(b"", LIMITS)
    assert empty.value.status == 400


def test_truncated_camera_jpeg_is_400():
    with pytest.raises(InputError) as caught:
        decode_image(photos.read("truncated_camera"), LIMITS, max_side=512)
    assert caught.value.status == 400


def test_palette_png_with_transparency_works(table):
    photo = thumbnail("astronaut", 128)
    palette = photo.quantize(16)
    index = palette.getpixel((0, 0))
    palette.info["transparency"] = index
    data = encode(palette, "PNG", transparency=index)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" in reopened.info
    decoded = decode_image(data, LIMITS, max_side=64)  # resized too: must not be NEAREST on palette indices
    stats = colour_stats(decoded.image, "arithmetic", table)
    assert decoded.image.mode == "RGBA"
    full = decode_image(data, LIMITS)
    assert full.image.mode == "RGBA"
    expected = opaque_array(reopened.convert("RGBA"))
    assert 0 < len(expected) < 128 * 128  # some pixels are transparent, some are not
    assert colour_stats(full.image, "arithmetic", table)["avg_color"]["rgb"] == pytest.approx(
        list(reference_average(expected, "arithmetic")), abs=1e-9)
    assert stats is not None
