"""Cheap walks over the structure of a file, before Pillow parses it: frame and page counts, and the
sizes that containers (ICO, ICNS) hide from the header.

Pillow parses some structures in Python, one call per element: GIF sub-blocks and junk bytes, PNG
chunks, BMP run-length codes, ICO and ICNS directories. A file made of millions of tiny elements
then costs seconds before a pixel is decoded, so each walk here refuses a file with far more
elements than any real image has. The walks themselves use C-level searches or stop at those bounds.
"""

import re
import struct

from errors import InputError

MAX_GIF_BLOCKS = 500_000  # a 25 MB GIF written in the usual 255-byte sub-blocks has about 100 000
MAX_GIF_JUNK = 1 << 20
MAX_PNG_CHUNKS = 32_768  # encoders write IDAT in 8-64 KB chunks, or one per row at most
# strips or tiles of one page: 64 MP in 32x32 tiles is 62 500 (real files use 256x256 or larger)
MAX_TIFF_VALUES = 65_536
_TIFF_NUMBERS = frozenset({3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 16, 17, 18})  # not BYTE, ASCII or UNDEFINED
MAX_BMP_RLE_BYTES = 2 << 20  # Pillow decodes BMP run-length data in Python, two bytes per step
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GIF_BLOCK = re.compile(rb"[\x21\x2c\x3b]")  # extension, image descriptor, trailer
_JP2 = (b"\xff\x4f\xff\x51", b"\x0d\x0a\x87\x0a", b"\x00\x00\x00\x0cjP  ")


def gif_frames(data: bytes, cap: int) -> int:
    """Image descriptors in a GIF, counted up to cap + 1, skipping each block's sub-blocks."""
    if len(data) < 13:
        return 1
    pos, frames, blocks, junk, end = 13, 0, 0, 0, len(data)
    if data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    while pos < end:
        found = _GIF_BLOCK.search(data, pos)  # Pillow skips other bytes one at a time
        if found is None:
            break
        junk += found.start() - pos
        if junk > MAX_GIF_JUNK:
            raise InputError(400, f"the GIF has more than {MAX_GIF_JUNK} bytes of garbage between its blocks")
        pos, kind = found.start(), data[found.start()]
        if kind == 0x3B:
            break
        if kind == 0x21:
            pos += 2  # introducer and label
        else:
            frames += 1
            if frames > cap or pos + 10 > end:
                break
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1  # local colour table, LZW code size
        while pos < end:
            size = data[pos]
            pos += size + 1
            blocks += 1
            if size == 0:
                break
            if blocks > MAX_GIF_BLOCKS:
                raise InputError(400, f"the GIF is split into more than {MAX_GIF_BLOCKS} blocks")
    return max(frames, 1)


def png_chunks(data: bytes) -> int:
    """The number of chunks up to IEND; InputError past MAX_PNG_CHUNKS."""
    pos, chunks = len(PNG_MAGIC), 0
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise InputError(400, f"the PNG is split into more than {MAX_PNG_CHUNKS} chunks")
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IEND":
            break
        pos += 12 + length
    return chunks


def png_size(data: bytes, offset: int = 0) -> tuple[int, int] | None:
    """Width and height from the IHDR of a PNG starting at `offset`, or None if it is not one."""
    if data[offset:offset + 8] != PNG_MAGIC or data[offset + 12:offset + 16] != b"IHDR":
        return None
    return struct.unpack_from(">II", data, offset + 16) if offset + 24 <= len(data) else None


