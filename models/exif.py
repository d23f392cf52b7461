"""EXIF as JSON: every tag named and JSON-safe, nested IFDs resolved, GPS kept when it is real.

Values: rationals become floats (None for a zero denominator), tuples become lists, text bytes become
strings, up to 8 other bytes become integers, longer blobs become "base64:<data>". Tags Pillow has no name for are kept as "0xNNNN".
"""

import base64
import math

from PIL import ExifTags, Image, TiffImagePlugin

_POINTERS = {ExifTags.IFD.Exif: "Exif", ExifTags.IFD.GPSInfo: "GPSInfo", ExifTags.IFD.Interop: "Interop"}
_USER_COMMENT_CODES = {b"ASCII\0\0\0": "ascii", b"UNICODE\0": "utf-16", b"JIS\0\0\0\0\0": "shift_jis"}
# GPS tags that say how to read other tags; a block holding only these carries no position
_GPS_FRAMING = {"GPSVersionID", "GPSLatitudeRef", "GPSLongitudeRef", "GPSAltitudeRef", "GPSMapDatum"}
_DEFAULT_STRINGS = {"", "1970:01:01", "0000:00:00"}


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


def _named(ifd: dict, names: dict) -> dict:
    out = {}
    for tag, value in ifd.items():
        name = names.get(tag, f"0x{tag:04x}")
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


def _degrees(value, ref, negative_ref) -> float | None:
    parts = value if isinstance(value, list) else [value]
    if not parts or any(p is None for p in parts):
        return None
    degrees = sum(p / 60**i for i, p in enumerate(parts[:3]))
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
    altitude = gps.get("GPSAltitude")
    if isinstance(altitude, (int, float)):
        out["altitude"] = -altitude if gps.get("GPSAltitudeRef") == 1 else altitude
    return out


def exif_to_json(exif: Image.Exif) -> tuple[dict, dict | None]:
    """(exif_data, gps) where exif_data is flat like PIL's _getexif (IFD0 and the Exif IFD merged, the
    GPS block under "GPSInfo", interoperability under "Interop") and gps is decimal or None."""
    base = {tag: value for tag, value in exif.items() if tag not in _POINTERS}
    data = _named(base, ExifTags.TAGS)
    data.update(_named(exif.get_ifd(ExifTags.IFD.Exif), ExifTags.TAGS))
    interop = _named(exif.get_ifd(ExifTags.IFD.Interop), ExifTags.TAGS)
    if interop:
        data["Interop"] = interop
    gps = _named(exif.get_ifd(ExifTags.IFD.GPSInfo), ExifTags.GPSTAGS)
    if not gps_is_real(gps):
        return data, None
    data["GPSInfo"] = gps
    return data, gps_decimal(gps)
