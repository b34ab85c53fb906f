"""A minimal PNG writer for opaque RGB pictures: the rows as they are, zlib at its fastest level.

Every picture is drawn on a white, opaque canvas, so its alpha channel says
nothing; writing RGB without a per-row filter search (PNG filter type 0)
takes about a third of the time of Pillow's RGBA encoder at the same zlib
level, for files about 10 % larger. Any PNG reader reads them (8-bit
truecolour, one IDAT chunk).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgb(rgb: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 image (first row at the top), zlib ``level`` (0-9)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"png_rgb needs an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    rows = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    rows[:, 0] = 0  # filter type 0 (None) on every row
    rows[:, 1:] = rgb.reshape(h, 3 * w)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no filter set, no interlace
    return (_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
            + _chunk(b"IEND", b""))


def opaque_rgb(rgba: np.ndarray) -> np.ndarray:
    """RGB of an RGBA uint8 image laid on white (the RGB itself where every pixel is opaque)."""
    rgba = np.asarray(rgba)
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.float64) / 255.0
    return np.rint(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)
