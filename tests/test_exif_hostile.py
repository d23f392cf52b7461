"""EXIF that lies about its types, counts, values and pointers, through the /stats model in-process.

Every block here is written by hand (little-endian TIFF, as inside a JPEG's APP1 or a PNG's eXIf), so
the tests are free to break every rule Pillow's writer would enforce. The answer must always be strict
JSON with the colour statistics intact: a bad tag is kept as text or dropped, never raised.
"""

import io
import json
import struct
import time

import pytest
from PIL import Image

from images.decode import DecodeLimits, decode_image
from stats.exif import MAX_TAGS, MAX_VALUE_BYTES
from stats.image_stats import ImageStats, StatsInput

ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SRATIONAL, DOUBLE = 2, 3, 4, 5, 7, 10, 12
EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005
MAKE = (0x010F, ASCII, 8, b"TestCam\x00")


def tiff(ifds: list[list[tuple]]) -> bytes:
    """Little-endian TIFF holding `ifds` one after the other from offset 8. An entry is (tag, type,
    count, value): bytes (stored inline when 4 or fewer, else after the IFD), ("ifd", k) for the
    offset of IFD k, or ("offset", n) for any raw offset."""
    offsets, pos = [], 8
    for entries in ifds:
        offsets.append(pos)
        pos += 2 + 12 * len(entries) + 4 + sum(len(v) for *_, v in entries if isinstance(v, bytes) and len(v) > 4)
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for k, entries in enumerate(ifds):
        data_at = offsets[k] + 2 + 12 * len(entries) + 4
        table, blob = bytearray(struct.pack("<H", len(entries))), bytearray()
        for tag, kind, count, value in entries:
            if isinstance(value, tuple):
                field = struct.pack("<I", offsets[value[1]] if value[0] == "ifd" else value[1])
            elif len(value) <= 4:
                field = value.ljust(4, b"\x00")
            else:
                field = struct.pack("<I", data_at + len(blob))
                blob += value
            table += struct.pack("<HHI", tag, kind, count) + field
        out += table + struct.pack("<I", 0) + blob
    return bytes(out)


def rationals(*pairs, signed=False) -> bytes:
    return b"".join(struct.pack("<ii" if signed else "<II", n, d) for n, d in pairs)


def gps_block(*entries) -> list[list[tuple]]:
    """IFD0 (Make and a GPS pointer) and a GPS IFD holding `entries`, longitude 111 39' 42" W."""
    longitude = [(3, ASCII, 2, b"W\x00"), (4, RATIONAL, 3, rationals((111, 1), (39, 1), (42, 1)))]
    return [[MAKE, (GPS_IFD, LONG, 1, ("ifd", 1))], [*entries, *longitude]]


def carrier(fmt: str, raw: bytes) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(out, fmt, exif=b"Exif\x00\x00" + raw)
    return out.getvalue()


@pytest.fixture(scope="module")
def stats(cache_dir):
    return ImageStats(cache_dir)


def answer(stats, raw: bytes, fmt: str = "JPEG") -> dict:
    """The /stats answer for an 8x8 green image carrying `raw` as its EXIF; checked to be strict JSON."""
    started = time.process_time()
    decoded = decode_image(carrier(fmt, raw), DecodeLimits(), max_side=512)
    body = stats.one(StatsInput(decoded, "arithmetic"))
    assert time.process_time() - started < 1.0
    assert json.loads(json.dumps(body, allow_nan=False)) == body
    assert body["color_data"]["avg_color"]["hex"] == "#0ac81e"  # the rest of the answer stands
    assert body["exif_data"]["Make"] == "TestCam"
    return body


