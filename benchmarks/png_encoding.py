#!/usr/bin/env python
"""PNG encoding of the pictures: the library's writer against Pillow's, on the same pixels.

Reads every PNG of a result folder (e.g. what ``implant-bone-contact demo``
writes), and encodes each one's RGB pixels with

``library``
    :func:`ImplantBoneContactLib.plots.png.png_rgb` (every row "Up"-filtered,
    zlib level 1), what the pictures are written with;
``pillow``
    Pillow at the same zlib level (its adaptive filter: every filter tried on
    every row), what they were written with before.

Prints per file and in all: the best of ``--repeat`` CPU seconds and the
bytes, and checks that both decode to the input pixels.

Run ``python benchmarks/png_encoding.py RESULT_FOLDER``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ImplantBoneContact"))


def _pillow(rgb: np.ndarray, level: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG", compress_level=level)
    return out.getvalue()


def _best_cpu(encode, repeat: int) -> tuple[float, bytes]:
    best, data = float("inf"), b""
    for _ in range(repeat):
        t0 = time.process_time()
        data = encode()
        best = min(best, time.process_time() - t0)
    return best, data


def main(argv: list[str] | None = None) -> int:
    from ImplantBoneContactLib.plots.png import png_rgb
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a folder holding PNG pictures (a result folder)")
    ap.add_argument("--level", type=int, default=1, help="zlib level of both writers (default 1)")
    ap.add_argument("--repeat", type=int, default=5, help="encodings per file and writer; the best is kept (default 5)")
    args = ap.parse_args(argv)
    files = sorted(args.folder.glob("*.png"))
    if not files:
        print(f"no PNG files in {args.folder}", file=sys.stderr)
        return 2
    totals = {"library": [0.0, 0], "pillow": [0.0, 0]}
    print(f"{'picture':24s} {'library s':>10s} {'kB':>6s} {'pillow s':>10s} {'kB':>6s}")
    for path in files:
        rgb = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
        row = []
        for name, writer in (("library", png_rgb), ("pillow", _pillow)):
            cpu, data = _best_cpu(lambda w=writer, image=rgb: w(image, args.level), args.repeat)
            if not np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb):
                print(f"{path.name}: the {name} writer changed the pixels", file=sys.stderr)
                return 1
            totals[name][0] += cpu
            totals[name][1] += len(data)
            row += [cpu, len(data) / 1e3]
        print(f"{path.name:24s} {row[0]:10.4f} {row[1]:6.0f} {row[2]:10.4f} {row[3]:6.0f}")
    lib, pil = totals["library"], totals["pillow"]
    print(f"{'all ' + str(len(files)):24s} {lib[0]:10.4f} {lib[1] / 1e3:6.0f} {pil[0]:10.4f} {pil[1] / 1e3:6.0f}")
    print(f"library / pillow: CPU {lib[0] / pil[0]:.2f}, bytes {lib[1] / pil[1]:.3f}; pixels identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
