"""The hostile-input corpus: every case is built here, by one small function per family, and cached.

Each case has a name, a family, what it attacks, the routes that take it and what a correct answer is:

- kind "image": `data` is a file's bytes, sent to every route that takes an image (multipart, JSON base64
  and raw body, as each route allows); `size` is the (width, height) a 200 must report; `reference` is an
  8-bit equivalent a 200 must agree with (16-bit images);
- kind "requests": ready-made HTTP bodies (`requests`: route, content type, body bytes) for the JSON and
  form cases: deep nesting, huge numbers, wrong types, invalid UTF-8;
- kind "url": a URL the server must refuse to fetch (`{photo_server}` is replaced by the test's loopback
  photo server), sent to every route that takes one;
- kind "size": a raw `?size=` value for GET /images/{sha256}.

`expect`: "any" (a 4xx or a correct 200), "4xx", "415" (formats outside the default allow-list), "200"
(must be accepted, with a correct answer).

The corpus is built once into a cache folder keyed by VERSION and this file's own hash (BAD_INPUTS_CACHE
overrides the place), so `make test` does not rebuild it:

    python -m tests.bad_inputs.generate          # build (if needed) and list the cases
    python -m tests.bad_inputs.generate --force  # rebuild
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

VERSION = 1
# the pixel limit of the server the test starts (tests/conftest.py MAIN_ENV["MAX_IMAGE_PIXELS"])
PIXEL_LIMIT = 40_000_000
IMAGE_ROUTES = ("stats", "analyze", "embed", "add", "search", "compare", "find_similar")
JSON_ROUTES = IMAGE_ROUTES
# the field each route reads its image from, in a JSON body
JSON_IMAGE_FIELD = {"stats": "content", "analyze": "image_base64", "embed": "image_base64", "add": "image",
                    "search": "image", "compare": "image1", "find_similar": "file"}
# tasks every /analyze request in the corpus carries (the test sends its own, chosen from what loaded)
CORPUS_TASKS = [{"operation_id": "mobilenet", "type": "embed_mobilenet_v2"}]
BOUNDARY = "bad-inputs-7d3f2a"
Image.MAX_IMAGE_PIXELS = None  # the generator makes the bombs; it never opens one


@dataclass
class Case:
    name: str
    family: str
    attack: str
    kind: str = "image"
    routes: tuple = IMAGE_ROUTES
    expect: str = "any"
    data: bytes | None = None
    size: tuple | None = None
    reference: bytes | None = None
    requests: list = field(default_factory=list)  # [(route, content_type, body)]
    url: str | None = None
    query: str | None = None


# ---------------------------------------------------------------- building blocks


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def photo(width: int = 320, height: int = 240, seed: int = 1) -> Image.Image:
    """A deterministic photo-like RGB picture: gradients, a disc and some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    r = x * 255 // max(1, width - 1)
    g = y * 255 // max(1, height - 1)
    b = (x + 2 * y) % 256
    pixels = np.stack([r, g, b], -1).astype(np.int16)
    disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(width, height) * 0.25) ** 2
    pixels[disc] = (230, 200, 40)
    pixels += rng.integers(-10, 11, pixels.shape).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png(width, height, *, depth=8, color=2, raw=None, idat=None, before=b"", after=b"", level=9) -> bytes:
    """A PNG from parts: IHDR, chunks `before` IDAT, one IDAT (raw scanlines compressed, or `idat` as is)."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    if idat is None:
        idat = zlib.compress(raw if raw is not None else b"\0" * 4, level)
    return PNG_SIGNATURE + ihdr + before + chunk(b"IDAT", idat) + after + chunk(b"IEND", b"")


def png_rows(array: np.ndarray) -> bytes:
    """Scanlines (filter byte 0) of a (height, width[, channels]) big-endian array."""
    return b"".join(b"\0" + row.tobytes() for row in array)


def zeros_rows(width: int, height: int, bytes_per_pixel: int = 1) -> bytes:
    return (b"\0" * (1 + width * bytes_per_pixel)) * height


def jpeg_sof_offset(data: bytes) -> int:
    """Offset of the first SOFn segment's marker."""
    i = 2
    while i < len(data):
        if data[i] != 0xFF:
            raise ValueError("not at a marker")
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return i
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    raise ValueError("no SOF")


def jpeg_with_size(data: bytes, width: int, height: int, start: int = 0) -> bytes:
    """The JPEG (its first SOF at or after `start`) with the frame header's size rewritten."""
    at = start + jpeg_sof_offset(data[start:])
    return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


def jpeg_with_app1(data: bytes, payload: bytes) -> bytes:
    """Insert an APP1 segment (e.g. b"Exif\\0\\0" + TIFF) right after SOI."""
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def small_jpeg(width=16, height=16, **options) -> bytes:
    return encode(photo(width, height), "JPEG", quality=90, **options)


# TIFF/EXIF: entries are (tag, type, count, value bytes); types: 1 BYTE 2 ASCII 3 SHORT 4 LONG 5 RATIONAL
# 7 UNDEFINED 9 SLONG 10 SRATIONAL


def short(tag, *values):
    return (tag, 3, len(values), struct.pack(f"<{len(values)}H", *values))


def long_(tag, *values):
    return (tag, 4, len(values), struct.pack(f"<{len(values)}I", *values))


def ascii_(tag, text: bytes):
    return (tag, 2, len(text) + 1, text + b"\0")


def rational(tag, *pairs, signed=False):
    flat = [v for pair in pairs for v in pair]
    return (tag, 10 if signed else 5, len(pairs), struct.pack(f"<{len(flat)}{'i' if signed else 'I'}", *flat))


def undefined(tag, data: bytes):
    return (tag, 7, len(data), data)


def ifd(entries, base: int, next_offset: int = 0) -> bytes:
    """One IFD at file offset `base`, its long values right after it."""
    head = 2 + 12 * len(entries) + 4
    out, data = struct.pack("<H", len(entries)), b""
    for tag, kind, count, value in sorted(entries, key=lambda e: e[0]):
        if len(value) <= 4:
            slot = value.ljust(4, b"\0")
        else:
            slot = struct.pack("<I", base + head + len(data))
            data += value + (b"\0" if len(value) % 2 else b"")
        out += struct.pack("<HHI", tag, kind, count) + slot
    return out + struct.pack("<I", next_offset) + data


