"""EXIF as JSON: every tag named and JSON-safe, nested IFDs resolved, GPS kept when it is real.

Values: rationals become floats (None for a zero denominator), tuples become lists, text bytes become
strings, up to 8 other bytes become integers, longer blobs become "base64:<data>". Tags Pillow has no name for are kept as "0xNNNN".

EXIF is whatever the file says, so nothing here trusts a type, a count or a pointer: a value Pillow
cannot read is dropped, a value over MAX_VALUE_BYTES is summarised as "<N bytes>" without being
unpacked (a 20 MB PNG eXIf chunk of SHORTs would otherwise become a 10-million-item list), an IFD
holds at most MAX_TAGS tags, and a nested IFD whose pointer is not an offset inside the data is
skipped. Pointers are followed one level only (IFD0 -> Exif, GPS; Exif -> Interop), so a pointer
loop cannot recurse.
"""

import base64
import math
import warnings

from PIL import ExifTags, Image, TiffImagePlugin

_POINTERS = {ExifTags.IFD.Exif: "Exif", ExifTags.IFD.GPSInfo: "GPSInfo", ExifTags.IFD.Interop: "Interop"}
_USER_COMMENT_CODES = {b"ASCII\0\0\0": "ascii", b"UNICODE\0": "utf-16", b"JIS\0\0\0\0\0": "shift_jis"}
# GPS tags that say how to read other tags; a block holding only these carries no position
_GPS_FRAMING = {"GPSVersionID", "GPSLatitudeRef", "GPSLongitudeRef", "GPSAltitudeRef", "GPSMapDatum"}
_DEFAULT_STRINGS = {"", "1970:01:01", "0000:00:00"}
MAX_VALUE_BYTES = 64 * 1024  # larger than a JPEG's whole EXIF segment may be
MAX_TAGS = 1024  # per IFD; real ones hold a few dozen


def _text_or_base64(raw: bytes):
    """Text when the bytes are printable UTF-8; a few raw bytes (BYTE-typed tags such as
    GPSAltitudeRef) as integers; any other blob as "base64:<data>"."""
    text = raw.rstrip(b"\0 ")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if text and decoded is not None and all(ch.isprintable() or ch in "\t\n\r" for ch in decoded):
        return decoded
    if not text and len(raw) > 8:
        return ""  # a blank fixed-size field, e.g. an unused UserComment
    if len(raw) <= 8:
        return raw[0] if len(raw) == 1 else list(raw)
    return "base64:" + base64.b64encode(raw).decode("ascii")


def _user_comment(raw: bytes) -> str:
    encoding = _USER_COMMENT_CODES.get(raw[:8])
    if encoding is None:
        return _text_or_base64(raw[8:] if raw[:8] == b"\0" * 8 else raw)
    return raw[8:].decode(encoding, errors="replace").rstrip("\0 ")


def jsonable(value):
    """A JSON-safe copy of one EXIF value."""
    if isinstance(value, TiffImagePlugin.IFDRational):
        return float(value) if value.denominator else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return value.rstrip("\0 ")
    if isinstance(value, bytes):
        return _text_or_base64(value)
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def _raw_size(lazy, tag: int) -> int:
    """The size of a tag's data that Pillow has read but not unpacked yet (0 when unknown)."""
    raw = getattr(lazy, "_tagdata", None)  # Pillow's IFDs keep each tag's bytes here until first read
    data = raw.get(tag) if isinstance(raw, dict) else None
    return len(data) if isinstance(data, (bytes, bytearray)) else 0


def _read(mapping, lazy=None) -> dict:
    """{tag: value} of one IFD (an Image.Exif, a Pillow IFD or a dict) within MAX_TAGS and MAX_VALUE_BYTES;
    `lazy` is the Pillow IFD that still holds unread tags' bytes."""
    tags = [tag for tag in mapping if isinstance(tag, int)]
    if len(tags) > MAX_TAGS:
        tags = sorted(tags)[:MAX_TAGS]
    out = {}
    for tag in tags:
        size = _raw_size(lazy, tag)
        if size > MAX_VALUE_BYTES:
            out[tag] = f"<{size} bytes>"
            continue
        try:
            out[tag] = mapping[tag]
        except Exception:  # a type or count Pillow cannot decode: the tag is dropped, the rest stands
            continue
    return out


