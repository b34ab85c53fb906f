"""The benchmark script runs (``--quick``) and prints its table; no timing is asserted."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ImplantBoneContactLib.volume import Volume, read_volume, write_volume

REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmark_prints_the_table(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_benchmarks.py"), "--quick", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    header = next(line for line in text.splitlines() if line.startswith("| workload"))
    for stage in ("read CT", "read model", "remesh", "normals+areas", "sampling", "zones", "statistics", "writing",
                  "total", "peak RSS", "slicer / fast"):
        assert stage in header
    rows = [line for line in text.splitlines() if re.match(r"\| \d+x\d+x\d+ / \w+ / \d+ \| (fast|slicer) \|", line)]
    assert {r.split("|")[2].strip() for r in rows} == {"fast", "slicer"}
    n_cols = header.count("|")
    assert all(r.count("|") == n_cols for r in rows)
    # Every time cell is a number; the slicer row carries the ratio.
    for r in rows:
        cells = [c.strip().strip("*") for c in r.split("|")[3:-2]]
        assert all(re.fullmatch(r"\d+(\.\d+)?x?", c) for c in cells if c), cells
    assert re.search(r"\*\*\d+(\.\d+)?x\*\*", next(r for r in rows if "| slicer |" in r))
    assert "sampling throughput" in text and "M samples/s" in text
    assert "same answer" in text
    data = json.loads(out_json.read_text())
    rec = data["records"][0]
    assert rec["fast"]["n_points"] > 0 and rec["slicer"]["n_points"] > 0
    # The probe of the Slicer path and the library agree at the same points up to the CLI's int16 rounding.
    assert rec["slicer"]["hu_parity"]["max_abs_diff_hu"] <= 0.5 + 1e-9


def test_read_volume_does_not_copy_the_voxels(tmp_path):
    """Reading a CT holds its voxels once: the array views SimpleITK's buffer and keeps it alive.

    Measured as the process's peak resident memory (Linux VmHWM, reset before the read),
    not time: a copy would add the CT's size again.
    """
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak memory")

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    rng = np.random.default_rng(3)
    arr = rng.integers(-1000, 2000, size=(200, 256, 512), dtype=np.int16)  # 50 MiB
    m = np.diag([0.5, 0.6, 0.7, 1.0])
    path = tmp_path / "ct.nrrd"
    write_volume(Volume(arr, m), path, compress=False)
    del arr
    gc.collect()
    try:
        clear_refs.write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak memory here")
    base = status("VmRSS")
    vol = read_volume(path)
    peak = status("VmHWM") - base
    size = vol.array.nbytes
    assert peak < 1.5 * size, f"reading took {peak / size:.2f}x the CT's size"
    # The view stays valid after the reader's image is gone from every local name, and holds the file's voxels.
    sub = vol.array[10:20, ::3]
    del vol
    gc.collect()
    _ = [np.ones(1 << 20) for _ in range(20)]
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(sub, ref[10:20, ::3])
