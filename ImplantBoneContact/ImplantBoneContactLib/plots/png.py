"""Opaque RGB PNG bytes of the pictures: every row "Up"-filtered, then zlib at its fastest level.

Every picture is drawn on a white, opaque canvas, so its alpha channel says
nothing and the PNG is RGB. The pictures are large areas of flat colour
whose rows mostly repeat the row above (panels, keys, margins, the unrolled
maps' columns), so PNG's "Up" filter (each byte minus the byte above it)
leaves long runs of zeros for zlib. Filtering all rows that way in one numpy
subtraction and compressing at level 1 takes about half the time of
Pillow's adaptive filtering at the same level (which tries every filter on
every row) for files about 1 % larger (the seven pictures of the demo:
0.08 against 0.15-0.22 s, 1.49 against 1.48 MB). The pixels are the same:
PNG is lossless.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_NONE = 0
_FILTER_UP = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgb(rgb: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 image (first row at the top), zlib ``level`` (0-9).

    8-bit RGB, not interlaced; the first row unfiltered, every other row
    "Up"-filtered (PNG specification, filter type 2).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"png_rgb needs an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    rows = rgb.reshape(height, width * 3)
    raw = np.empty((height, 1 + width * 3), dtype=np.uint8)
    raw[0, 0] = _FILTER_NONE
    raw[0, 1:] = rows[0]
    raw[1:, 0] = _FILTER_UP
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic: modulo 256, as the filter is defined
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, colour type 2 (RGB)
    return (_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), int(level)))
            + _chunk(b"IEND", b""))


def opaque_rgb(rgba: np.ndarray) -> np.ndarray:
    """RGB of an RGBA uint8 image laid on white (the RGB itself where every pixel is opaque)."""
    rgba = np.asarray(rgba)
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.float64) / 255.0
    return np.rint(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