def _sub_ifd(exif: Image.Exif, group: int, offset) -> tuple[object, object]:
    """(mapping, lazy IFD) of the IFD `offset` points at, read like Pillow's get_ifd but without
    unpacking every value; ({}, None) for a pointer that is not an offset to a plausible IFD."""
    fp, head = getattr(exif, "fp", None), getattr(exif, "head", None)
    if fp is None or not isinstance(head, bytes):  # built in memory, not read from a file
        return exif.get_ifd(group), None
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        return {}, None
    try:
        fp.seek(offset)
        width = 8 if getattr(exif, "bigtiff", False) else 2
        count = fp.read(width)
        if len(count) < width or int.from_bytes(count, "little" if head[:2] == b"II" else "big") > MAX_TAGS:
            return {}, None
        ifd = TiffImagePlugin.ImageFileDirectory_v2(head, group=group)
        fp.seek(offset)
        ifd.load(fp)
    except Exception:
        return {}, None
    return ifd, ifd


def _named(ifd: dict, names: dict) -> dict:
    out = {}
    for tag, value in ifd.items():
        name = names.get(tag, f"0x{tag:04x}")
        if isinstance(value, tuple) and len(value) == 1:  # Pillow's get_ifd unwraps single values too
            value = value[0]
        out[name] = _user_comment(value) if name == "UserComment" and isinstance(value, bytes) else jsonable(value)
    return out


def _is_default(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, str):
        return value.strip() in _DEFAULT_STRINGS
    if isinstance(value, list):
        return all(_is_default(v) for v in value)
    return False


def gps_is_real(gps: dict) -> bool:
    """False for an empty block, an all-zero one, or a camera's 1970 placeholder with no fix."""
    informative = {k: v for k, v in gps.items() if k not in _GPS_FRAMING}
    return any(not _is_default(v) for v in informative.values())


def _number(value) -> float | None:
    """A finite real number, or None (text, a list, None, a bool, NaN, an infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _degrees(value, ref, negative_ref) -> float | None:
    """Degrees from 1 to 3 non-negative numbers (degrees, minutes, seconds); None for anything else."""
    parts = value if isinstance(value, list) else [value]
    numbers = [_number(p) for p in parts]
    if not 1 <= len(numbers) <= 3 or any(n is None or n < 0 for n in numbers):
        return None
    degrees = sum(n / 60**i for i, n in enumerate(numbers))
    return -degrees if str(ref).strip().upper() == negative_ref else degrees


def gps_decimal(gps: dict) -> dict | None:
    """Decimal latitude/longitude (negative south and west) and altitude in metres, from a named GPS block."""
    if "GPSLatitude" not in gps or "GPSLongitude" not in gps:
        return None
    lat = _degrees(gps["GPSLatitude"], gps.get("GPSLatitudeRef", "N"), "S")
    lon = _degrees(gps["GPSLongitude"], gps.get("GPSLongitudeRef", "E"), "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    out = {"latitude": round(lat, 7), "longitude": round(lon, 7)}
    altitude = _number(gps.get("GPSAltitude"))
    if altitude is not None:
        out["altitude"] = -altitude if gps.get("GPSAltitudeRef") == 1 else altitude
    return out


def exif_to_json(exif: Image.Exif) -> tuple[dict, dict | None]:
    """(exif_data, gps) where exif_data is flat like PIL's _getexif (IFD0 and the Exif IFD merged, the
    GPS block under "GPSInfo", interoperability under "Interop") and gps is decimal or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns on every odd tag it skips or trims: that is expected here
        ifd0 = _read(exif, getattr(exif, "_info", None))
        exif_ifd = _read(*_sub_ifd(exif, ExifTags.IFD.Exif, ifd0.get(ExifTags.IFD.Exif)))
        interop_ifd = _read(*_sub_ifd(exif, ExifTags.IFD.Interop, exif_ifd.get(ExifTags.IFD.Interop)))
        gps_ifd = _read(*_sub_ifd(exif, ExifTags.IFD.GPSInfo, ifd0.get(ExifTags.IFD.GPSInfo)))
    data = _named({tag: value for tag, value in ifd0.items() if tag not in _POINTERS}, ExifTags.TAGS)
    data.update(_named(exif_ifd, ExifTags.TAGS))
    interop = _named(interop_ifd, ExifTags.TAGS)
    if interop:
        data["Interop"] = interop
    gps = _named(gps_ifd, ExifTags.GPSTAGS)
    if not gps_is_real(gps):
        return data, None
    data["GPSInfo"] = gps
    return data, gps_decimal(gps)