def tiff_pages(data: bytes, cap: int) -> int:
    """Pages in the IFD chain of a TIFF (classic or BigTIFF), counted up to cap + 1; a loop ends it.
    The first IFD, the one Pillow and libtiff read, may not hold more than MAX_TIFF_VALUES numbers
    in one tag: each strip or tile costs libtiff a step, and Pillow unpacks every number."""
    if len(data) < 16:
        return 1
    order = "<" if data[:2] == b"II" else ">"
    (magic,) = struct.unpack_from(order + "H", data, 2)
    if magic == 43:  # BigTIFF: 8-byte counts and offsets, 20-byte entries
        count_fmt, entry_fmt, next_fmt = order + "Q", order + "HHQ", order + "Q"
        (offset,) = struct.unpack_from(order + "Q", data, 8)
    else:
        count_fmt, entry_fmt, next_fmt = order + "H", order + "HHI", order + "I"
        (offset,) = struct.unpack_from(order + "I", data, 4)
    count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(next_fmt)
    entry = 20 if magic == 43 else 12
    pages, seen = 0, set()
    while offset and offset not in seen and offset + count_size <= len(data) and pages <= cap:
        seen.add(offset)
        pages += 1
        (entries,) = struct.unpack_from(count_fmt, data, offset)
        if pages == 1:
            _check_tiff_values(data, offset + count_size, entries, entry, entry_fmt)
        link = offset + count_size + entries * entry
        if link + next_size > len(data):
            break
        (offset,) = struct.unpack_from(next_fmt, data, link)
    return max(pages, 1)


def _check_tiff_values(data: bytes, start: int, entries: int, entry: int, entry_fmt: str) -> None:
    for index in range(min(entries, (len(data) - start) // entry)):
        tag, kind, count = struct.unpack_from(entry_fmt, data, start + index * entry)
        if kind in _TIFF_NUMBERS and count > MAX_TIFF_VALUES:
            raise InputError(400, f"the TIFF's tag {tag} holds {count} numbers; at most {MAX_TIFF_VALUES} are accepted")


def check_bmp(data: bytes) -> None:
    """Refuse a run-length-encoded BMP with more data than Pillow's Python RLE decoder gets through quickly."""
    if len(data) < 34 or struct.unpack_from("<I", data, 14)[0] < 40:
        return  # an OS/2 header has no compression field
    compression = struct.unpack_from("<I", data, 30)[0]
    if compression in (1, 2) and len(data) > MAX_BMP_RLE_BYTES:
        raise InputError(400, f"run-length-encoded BMPs larger than {MAX_BMP_RLE_BYTES} bytes are not accepted")


def ico_sizes(data: bytes, max_entries: int) -> list[tuple[int, int]]:
    """The real size of every image in an ICO: the embedded PNG's or BMP's own header, which may
    disagree with the directory's one-byte sides (Pillow decodes the largest inside Image.open)."""
    if len(data) < 6:
        return []
    (count,) = struct.unpack_from("<H", data, 4)
    if count > max_entries:
        raise InputError(413, f"the ICO holds {count} images; the limit is {max_entries} (MAX_IMAGE_FRAMES)")
    sizes = []
    for index in range(count):
        entry = 6 + 16 * index
        if entry + 16 > len(data):
            break
        (offset,) = struct.unpack_from("<I", data, entry + 12)
        size = png_size(data, offset)
        if size is None and offset + 12 <= len(data):  # a DIB: its height counts the AND mask too
            width, height = struct.unpack_from("<ii", data, offset + 4)
            size = (abs(width), abs(height) // 2)
        if size is not None:
            sizes.append(size)
    return sizes


def icns_sizes(data: bytes, max_entries: int) -> list[tuple[int, int]]:
    """The size of every PNG icon in an ICNS; JPEG 2000 icons are refused (no JPEG 2000 decoder is admitted)."""
    pos, entries, sizes = 8, 0, []
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos + 4:pos + 8], "big")
        if length < 8:
            break  # Pillow stops with an error here
        entries += 1
        if entries > max_entries:
            raise InputError(413, f"the ICNS holds more than {max_entries} entries; the limit is MAX_IMAGE_FRAMES")
        body = pos + 8
        if data[body:body + 12].startswith(_JP2):
            raise InputError(415, "ICNS icons in JPEG 2000 are not accepted")
        size = png_size(data, body)
        if size is not None:
            sizes.append(size)
        pos += length
    return sizes


def webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP declares (VP8X, VP8 or VP8L, the first chunk), or None if it cannot be read.

    Pillow opens a WebP through libwebp's animation decoder, which allocates two canvas-sized buffers
    (up to 16383x16383x4 bytes each) before Pillow's own pixel check runs: the size is checked here first.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    return None