def exif_tiff(ifd0, exif=None, gps=None, *, exif_pointer=None, gps_pointer=None, next_ifd=0) -> bytes:
    """A little-endian TIFF structure: IFD0 (with pointers to the Exif and GPS IFDs when given) and those IFDs.

    `exif_pointer` / `gps_pointer` override where the pointers point (loops, offsets outside the file).
    """
    ifd0 = list(ifd0)
    if exif is not None or exif_pointer is not None:
        ifd0.append(long_(0x8769, 0))
    if gps is not None or gps_pointer is not None:
        ifd0.append(long_(0x8825, 0))
    first = ifd(ifd0, 8, next_ifd)
    exif_at = 8 + len(first)
    exif_block = ifd(exif, exif_at) if exif is not None else b""
    gps_at = exif_at + len(exif_block)
    gps_block = ifd(gps, gps_at) if gps is not None else b""
    pointers = {0x8769: exif_at if exif_pointer is None else exif_pointer,
                0x8825: gps_at if gps_pointer is None else gps_pointer}
    ifd0 = [long_(tag, pointers[tag]) if tag in pointers else (tag, kind, count, value)
            for tag, kind, count, value in ifd0]
    return b"II*\0" + struct.pack("<I", 8) + ifd(ifd0, 8, next_ifd) + exif_block + gps_block


def tiff_file(width, height, *, pixels: bytes = b"\0" * 8, pages: int = 1, next_loop: bool = False,
              bits=8, photometric=1, samples=1, extra=()) -> bytes:
    """A minimal uncompressed TIFF; every page shares one strip of `pixels`; the IFDs follow in a chain."""
    data_at = 8
    header = b"II*\0" + struct.pack("<I", data_at + len(pixels) + (len(pixels) % 2))
    body = pixels + (b"\0" if len(pixels) % 2 else b"")
    at = 8 + len(body)
    for page in range(pages):
        entries = [long_(256, width), long_(257, height), short(258, *([bits] * samples)), short(259, 1),
                   short(262, photometric), long_(273, data_at), short(277, samples), long_(278, height),
                   long_(279, len(pixels)), *extra]
        size = len(ifd(entries, at))
        last = page == pages - 1
        following = (8 + len(pixels) + (len(pixels) % 2) if next_loop else 0) if last else at + size
        body += ifd(entries, at, following)
        at += size
    return header + body