N = (1, ASCII, 2, b"N\x00")
HOSTILE_GPS = {
    "latitude as text": [N, (2, ASCII, 15, b"35/1,35/1,59/1\x00")],
    "latitude with 1 value": [N, (2, RATIONAL, 1, rationals((35, 1)))],
    "latitude with 7 values": [N, (2, RATIONAL, 7, rationals(*[(35, 1)] * 7))],
    "zero denominators": [N, (2, RATIONAL, 3, rationals((35, 0), (1, 0), (0, 0)))],
    "huge values": [N, (2, RATIONAL, 3, rationals(*[(2**32 - 1, 1)] * 3)), (6, RATIONAL, 1, rationals((2**32 - 1, 1)))],
    "negative values": [N, (2, SRATIONAL, 3, rationals((-35, 1), (-10, 1), (0, 1), signed=True))],
    "NaN and infinity": [N, (2, DOUBLE, 3, struct.pack("<ddd", float("nan"), float("inf"), 1.0)),
                         (6, DOUBLE, 1, struct.pack("<d", float("nan")))],
    "latitude over 90": [N, (2, RATIONAL, 3, rationals((95, 1), (0, 1), (0, 1)))],
    "latitude as bytes": [N, (2, UNDEFINED, 3, b"#\x00\x00")],
    "altitude as text": [N, (2, RATIONAL, 3, rationals((35, 1), (0, 1), (0, 1))), (5, ASCII, 2, b"1\x00"),
                         (6, ASCII, 5, b"high\x00")],
    "reference as a number": [(1, SHORT, 1, struct.pack("<H", 83)),
                              (2, RATIONAL, 3, rationals((35, 1), (0, 1), (0, 1)))],
}
# what the decimal position must be: None, or the latitude (the longitude is always -111.66...)
EXPECTED_LATITUDE = {
    "latitude as text": None, "latitude with 1 value": 35.0, "latitude with 7 values": None,
    "zero denominators": None, "huge values": None, "negative values": None, "NaN and infinity": None,
    "latitude over 90": None, "latitude as bytes": None, "altitude as text": 35.0, "reference as a number": 35.0,
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("case", list(HOSTILE_GPS))
def test_hostile_gps_never_raises(stats, case, fmt):
    body = answer(stats, tiff(gps_block(*HOSTILE_GPS[case])), fmt)
    expected = EXPECTED_LATITUDE[case]
    if expected is None:
        assert body["gps"] is None
    else:
        assert body["gps"]["latitude"] == pytest.approx(expected)
        assert body["gps"]["longitude"] == pytest.approx(-(111 + 39 / 60 + 42 / 3600), abs=1e-6)
        assert "altitude" not in body["gps"]  # text is no altitude


def test_latitude_as_text_is_kept_as_text(stats):
    body = answer(stats, tiff(gps_block(*HOSTILE_GPS["latitude as text"])))
    assert body["exif_data"]["GPSInfo"]["GPSLatitude"] == "35/1,35/1,59/1"


POINTERS = {
    "Exif IFD points at itself": [[MAKE, (EXIF_IFD, LONG, 1, ("ifd", 1))],
                                  [(0x829A, RATIONAL, 1, rationals((1, 100))), (EXIF_IFD, LONG, 1, ("ifd", 1)),
                                   (INTEROP_IFD, LONG, 1, ("ifd", 1))]],
    "Exif and GPS point at IFD0": [[MAKE, (EXIF_IFD, LONG, 1, ("ifd", 0)), (GPS_IFD, LONG, 1, ("ifd", 0))]],
    "pointers outside the data": [[MAKE, (EXIF_IFD, LONG, 1, ("offset", 10**9)),
                                   (GPS_IFD, LONG, 1, ("offset", 99999))]],
    "pointers as text": [[MAKE, (EXIF_IFD, ASCII, 6, b"hello\x00"), (GPS_IFD, ASCII, 4, b"abc\x00")]],
    "pointers with two values": [[MAKE, (EXIF_IFD, LONG, 2, struct.pack("<II", 8, 8)),
                                  (GPS_IFD, RATIONAL, 1, rationals((8, 1)))]],
    "pointer into the middle of a value": [[MAKE, (EXIF_IFD, LONG, 1, ("offset", 9))]],
    "Interop pointer loops back to Exif": [[MAKE, (EXIF_IFD, LONG, 1, ("ifd", 1))],
                                           [(INTEROP_IFD, LONG, 1, ("ifd", 1)),
                                            (0x829A, RATIONAL, 1, rationals((1, 100)))]],
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("case", list(POINTERS))
def test_nested_ifd_pointers_that_loop_or_point_anywhere(stats, case, fmt):
    body = answer(stats, tiff(POINTERS[case]), fmt)
    assert body["gps"] is None


def test_garbage_makernote_and_undefined_tags_with_huge_counts(stats):
    raw = tiff([[MAKE, (EXIF_IFD, LONG, 1, ("ifd", 1))],
                [(0x927C, UNDEFINED, 300, bytes(range(256)) + b"\xff" * 44),  # MakerNote: garbage
                 (0x9286, UNDEFINED, 0x7FFFFFFF, b"abcdefgh"),  # UserComment: a count far past the data
                 (0xA000, UNDEFINED, 0xFFFFFFFF, ("offset", 100)),
                 (0x8827, SHORT, 1, struct.pack("<H", 400))]])
    data = answer(stats, raw)["exif_data"]
    assert data["MakerNote"].startswith("base64:")
    # the tags after the broken ones still come through (Pillow skips out-of-line data past a bogus
    # count, so an inline value is what is sure to survive)
    assert data["ISOSpeedRatings"] == 400 and "UserComment" not in data


@pytest.mark.parametrize("kind, size", [(SHORT, 2), (LONG, 4), (RATIONAL, 8), (UNDEFINED, 1)])
def test_a_huge_value_is_summarised_not_unpacked(stats, kind, size):
    """10 million SHORTs in a PNG's eXIf took 5 s and 700 MB as a Python list, and 68 MB of JSON."""
    count = 2_000_000 // size
    value = (bytes(range(1, 256)) * (count * size // 255 + 1))[:count * size]
    raw = tiff([[MAKE, (0x9999, kind, count, value)]])
    data = answer(stats, raw, "PNG")["exif_data"]
    assert data["0x9999"] == f"<{count * size} bytes>"
    assert count * size > MAX_VALUE_BYTES


def test_an_ifd_with_tens_of_thousands_of_tags_is_capped(stats):
    entries = [(tag, RATIONAL, 1, rationals((tag, 3))) for tag in range(0x1000, 0x1000 + 30_000)]
    raw = tiff([[MAKE, *entries, (EXIF_IFD, LONG, 1, ("ifd", 1)), (GPS_IFD, LONG, 1, ("ifd", 1))], entries])
    data = answer(stats, raw, "PNG")["exif_data"]
    assert len(data) <= MAX_TAGS + 1  # the sub-IFDs with more than MAX_TAGS entries are skipped whole


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("raw", [b"XXjunkjunkjunk", b"II", b"II*\x00" + struct.pack("<I", 10**6),
                                 b"II*\x00\x08\x00\x00\x00\xff\xff", b"",
                                 b"II+\x00\x08\x00\x00\x00" + struct.pack("<QQ", 16, 2**40)],
                         ids=["junk", "short", "IFD outside", "IFD truncated", "empty", "BigTIFF header"])
def test_an_unreadable_exif_block_leaves_the_image_readable(stats, fmt, raw):
    decoded = decode_image(carrier(fmt, raw), DecodeLimits(), max_side=512)
    body = stats.one(StatsInput(decoded, "arithmetic"))
    json.dumps(body, allow_nan=False)
    assert body["color_data"] is not None and body["gps"] is None


def test_user_comment_of_the_wrong_type_or_length(stats):
    raw = tiff([[MAKE, (EXIF_IFD, LONG, 1, ("ifd", 1))], [(0x9286, UNDEFINED, 3, b"ASC")]])
    assert answer(stats, raw)["exif_data"]["UserComment"] == "ASC"
    raw = tiff([[MAKE, (EXIF_IFD, LONG, 1, ("ifd", 1))], [(0x9286, ASCII, 6, b"hello\x00")]])
    assert answer(stats, raw)["exif_data"]["UserComment"] == "hello"


def test_tags_of_unknown_types_are_dropped(stats):
    raw = tiff([[MAKE, (0x9999, 99, 4, b"abcd"), (0x9998, 0, 1, b"a"), (0x9997, SHORT, 1, struct.pack("<H", 7))]])
    data = answer(stats, raw)["exif_data"]
    assert data["0x9997"] == 7 and "0x9999" not in data and "0x9998" not in data
