"""The shape of a JPEG read from its markers alone, before Pillow or libjpeg sees it.

A progressive JPEG costs one pass over every block per scan, and a scan can be a dozen bytes, so
the bytes say little about the work: the scan count does. Pillow's own header parser also walks
junk bytes and marker segments one Python call at a time, so both are bounded here first.

The walk follows libjpeg's rules: header segments are skipped by their length (an EXIF thumbnail
inside APP1 is never looked at), junk between segments is skipped up to the next marker, and the
entropy-coded data after SOS runs up to the next marker that is not a stuffed 0xFF00 or a restart
marker. Only the first image counts: MPO frames and trailers after the first EOI are not decoded.
"""

import re
from dataclasses import dataclass

from errors import InputError

# header context: any 0xFF followed by a byte other than 0x00 (stuffing) or 0xFF (fill) is a marker
_MARKER = re.compile(rb"\xff[^\x00\xff]")
# entropy-coded data: restart markers RST0-7 belong to the scan and do not end it
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI, _SOI = 0xDA, 0xD9, 0xD8
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length
# Pillow reads the segments before the first scan in Python, one call each, and skips junk byte by
# byte: a real file has a few dozen segments (an ICC profile split in 64 KB chunks adds up to 255)
MAX_SEGMENTS = 4096
MAX_JUNK_BYTES = 1 << 20


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC


@dataclass(frozen=True)
class JpegShape:
    scans: int  # SOS markers before the first EOI
    # full-image decoding passes, the scans weighted by the share of the blocks they cover: a Cb
    # scan of a 4:2:0 image covers a quarter as many blocks as a Y scan
    passes: float
    segments: int  # marker segments walked, scans included


def jpeg_shape(data: bytes, max_scans: int) -> JpegShape:
    """Walk the markers of `data` (which starts with SOI); stop at EOI, at the end, or at a marker
    libjpeg would reject. InputError when the scans or the header structure are out of bounds."""
    pos, scans, segments, junk, seen_scan, passes = 2, 0, 0, 0, False, 0.0
    shares: dict[int, float] = {}  # component id -> its share of the image's blocks, from SOF
    while True:
        found = _MARKER.search(data, pos)
        if found is None:
            break
        if not seen_scan:
            junk += found.start() - pos
            if junk > MAX_JUNK_BYTES:
                raise InputError(
                    400, f"the JPEG has more than {MAX_JUNK_BYTES} bytes of garbage between its header segments"
                )
        marker, pos = data[found.start() + 1], found.end()
        if marker in _STANDALONE:
            continue
        if marker in (_EOI, _SOI):  # the end, or a second SOI that libjpeg refuses
            break
        if pos + 2 > len(data):
            break
        length = data[pos] << 8 | data[pos + 1]
        if length < 2:
            break  # libjpeg stops with an error here: nothing after it is decoded
        segments += 1
        if segments > MAX_SEGMENTS:
            raise InputError(400, f"the JPEG has more than {MAX_SEGMENTS} marker segments")
        body, pos = pos + 2, pos + length
        if marker in _SOF and not shares:
            shares = _component_shares(data[body:pos])
        if marker == _SOS:
            seen_scan = True
            scans += 1
            ids = data[body + 1:min(pos, body + 1 + 2 * data[body]):2] if body < min(pos, len(data)) else b""
            passes += sum(shares.get(i, 1.0) for i in ids) or 1.0
            if scans > max_scans:
                raise InputError(
                    413, f"the JPEG has more than {max_scans} scans; the limit is {max_scans} (MAX_JPEG_SCANS)"
                )
            end = _SCAN_END.search(data, pos)
            if end is None:
                break
            pos = end.start()
    return JpegShape(scans=scans, passes=passes, segments=segments)


def _component_shares(sof: bytes) -> dict[int, float]:
    """Component id -> (h * v) / (hmax * vmax) from a SOF segment's body."""
    if len(sof) < 6:
        return {}
    comps = [(sof[i], sof[i + 1] >> 4, sof[i + 1] & 15) for i in range(6, min(len(sof) - 2, 6 + 3 * sof[5]), 3)]
    hmax = max((h for _, h, _ in comps), default=0)
    vmax = max((v for _, _, v in comps), default=0)
    if not hmax or not vmax:
        return {}
    return {cid: h * v / (hmax * vmax) for cid, h, v in comps}