def gif(width, height, frames, *, screen=None, loop=True) -> bytes:
    """A GIF89a with a 2-colour palette; `frames` is a list of (x, y, w, h) whose LZW data is one pixel."""
    sw, sh = screen or (width, height)
    out = b"GIF89a" + struct.pack("<HHBBB", sw, sh, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    if loop:
        out += b"!\xff\x0bNETSCAPE2.0\x03\x01\0\0\0"
    # LZW, min code size 2: clear (4), pixel 0, end (5), packed little-end-first in 3-bit codes
    lzw = bytes([0x02, 0x02, 0x44, 0x01, 0x00])
    for x, y, w, h in frames:
        out += b"!\xf9\x04\x04\x02\x00\x00\x00"  # graphic control: 20 ms
        out += b"," + struct.pack("<HHHHB", x, y, w, h, 0) + lzw
    return out + b";"


def riff_webp(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def u24(value: int) -> bytes:
    return struct.pack("<I", value)[:3]


def webp_vp8l_chunk(width=16, height=16, colour=(200, 30, 30)) -> bytes:
    """The VP8L chunk of a small lossless WebP made by Pillow."""
    data = encode(Image.new("RGB", (width, height), colour), "WEBP", lossless=True)
    at = data.index(b"VP8L")
    size = struct.unpack("<I", data[at + 4:at + 8])[0]
    return data[at:at + 8 + size + (size % 2)]


def webp_animation(canvas, frames) -> bytes:
    """VP8X + ANIM + one ANMF per (x, y, w, h, vp8l chunk)."""
    vp8x = riff_chunk(b"VP8X", bytes([0x02, 0, 0, 0]) + u24(canvas[0] - 1) + u24(canvas[1] - 1))
    anim = riff_chunk(b"ANIM", b"\0\0\0\0" + struct.pack("<H", 0))
    body = b""
    for x, y, w, h, image in frames:
        header = u24(x // 2) + u24(y // 2) + u24(w - 1) + u24(h - 1) + u24(20) + b"\0"
        body += riff_chunk(b"ANMF", header + image)
    return riff_webp(vp8x + anim + body)


def multipart(*parts) -> tuple[str, bytes]:
    """(content type, body) for parts (name, value, filename or None); text values may hold lone surrogates."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + (value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")) + b"\r\n"
    return f"multipart/form-data; boundary={BOUNDARY}", out + f"--{BOUNDARY}--\r\n".encode()


JSON = "application/json"


def good_b64() -> str:
    import base64

    return base64.b64encode(encode(photo(64, 48, seed=7), "PNG")).decode()


def json_fields(route: str, image, **extra) -> dict:
    """A JSON body for `route` with the image in its field, plus what the route needs besides."""
    fields = {JSON_IMAGE_FIELD[route]: image}
    if route == "analyze":
        fields["tasks"] = CORPUS_TASKS
    elif route == "embed":
        fields["model"] = "mobilenet_v2"
    elif route == "add":
        fields["filepath"] = "bad-inputs/json"
    elif route == "compare":
        fields["image2"] = good_b64()
    fields.update(extra)
    return fields


def body(value) -> bytes:
    return json.dumps(value).encode()


# ---------------------------------------------------------------- families of image cases


def header_bombs() -> list[Case]:
    """Tiny files whose headers declare 100000x100000 (65535 where the format stops there) or 20000x20000."""
    cases = []
    jpeg = small_jpeg()
    mpo = encode(photo(16, 16), "MPO", save_all=True, append_images=[photo(16, 16, seed=2)])
    vp8l = webp_vp8l_chunk(1, 1)
    for big in (100_000, 20_000):
        j = min(big, 65535)
        pixels = b"\0" * 8
        canvas = riff_chunk(b"VP8X", b"\0\0\0\0" + u24(big - 1) + u24(big - 1))
        bmp_header = struct.pack("<IiiHHIIiiII", 40, big, big, 1, 24, 0, 0, 2835, 2835, 0, 0)
        cases += [
            Case(f"png_header_{big}x{big}", "header_bombs", f"PNG IHDR declares {big}x{big}, payload of 4 bytes",
                 data=png(big, big)),
            Case(f"jpeg_header_{j}x{j}", "header_bombs", f"baseline JPEG whose SOF0 declares {j}x{j}",
                 data=jpeg_with_size(jpeg, j, j)),
            Case(f"webp_vp8x_{big}x{big}", "header_bombs", f"WebP VP8X canvas {big}x{big} around a 1x1 bitstream",
                 data=riff_webp(canvas + vp8l)),
            Case(f"gif_header_{j}x{j}", "header_bombs", f"GIF screen and frame {j}x{j}, LZW data for one pixel",
                 data=gif(j, j, [(0, 0, j, j)])),
            Case(f"bmp_header_{big}x{big}", "header_bombs", f"BMP info header {big}x{big}, 24 bits, 8 bytes of pixels",
                 data=b"BM" + struct.pack("<IHHI", 54 + 8, 0, 0, 54) + bmp_header + pixels),
            Case(f"tiff_header_{big}x{big}", "header_bombs", f"TIFF IFD declares {big}x{big}, one 8-byte strip",
                 data=tiff_file(big, big)),
            Case(f"mpo_header_{j}x{j}", "header_bombs", f"MPO whose first frame's SOF declares {j}x{j}",
                 data=jpeg_with_size(mpo, j, j)),
        ]
    return cases


def _bmp_rle8(width, height) -> bytes:
    """An 8-bit RLE BMP of zeros: runs of 255 per row, so every pixel is really decoded."""
    row = b"\xff\x00" * (width // 255) + (bytes([width % 255, 0]) if width % 255 else b"") + b"\x00\x00"
    pixels = row * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def real_bombs() -> list[Case]:
    """Highly compressible real images just under and just over PIXEL_LIMIT, and text-chunk bombs."""
    under, over = 6324, 6325  # 39,992,976 and 40,005,625 pixels
    assert under * under <= PIXEL_LIMIT < over * over
    ju, jo = 6320, 6328  # JPEG: multiples of 8
    wu, wo = 2441, 2442  # WebP: 16383 wide at most
    assert ju * ju <= PIXEL_LIMIT < jo * jo and 16383 * wu <= PIXEL_LIMIT < 16383 * wo
    cases = []
    for side, label in ((under, "under"), (over, "over")):
        grey = Image.new("L", (side, side), 128)
        cases += [
            Case(f"png_bomb_{label}_limit", "real_bombs", f"{side}x{side} greyscale PNG of one colour, ~40 KB",
                 data=png(side, side, color=0, raw=(b"\0" + b"\x80" * side) * side), size=(side, side)),
            Case(f"gif_bomb_{label}_limit", "real_bombs", f"{side}x{side} GIF of one colour", data=encode(grey, "GIF"),
                 size=(side, side)),
            Case(f"tiff_bomb_{label}_limit", "real_bombs", f"{side}x{side} deflate TIFF of one colour",
                 data=encode(grey, "TIFF", compression="tiff_adobe_deflate"), size=(side, side)),
            Case(f"bmp_rle8_bomb_{label}_limit", "real_bombs", f"{side}x{side} RLE8 BMP, runs of 255",
                 data=_bmp_rle8(side, side), size=(side, side)),
        ]
        del grey
    for side, label in ((ju, "under"), (jo, "over")):
        cases.append(Case(f"jpeg_bomb_{label}_limit", "real_bombs", f"{side}x{side} greyscale JPEG of one colour",
                          data=encode(Image.new("L", (side, side), 128), "JPEG", quality=50), size=(side, side)))
    for height, label in ((wu, "under"), (wo, "over")):
        cases.append(Case(f"webp_bomb_{label}_limit", "real_bombs", f"16383x{height} lossless WebP of one colour",
                          data=encode(Image.new("RGB", (16383, height), (90, 90, 90)), "WEBP", lossless=True),
                          size=(16383, height)))
    frame = Image.new("L", (ju, ju), 100)
    cases.append(Case("mpo_bomb_under_limit", "real_bombs", f"MPO of two {ju}x{ju} frames of one colour",
                      data=encode(frame, "MPO", quality=50, save_all=True, append_images=[frame]), size=(ju, ju)))
    ztxt = chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * 200_000_000, 9))
    cases.append(Case("png_ztxt_bomb", "real_bombs", "16x16 PNG with a zTXt chunk inflating to 200 MB",
                      data=png(16, 16, raw=zeros_rows(16, 16, 3), before=ztxt), size=(16, 16)))
    return cases


def containers() -> list[Case]:
    """ICO/ICNS wrapping a bomb, thousands of pages or frames, frames far larger than their canvas."""
    def ico(embedded: bytes) -> bytes:
        return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(embedded), 22) + embedded

    def icns(kind: bytes, embedded: bytes) -> bytes:
        entry = kind + struct.pack(">I", 8 + len(embedded)) + embedded
        return b"icns" + struct.pack(">I", 8 + len(entry)) + entry

    tiny_idat = zlib.compress(b"\0\0\0\0")
    bomb_100k = png(100_000, 100_000, idat=tiny_idat)
    vp8l = webp_vp8l_chunk(16, 16)
    page = bytes(range(64))
    cases = [
        Case("ico_png_100000x100000", "containers", "ICO whose embedded PNG declares 100000x100000 (91 bytes)",
             expect="415", data=ico(bomb_100k)),
        Case("ico_png_20000x20000", "containers", "ICO whose embedded PNG declares 20000x20000",
             expect="415", data=ico(png(20_000, 20_000, idat=tiny_idat))),
        Case("icns_png_100000x100000", "containers", "ICNS ic10 entry holding a PNG that declares 100000x100000",
             expect="415", data=icns(b"ic10", bomb_100k)),
        Case("icns_valid", "containers", "a real ICNS (every size of a 64x64 picture), outside the allow-list",
             expect="415", data=encode(photo(64, 64), "ICNS")),
        Case("tiff_5000_pages", "containers", "multi-page TIFF: 5000 8x8 pages in an IFD chain",
             data=tiff_file(8, 8, pixels=page, pages=5000), size=(8, 8)),
        Case("tiff_ifd_chain_loop", "containers", "TIFF whose last IFD points back to the first (an endless chain)",
             data=tiff_file(8, 8, pixels=page, pages=3, next_loop=True), size=(8, 8)),
        Case("gif_5000_frames", "containers", "animated GIF, 5000 1x1 frames on a 16x16 screen",
             data=gif(16, 16, [(i % 16, (i // 16) % 16, 1, 1) for i in range(5000)]), size=(16, 16)),
        Case("gif_frame_65535_on_16x16_screen", "containers", "GIF: 16x16 screen, first frame 65535x65535",
             data=gif(16, 16, [(0, 0, 65535, 65535)])),
        Case("gif_second_frame_65535", "containers", "GIF: a valid 16x16 first frame, then a 65535x65535 frame",
             data=_gif_then_huge_frame(), size=(16, 16)),
        Case("apng_5000_frames", "containers", "APNG with 5000 16x16 frames", data=_apng(5000), size=(16, 16)),
        Case("apng_frame_100000x100000", "containers", "APNG: 16x16 image, first fcTL declares 100000x100000",
             data=_apng(2, first=(100_000, 100_000))),
        Case("webp_anim_5000_frames", "containers", "animated WebP with 5000 16x16 frames",
             data=webp_animation((16, 16), [(0, 0, 16, 16, vp8l)] * 5000), size=(16, 16)),
        Case("webp_anim_canvas_16383x16383", "containers", "animated WebP: 16383x16383 canvas, 16x16 frames",
             data=webp_animation((16383, 16383), [(0, 0, 16, 16, vp8l)] * 3)),
    ]
    mpo = encode(photo(16, 16), "MPO", save_all=True, append_images=[photo(16, 16, seed=2)])
    second = mpo.index(b"\xff\xd8", 2)
    cases.append(Case("mpo_second_frame_65535", "containers", "MPO: 16x16 first frame, second frame's SOF 65535x65535",
                      data=jpeg_with_size(mpo, 65535, 65535, start=second), size=(16, 16)))
    return cases


def _gif_then_huge_frame() -> bytes:
    """Pillow's 16x16 GIF with a second frame, 65535x65535 with one pixel of data, before the trailer."""
    first = encode(photo(16, 16).convert("P"), "GIF")
    return first[:-1] + gif(1, 1, [(0, 0, 65535, 65535)], loop=False)[13 + 6:]


def _apng(frames: int, first=None) -> bytes:
    """A 16x16 APNG; every frame is a full 16x16 (the first one's fcTL says `first` when given)."""
    def fctl(sequence, w, h):
        return chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, w, h, 0, 0, 1, 50, 0, 0))

    rows = zlib.compress(zeros_rows(16, 16, 3))
    w, h = first or (16, 16)
    out = PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
    out += chunk(b"acTL", struct.pack(">II", frames, 0)) + fctl(0, w, h) + chunk(b"IDAT", rows)
    sequence = 1
    for _ in range(frames - 1):
        out += fctl(sequence, 16, 16) + chunk(b"fdAT", struct.pack(">I", sequence + 1) + rows)
        sequence += 2
    return out + chunk(b"IEND", b"")


def aspect_ratios() -> list[Case]:
    """Tiny files of extreme shape: a 1-pixel-wide strip blows up in any resize to a fixed short side."""
    def grey_png(w, h):
        return png(w, h, color=0, raw=zeros_rows(w, h))

    line = Image.new("L", (1, 65500), 128)
    return [
        Case("png_1x30000", "aspect_ratios", "1x30000 PNG: a short-side resize makes it 256x7.7M",
             data=grey_png(1, 30000), size=(1, 30000)),
        Case("png_1x100000", "aspect_ratios", "1x100000 PNG: a short-side resize makes it 256x25.6M (19 GB)",
             data=grey_png(1, 100_000), size=(1, 100_000)),
        Case("png_100000x1", "aspect_ratios", "100000x1 PNG", data=grey_png(100_000, 1), size=(100_000, 1)),
        Case("png_30000x1", "aspect_ratios", "30000x1 PNG", data=grey_png(30000, 1), size=(30000, 1)),
        Case("jpeg_1x65500", "aspect_ratios", "1x65500 greyscale JPEG", data=encode(line, "JPEG"), size=(1, 65500)),
        Case("gif_65535x1", "aspect_ratios", "65535x1 GIF", data=encode(Image.new("L", (65535, 1), 50), "GIF"),
             size=(65535, 1)),
    ]


def _repeat_last_scan(data: bytes, times: int) -> bytes:
    """The progressive JPEG with its last SOS segment (header and entropy-coded data) repeated before EOI."""
    last_sos = data.rindex(b"\xff\xda")
    eoi = data.rindex(b"\xff\xd9")
    scan = data[last_sos:eoi]
    return data[:eoi] + scan * times + data[eoi:]


def scan_bombs() -> list[Case]:
    """Progressive JPEGs that cost far more to decode than their size suggests."""
    rng = np.random.default_rng(3)
    side = 2048  # one flat grey 4 MP picture: ~50 KB, and ~15 s of libjpeg time once its last scan repeats 3000 times
    flat = Image.fromarray(np.full((side, side), 120, np.uint8))
    progressive = encode(flat, "JPEG", quality=75, progressive=True)
    y, x = np.mgrid[0:4000, 0:5000]
    smooth = np.stack([(x // 20) % 256, (y // 16) % 256, ((x + y) // 40) % 256], -1).astype(np.int16)
    smooth += rng.integers(-24, 25, smooth.shape).astype(np.int16)
    large = Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8))
    base = small_jpeg(64, 64)
    markers = b"".join(b"\xff\xfe" + struct.pack(">H", 2 + 10) + b"comment %02d" % (i % 100) for i in range(50_000))
    return [
        Case("jpeg_progressive_3000_repeated_scans", "scan_bombs",
             f"{side}x{side} greyscale progressive JPEG whose last scan is repeated 3000 times before EOI",
             data=_repeat_last_scan(progressive, 3000), size=(side, side)),
        Case("jpeg_large_slow_progressive", "scan_bombs", "5000x4000 noisy progressive JPEG (20 MP, every scan full)",
             data=encode(large, "JPEG", quality=80, progressive=True), size=(5000, 4000)),
        Case("jpeg_50000_comment_segments", "scan_bombs", "64x64 JPEG preceded by 50000 COM segments",
             data=base[:2] + markers + base[2:], size=(64, 64)),
    ]


def broken_files() -> list[Case]:
    """Truncated files of each format, headers alone, nearly empty files, junk after the end, polyglots."""
    picture = photo()
    formats = {
        "png": encode(picture, "PNG"), "jpeg": encode(picture, "JPEG", quality=90),
        "gif": encode(picture, "GIF"), "webp": encode(picture, "WEBP", quality=80),
        "bmp": encode(picture, "BMP"), "tiff": encode(picture, "TIFF"),
        "mpo": encode(picture, "MPO", save_all=True, append_images=[photo(seed=5)]),
    }
    cases = [Case(f"{fmt}_truncated_half", "broken_files", f"a 320x240 {fmt.upper()} cut at half its length",
                  data=data[:len(data) // 2], size=(320, 240)) for fmt, data in formats.items()]
    png_data, jpeg_data = formats["png"], formats["jpeg"]
    rng = np.random.default_rng(4)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("evil.sh", "#!/bin/sh\necho owned\n")
    html = b"<html><body><script>alert(document.cookie)</script></body></html>"
    pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R/OpenAction<</S/JavaScript/JS(app.alert(1))>>>>endobj\n%%EOF\n"
    after_iend = png_data + rng.bytes(1_000_000)
    cases += [
        Case("png_header_only", "broken_files", "PNG signature and IHDR, nothing after", data=png_data[:33]),
        Case("jpeg_header_only", "broken_files", "JPEG up to the end of its SOF, no scan",
             data=jpeg_data[:jpeg_sof_offset(jpeg_data) + 19]),
        Case("zero_bytes", "broken_files", "an empty file", data=b""),
        Case("one_byte", "broken_files", "a single 0xFF byte", data=b"\xff"),
        Case("png_1mb_garbage_after_iend", "broken_files", "a valid PNG followed by 1 MB of random bytes",
             data=after_iend, size=(320, 240)),
        Case("png_zip_polyglot", "broken_files", "a valid PNG that is also a ZIP archive (appended)",
             data=png_data + zipped.getvalue(), size=(320, 240)),
        Case("png_html_polyglot", "broken_files", "a valid PNG carrying an HTML script in tEXt and after IEND",
             data=png_data[:33] + chunk(b"tEXt", b"Comment\0" + html) + png_data[33:] + html, size=(320, 240)),
        Case("png_pdf_polyglot", "broken_files", "a valid PNG with a PDF (JavaScript OpenAction) inside and after it",
             data=png_data[:33] + chunk(b"tEXt", b"PDF\0" + pdf) + png_data[33:] + pdf, size=(320, 240)),
        Case("jpeg_trailing_script", "broken_files", "a valid JPEG followed by a <script> element",
             data=jpeg_data + b"<script>fetch('/images/').then(r=>r.text()).then(alert)</script>", size=(320, 240)),
    ]
    return cases


def foreign_formats() -> list[Case]:
    """Formats outside the default allow-list: 415, and never an external program (Ghostscript) started."""
    small = photo(32, 32)
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
           b'<rect width="64" height="64" fill="red"/></svg>')
    xxe = (b'<?xml version="1.0"?>\n<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
           b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="64" height="64">'
           b'<text x="0" y="20">&xxe;</text><image xlink:href="file:///etc/passwd" width="64" height="64"/>'
           b'<image href="http://127.0.0.1:9/probe.png" width="1" height="1"/></svg>')
    psd = (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3) + struct.pack(">III", 0, 0, 0)
           + struct.pack(">H", 0) + bytes(3 * 16 * 16))
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
           b"(%pipe%touch /tmp/imageserver-bad-inputs-eps-ran) (w) file closefile\n"
           b"/Helvetica findfont 12 scalefont setfont 0 0 moveto (pwned) show showpage\n%%EOF\n")
    return [
        Case("svg_plain", "foreign_formats", "an SVG drawing", expect="415", data=svg),
        Case("svg_external_entity", "foreign_formats", "SVG with an XXE entity and images at file:///etc/passwd",
             expect="415", data=xxe),
        Case("psd", "foreign_formats", "a Photoshop PSD header with 16x16 raw channels", expect="415", data=psd),
        Case("eps_runs_a_program", "foreign_formats", "EPS whose PostScript opens a %pipe% (runs a program)",
             expect="415", data=eps),
        Case("eps_pillow", "foreign_formats", "an EPS written by Pillow", expect="415", data=encode(small, "EPS")),
        Case("pdf", "foreign_formats", "a PDF written by Pillow", expect="415", data=encode(small, "PDF")),
        Case("xbm", "foreign_formats", "an X bitmap (C source text)", expect="415",
             data=encode(small.convert("1"), "XBM")),
        Case("pcx", "foreign_formats", "a PCX image", expect="415", data=encode(small, "PCX")),
        Case("tga", "foreign_formats", "a Targa image", expect="415", data=encode(small, "TGA")),
        Case("ico_plain", "foreign_formats", "a plain 32x32 ICO", expect="415", data=encode(small, "ICO")),
        Case("jpeg2000", "foreign_formats", "a JPEG 2000 codestream file", expect="415",
             data=encode(small, "JPEG2000")),
        Case("ppm_header_100000x100000", "foreign_formats", "a PPM header declaring 100000x100000", expect="415",
             data=b"P6\n100000 100000\n255\n" + bytes(48)),
        Case("html_page", "foreign_formats", "an HTML page", expect="415",
             data=b"<!doctype html><html><body><script>alert(1)</script></body></html>\n" * 4),
    ]


def _exif_jpeg(tiff: bytes, base: bytes) -> bytes:
    return jpeg_with_app1(base, b"Exif\0\0" + tiff)


def exif_cases() -> list[Case]:
    """Malformed EXIF on a valid 320x240 picture; a 200 must report the picture's size and a sane GPS."""
    base = encode(photo(), "JPEG", quality=90)
    make = [ascii_(0x010F, b"BadInputs"), ascii_(0x0110, b"Corpus 1")]
    ok_lon = [ascii_(3, b"W"), rational(4, (111, 1), (39, 1), (4257, 100))]
    rng = np.random.default_rng(6)

    def case(name, attack, tiff, **kw):
        return Case(name, "exif", attack, data=_exif_jpeg(tiff, base), size=kw.pop("size", (320, 240)), **kw)

    return [
        case("exif_gps_latitude_as_text", "GPSLatitude stored as ASCII text",
             exif_tiff(make, gps=[ascii_(1, b"N"), ascii_(2, b"35 deg 36' 0.00\" N"), *ok_lon])),
        case("exif_gps_wrong_counts", "GPSLatitude with 1 rational, GPSLongitude with 6, GPSAltitude with 3",
             exif_tiff(make, gps=[ascii_(1, b"N"), rational(2, (35, 1)), ascii_(3, b"W"),
                                  rational(4, *[(1, 1)] * 6), rational(6, (1, 1), (2, 1), (3, 1))])),
        case("exif_gps_zero_denominators", "GPS rationals 35/0, 0/0 and an altitude of 5/0",
             exif_tiff(make, gps=[ascii_(1, b"N"), rational(2, (35, 0), (0, 0), (0, 0)), *ok_lon,
                                  (5, 1, 1, b"\0"), rational(6, (5, 0))])),
        case("exif_gps_huge_values", "GPS degrees, altitude and timestamp of 4294967295/1",
             exif_tiff(make, gps=[ascii_(1, b"N"), rational(2, *[(0xFFFFFFFF, 1)] * 3), ascii_(3, b"E"),
                                  rational(4, *[(0xFFFFFFFF, 1)] * 3), rational(6, (0xFFFFFFFF, 1)),
                                  rational(7, *[(0xFFFFFFFF, 1)] * 3)])),
        case("exif_gps_negative_srational", "GPSLatitude as SRATIONAL -91/1 (wrong type, out of range)",
             exif_tiff(make, gps=[ascii_(1, b"S"), rational(2, (-91, 1), (0, 1), (0, 1), signed=True), *ok_lon])),
        case("exif_ifd_pointer_loop", "ExifIFD and GPS pointers and IFD0's next pointer all point back at IFD0",
             exif_tiff(make, exif_pointer=8, gps_pointer=8, next_ifd=8)),
        case("exif_pointer_outside_file", "Exif and GPS IFD pointers far outside the file",
             exif_tiff(make, exif_pointer=0x7FFFFFF0, gps_pointer=0xFFFFFFF0)),
        case("exif_garbage_makernote", "a 60 KB MakerNote of random bytes",
             exif_tiff(make, exif=[undefined(0x927C, rng.bytes(60_000)), ascii_(0x9003, b"2020:01:01 00:00:00")])),
        case("exif_huge_tag_count", "a SHORT tag claiming 0x40000000 values at an offset outside the file",
             exif_tiff(make + [(0x0131, 3, 0x40000000, struct.pack("<I", 0x7FFF0000))])),
        case("exif_orientation_0", "Orientation 0 (not a valid value)", exif_tiff(make + [short(0x0112, 0)])),
        case("exif_orientation_9999", "Orientation 9999", exif_tiff(make + [short(0x0112, 9999)])),
        case("exif_orientation_as_text", "Orientation as the ASCII text \"6\"",
             exif_tiff(make + [ascii_(0x0112, b"6")])),
        case("exif_invalid_utf8_text", "Make and DateTimeOriginal with invalid UTF-8 bytes",
             exif_tiff([ascii_(0x010F, b"\xff\xfe\xc3\x28bad"), ascii_(0x0110, b"\xed\xa0\x80")],
                       exif=[ascii_(0x9003, b"\xff" * 19)])),
        Case("exif_truncated_ifd", "exif", "an APP1 Exif segment cut in the middle of IFD0",
             data=_exif_jpeg(exif_tiff(make)[:20], base), size=(320, 240)),
        Case("png_exif_orientation_9999", "exif", "a PNG eXIf chunk with Orientation 9999",
             data=encode(photo(), "PNG", exif=exif_tiff([short(0x0112, 9999)])), size=(320, 240)),
        Case("tiff_orientation_9999", "exif", "a TIFF whose own Orientation tag is 9999",
             data=encode(photo(), "TIFF", tiffinfo={274: 9999}), size=(320, 240)),
    ]


def sixteen_bit() -> list[Case]:
    """16-bit (and float) images: they must be ACCEPTED and agree with their 8-bit equivalent (`reference`)."""
    def grey16(w, h, peak=65535):
        """Bands of 16-bit values (odd low bytes too) that deflate well: rows repeat within a band."""
        y, x = np.mgrid[0:h, 0:w]
        values = ((x // 8) * 8 / (w - 1) * 0.7 + (y // 40) * 40 / (h - 1) * 0.3) * peak
        values[((x // 8) * 8 - w // 3) ** 2 + ((y // 40) * 40 - h // 2) ** 2 < (h // 5) ** 2] = peak * 0.9
        return values.astype(np.uint16)

    def to8(values, peak=65535):
        return np.clip(values.astype(np.float64) * 255 / peak + 0.5, 0, 255).astype(np.uint8)

    grey = grey16(3000, 2000)
    grey_ref = encode(Image.fromarray(to8(grey), "L"), "PNG")
    small = grey16(600, 400)
    rgb = np.stack([grey16(1500, 1000), grey16(1500, 1000)[:, ::-1], grey16(1500, 1000)[::-1]], -1)
    alpha = np.full((400, 600), 40000, np.uint16)
    alpha[:, :200] = 65535
    rgba = np.dstack([np.stack([small, small[:, ::-1], small[::-1]], -1), alpha])
    dark = grey16(600, 400, peak=255)  # a genuinely dark 16-bit picture: every sample <= 255 of 65535
    floats = (small.astype(np.float32) / 65535).astype(np.float32)
    big_endian = Image.frombytes("I;16B", (600, 400), small.astype(">u2").tobytes())
    must = dict(family="sixteen_bit", expect="200")
    return [
        Case("png_gray16_3000x2000", attack="16-bit greyscale PNG, 3000x2000", size=(3000, 2000),
             data=png(3000, 2000, depth=16, color=0, raw=png_rows(grey.astype(">u2")), level=6), reference=grey_ref,
             **must),
        Case("tiff_gray16_3000x2000", attack="16-bit greyscale TIFF (I;16), 3000x2000", size=(3000, 2000),
             data=encode(Image.fromarray(grey), "TIFF", compression="tiff_adobe_deflate"), reference=grey_ref, **must),
        Case("png_rgb16_1500x1000", attack="16-bit RGB PNG", size=(1500, 1000),
             data=png(1500, 1000, depth=16, color=2, raw=png_rows(rgb.astype(">u2")), level=6),
             reference=encode(Image.fromarray(to8(rgb), "RGB"), "PNG"), **must),
        Case("png_rgba16_600x400", attack="16-bit RGBA PNG, partly transparent", size=(600, 400),
             data=png(600, 400, depth=16, color=6, raw=png_rows(rgba.astype(">u2"))),
             reference=encode(Image.fromarray(to8(rgba), "RGBA"), "PNG"), **must),
        Case("png_gray16_dark", attack="16-bit greyscale PNG whose samples are all <= 255 (a dark picture)",
             size=(600, 400), data=png(600, 400, depth=16, color=0, raw=png_rows(dark.astype(">u2"))),
             reference=encode(Image.fromarray(to8(dark), "L"), "PNG"), **must),
        Case("tiff_gray16_big_endian", attack="16-bit big-endian greyscale TIFF (I;16B)", size=(600, 400),
             data=encode(big_endian, "TIFF"), reference=encode(Image.fromarray(to8(small), "L"), "PNG"), **must),
        Case("tiff_float32_gray", attack="32-bit float greyscale TIFF, samples in 0..1", size=(600, 400),
             data=encode(Image.fromarray(floats, "F"), "TIFF"),
             reference=encode(Image.fromarray(to8(small), "L"), "PNG"), **must),
    ]


# ---------------------------------------------------------------- JSON and form bodies


def json_bodies() -> list[Case]:
    """Hostile JSON and form bodies: depth, huge numbers, NaN, huge strings, wrong types, bad encodings."""
    image = good_b64()
    deep_array = b"[" * 100_000 + b"]" * 100_000
    deep_object = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    big_int = "9" * 5000

    def per_route(make, routes=JSON_ROUTES, content_type=JSON):
        return [(route, content_type, make(route)) for route in routes]

    def nested(depth):
        value = {"leaf": 1}
        for _ in range(depth):
            value = {"a": value}
        return value

    def field_json(route, value_text: str) -> bytes:
        """The route's JSON body with its image field set to raw JSON text."""
        fields = json_fields(route, "__VALUE__")
        return json.dumps(fields).replace('"__VALUE__"', value_text).encode()

    huge = "A" * 5_000_000
    tasks = lambda n: [{"operation_id": f"t{i}", "type": "embed_mobilenet_v2"} for i in range(n)]  # noqa: E731
    wrong_types = [
        ("embed", body(json_fields("embed", image, model=["mobilenet_v2"]))),
        ("embed", body(json_fields("embed", image, model={"name": "mobilenet_v2"}))),
        ("embed", body(json_fields("embed", image, model=None, normalize={"yes": True}))),
        ("analyze", body(json_fields("analyze", image, tasks={"operation_id": "a", "type": "embed_mobilenet_v2"}))),
        ("analyze", body(json_fields("analyze", image, tasks="embed_mobilenet_v2"))),
        ("analyze", body(json_fields("analyze", image, tasks=42))),
        ("analyze", body(json_fields("analyze", image, tasks=[{"operation_id": 7, "type": "embed_mobilenet_v2"}]))),
        ("analyze", body(json_fields("analyze", image, tasks=[{"operation_id": "a", "type": ["x"], "params": [1]}]))),
        ("analyze", body(json_fields("analyze", image, tasks=[{"operation_id": "a", "type": "describe_image",
                                                                "params": {"max_length": {"n": 1}, "target": [1]}}]))),
        ("stats", body({"content": image, "averaging_method": ["geometric"]})),
        ("stats", body({"content": image, "averaging_method": {"m": 1}})),
        ("add", body(json_fields("add", image, filepath=12345))),
        ("add", body(json_fields("add", image, filepath=["a", "b"]))),
        ("add", body(json_fields("add", image, metadata=[1, 2, 3]))),
        ("add", body(json_fields("add", image, metadata="not an object"))),
        ("add", body(json_fields("add", image, metadata=17))),
        ("search", body({"image": image, "all_orientations": {"yes": 1}})),
        ("search", body({"image": image, "all_orientations": 2})),
        ("compare", body({"image1": image, "image2": 5})),
        ("find_similar", body({"file": image, "limit": [5]})),
        ("find_similar", body({"file": image, "limit": {"n": 5}})),
        ("find_similar", body({"file": image, "model": ["mobilenet_v2"]})),
        ("find_similar", body({"file": image, "model": {"m": 1}})),
    ]
    image_types = [(route, JSON, body(json_fields(route, value))) for route in JSON_ROUTES
                   for value in (5, ["a"], {"b": 1}, None, True)]
    form_depth = "[" * 100_000 + "]" * 100_000
    cases = [
        Case("json_array_nested_100000", "json", "a body of 100000 nested arrays", kind="requests",
             requests=per_route(lambda r: deep_array)),
        Case("json_object_nested_100000", "json", "a body of 100000 nested objects", kind="requests",
             requests=per_route(lambda r: deep_object)),
        Case("json_field_nested_100000", "json", "the image field holds 100000 nested arrays", kind="requests",
             requests=per_route(lambda r: field_json(r, "[" * 100_000 + "]" * 100_000))),
        Case("json_int_5000_digits", "json", "the image field, limit and averaging_method as 5000-digit integers",
             kind="requests",
             requests=per_route(lambda r: field_json(r, big_int))
             + [("find_similar", JSON, b'{"file": "%s", "limit": %s}' % (image.encode(), big_int.encode())),
                ("stats", JSON, b'{"content": "%s", "averaging_method": %s}' % (image.encode(), big_int.encode()))]),
        Case("json_nan_and_infinity", "json", "NaN, Infinity and -Infinity as values", kind="requests",
             requests=per_route(lambda r: field_json(r, "NaN"))
             + [("find_similar", JSON, b'{"file": "%s", "limit": Infinity}' % image.encode()),
                ("find_similar", JSON, b'{"file": "%s", "limit": NaN}' % image.encode()),
                ("find_similar", JSON, b'{"file": "%s", "limit": 1e400}' % image.encode()),
                ("embed", JSON, b'{"image_base64": "%s", "model": "mobilenet_v2", "normalize": -Infinity}'
                 % image.encode()),
                ("add", JSON, b'{"image": "%s", "filepath": "x", "metadata": {"v": NaN}}' % image.encode())]),
        Case("json_huge_strings", "json", "5 MB strings in the image field, filepath, model, operation_id",
             kind="requests",
             requests=per_route(lambda r: body(json_fields(r, huge)))
             + [("add", JSON, body(json_fields("add", image, filepath=huge))),
                ("embed", JSON, body(json_fields("embed", image, model=huge))),
                ("analyze", JSON, body(json_fields("analyze", image, tasks=[{"operation_id": huge,
                                                                             "type": "embed_mobilenet_v2"}])))]),
        Case("json_wrong_field_types", "json", "every field of every route given a wrong type", kind="requests",
             requests=[(route, JSON, payload) for route, payload in wrong_types]),
        Case("json_image_field_wrong_types", "json", "the image field as a number, list, object, null, boolean",
             kind="requests", requests=image_types),
        Case("json_add_metadata_nested_900", "json", "/add metadata nested 900 deep (JSON and form)",
             kind="requests",
             requests=[("add", JSON, body(json_fields("add", image, metadata=nested(900)))),
                       ("add", *multipart(("image", encode(photo(64, 48, seed=7), "PNG"), "a.png"),
                                          ("filepath", "bad-inputs/meta900", None),
                                          ("metadata", json.dumps(nested(900)), None)))]),
        Case("form_fields_nested_100000", "json", "tasks_json and metadata form fields nested 100000 deep",
             kind="requests",
             requests=[("analyze", *multipart(("image_file", encode(photo(64, 48, seed=7), "PNG"), "a.png"),
                                              ("tasks_json", form_depth, None))),
                       ("add", *multipart(("image", encode(photo(64, 48, seed=7), "PNG"), "a.png"),
                                          ("filepath", "bad-inputs/deep", None), ("metadata", form_depth, None)))]),
        Case("json_10000_tasks", "json", "10000 tasks in one /analyze request (JSON and tasks_json)", kind="requests",
             requests=[("analyze", JSON, body({"image_base64": image, "tasks": tasks(10_000)})),
                       ("analyze", *multipart(("image_file", encode(photo(64, 48, seed=7), "PNG"), "a.png"),
                                              ("tasks_json", json.dumps(tasks(10_000)), None)))]),
        Case("json_duplicate_keys", "json", "every field given twice, the second a different value", kind="requests",
             requests=per_route(lambda r: body(json_fields(r, image))[:-1]
                                + b', "%s": "not base64 !!", "model": 1, "tasks": 2, "filepath": 3}'
                                % JSON_IMAGE_FIELD[r].encode())),
        Case("json_invalid_utf8", "json", "a JSON body with invalid UTF-8 bytes in a string", kind="requests",
             requests=per_route(lambda r: b'{"%s": "\xff\xfe\xc3\x28", "filepath": "\xed\xa0\x80"}'
                                % JSON_IMAGE_FIELD[r].encode())),
        Case("json_lone_surrogates", "json", "\\ud800 escapes in operation_id, filepath, metadata and model",
             kind="requests",
             requests=[("analyze", JSON, b'{"image_base64": "%s", "tasks": [{"operation_id": "\\ud800",'
                        b' "type": "embed_mobilenet_v2"}]}' % image.encode()),
                       ("add", JSON, b'{"image": "%s", "filepath": "a\\udc00b"}' % image.encode()),
                       ("add", JSON,
                        b'{"image": "%s", "filepath": "m", "metadata": {"k": "\\ud800"}}' % image.encode()),
                       ("embed", JSON, b'{"image_base64": "%s", "model": "\\ud800"}' % image.encode()),
                       ("find_similar", JSON, b'{"file": "%s", "model": "\\udfff"}' % image.encode()),
                       ("stats", JSON, b'{"content": "%s", "averaging_method": "\\ud800"}' % image.encode())]),
        Case("json_body_not_an_object", "json", "the body is an array, a bare string, a number, null or true",
             kind="requests",
             requests=[(route, JSON, payload) for route in JSON_ROUTES
                       for payload in (body([json_fields(route, image)]), b'"hello"', b"12", b"null", b"true")]),
    ]
    return cases


# ---------------------------------------------------------------- URLs and ?size=


URL_ROUTES = IMAGE_ROUTES


def urls() -> list[Case]:
    """URLs the fetcher must refuse before connecting: loopback in every spelling, private, metadata, schemes."""
    listed = [
        ("url_decimal_ip", "http://2130706433/", "127.0.0.1 as one decimal number"),
        ("url_octal_ip", "http://0177.0.0.1/", "127.0.0.1 with an octal first byte"),
        ("url_hex_ip", "http://0x7f.0.0.1/", "127.0.0.1 with a hex first byte"),
        ("url_short_ip", "http://127.1/", "127.0.0.1 in two parts"),
        ("url_zero", "http://0/", "0, which connects to this host"),
        ("url_ipv6_loopback", "http://[::1]/", "IPv6 loopback"),
        ("url_ipv4_mapped", "http://[::ffff:127.0.0.1]/", "IPv4-mapped IPv6 loopback"),
        ("url_ipv4_mapped_hex", "http://[::ffff:7f00:1]/", "IPv4-mapped loopback in hex groups"),
        ("url_credentials", "http://user:pass@127.0.0.1/", "credentials in the URL"),
        ("url_cloud_metadata", "http://169.254.169.254/latest/meta-data/", "the cloud metadata service"),
        ("url_private_10", "http://10.0.0.1/", "a private address"),
        ("url_localhost", "http://localhost/", "localhost by name"),
        ("url_file", "file:///etc/passwd", "a file: URL"),
        ("url_gopher", "gopher://127.0.0.1:6379/_FLUSHALL", "gopher: (classic SSRF into Redis)"),
        ("url_ftp", "ftp://127.0.0.1/image.jpg", "ftp:"),
        ("url_100000_chars", "http://127.0.0.1/" + "a" * 100_000, "a URL of 100,000 characters"),
        ("url_redirect_to_private", "{photo_server}/redirect-private",
         "a loopback server that redirects to 10.0.0.1 (refused already as loopback on this server)"),
        ("url_nat64_loopback", "http://[64:ff9b::7f00:1]/", "NAT64 form of 127.0.0.1"),
        ("url_unspecified", "http://0.0.0.0:22/", "0.0.0.0, port 22"),
    ]
    return [Case(name, "urls", f"image URL: {what}", kind="url", routes=URL_ROUTES, expect="4xx", url=url)
            for name, url, what in listed]


def sizes() -> list[Case]:
    """?size= values for GET /images/{sha256} (a stored original): 4xx, or a preview of at most 1024 px."""
    listed = [
        ("size_superscript_two", "²", "a superscript two (str.isdigit() is true, int() fails)"),
        ("size_circled_one", "①", "a circled digit one"),
        ("size_5000_digits", "9" * 5000, "a 5000-digit number (beyond int()'s digit limit)"),
        ("size_minus_one", "-1", "-1"),
        ("size_zero", "0", "0"),
        ("size_exponent", "1e3", "1e3"),
        ("size_leading_space", " 12", "a leading space"),
        ("size_fullwidth_digits", "２５６", "256 in fullwidth digits"),
        ("size_empty", "", "an empty value"),
    ]
    return [Case(name, "sizes", f"?size={what}", kind="size", routes=("images",), query=value)
            for name, value, what in listed]


# ---------------------------------------------------------------- the corpus and its cache

# families in the order the test sends them: cheap and safe first, those that may hurt the server last
FAMILIES = (json_bodies, urls, sizes, foreign_formats, broken_files, exif_cases, header_bombs, containers,
            sixteen_bit, real_bombs, aspect_ratios, scan_bombs)


def build() -> list[Case]:
    cases = [case for family in FAMILIES for case in family()]
    names = [case.name for case in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, duplicates
    return cases


def cache_root() -> Path:
    if os.environ.get("BAD_INPUTS_CACHE"):
        return Path(os.environ["BAD_INPUTS_CACHE"])
    return Path.home() / ".cache" / "imageserver-test" / "bad_inputs"


def cache_key() -> str:
    return f"v{VERSION}-{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]}"


def write(cases: list[Case], folder: Path) -> None:
    files = folder / "files"
    files.mkdir(parents=True)
    index = []
    for case in cases:
        entry = {"name": case.name, "family": case.family, "attack": case.attack, "kind": case.kind,
                 "routes": list(case.routes), "expect": case.expect, "size": case.size, "url": case.url,
                 "query": case.query, "requests": []}
        if case.data is not None:
            (files / f"{case.name}.bin").write_bytes(case.data)
            entry["data"] = f"{case.name}.bin"
        if case.reference is not None:
            (files / f"{case.name}.reference.bin").write_bytes(case.reference)
            entry["reference"] = f"{case.name}.reference.bin"
        for i, (route, content_type, payload) in enumerate(case.requests):
            name = f"{case.name}.{i}.{route}.bin"
            (files / name).write_bytes(payload)
            entry["requests"].append({"route": route, "content_type": content_type, "file": name})
        index.append(entry)
    (folder / "index.json").write_text(json.dumps(index, indent=1))


def ensure(force: bool = False) -> Path:
    """The corpus folder, built on first use (concurrent builders race safely: one rename wins)."""
    root = cache_root()
    folder = root / cache_key()
    if (folder / "index.json").is_file() and not force:
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        write(build(), staging / "corpus")
        if force and folder.exists():
            shutil.rmtree(folder)
        try:
            os.rename(staging / "corpus", folder)
        except OSError:
            if not (folder / "index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def index() -> list[dict]:
    """The cases' descriptions without their bytes (names, families, routes): what test collection needs."""
    return json.loads((ensure() / "index.json").read_text())


def load(force: bool = False) -> list[Case]:
    folder = ensure(force)
    files = folder / "files"
    cases = []
    for entry in json.loads((folder / "index.json").read_text()):
        cases.append(Case(
            name=entry["name"], family=entry["family"], attack=entry["attack"], kind=entry["kind"],
            routes=tuple(entry["routes"]), expect=entry["expect"],
            size=tuple(entry["size"]) if entry["size"] else None,
            data=(files / entry["data"]).read_bytes() if "data" in entry else None,
            reference=(files / entry["reference"]).read_bytes() if "reference" in entry else None,
            requests=[(r["route"], r["content_type"], (files / r["file"]).read_bytes()) for r in entry["requests"]],
            url=entry["url"], query=entry["query"],
        ))
    return cases


def main(argv: list[str]) -> None:
    cases = load(force="--force" in argv)
    print(f"{len(cases)} cases in {ensure()}")
    by_family: dict[str, int] = {}
    for case in cases:
        by_family[case.family] = by_family.get(case.family, 0) + 1
        size = len(case.data) if case.data is not None else sum(len(r[2]) for r in case.requests)
        print(f"  {case.family:16} {case.name:40} {size:>10,} B  {case.attack}")
    print("by family: " + ", ".join(f"{family} {count}" for family, count in by_family.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
