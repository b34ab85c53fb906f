"""Big inputs run to the end: a 1 000 000-triangle STL and a 512 x 512 x 1500 int16 CT.

Each run is the command line in its own interpreter, so its peak resident
memory (``VmHWM``) and wall time are its own; both are printed (run with
``-s`` to see them; ROBUSTNESS.md lists them). These tests are marked
``slow`` and left out of ``make test``; ``make test-big`` runs them.

The inputs are the femur phantom made big, so the numbers can be checked:

* the STL is the phantom stem (62 500 triangles) with every triangle split
  1-to-4 twice: the same surface in 1 000 000 triangles;
* the CT is the 1 mm phantom CT resampled (linear) onto a 512 x 512 x 1500
  grid of 0.32 x 0.31 x 0.17 mm voxels (786 MB of int16).

So a big run must give the zone statistics of a smaller run of the same
surface and CT, within the tolerance of a different mesh or voxel grid.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from ImplantBoneContactLib import AnalysisParameters, FemurPhantom, PhantomSpec, analyze, read_model, read_volume, write_volume
from ImplantBoneContactLib.mesh import points, polydata_from_arrays, triangles, write_polydata
from ImplantBoneContactLib.volume import itk_geometry_from_ijk_to_ras

pytestmark = pytest.mark.slow

BIG_CT_SHAPE_IJK = (512, 512, 1500)
MEMORY_LIMIT_MB = 8000  # a third of the 24 GB machine the issue names; measured peaks are 0.8-2.2 GB

# Peak memory of this process alone: VmHWM, which exec resets (ru_maxrss keeps the parent's
# high-water mark across fork and exec on Linux, so pytest's own size would show through).
MEASURED_RUN = r"""
import resource, sys, time
from ImplantBoneContactLib.cli import main
t = time.perf_counter()
rc = main(sys.argv[1:])
wall = time.perf_counter() - t
try:
    status = open("/proc/self/status").read()
    peak = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1]) / 1024
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"MEASURED peak_rss_mb={peak:.0f} wall_s={wall:.1f}", file=sys.stderr)
sys.exit(rc)
"""


def subdivide(pts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split every triangle 1-to-4 at its edge midpoints (the same surface)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, inverse = np.unique(edges, axis=0, return_inverse=True)
    mid = len(pts) + inverse.reshape(3, -1).T
    a, b, c = faces.T
    ab, bc, ca = mid.T
    return np.vstack([pts, pts[unique].mean(axis=1)]), np.vstack([np.c_[a, ab, ca], np.c_[ab, b, bc], np.c_[ca, bc, c], np.c_[ab, bc, ca]])


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("big")
    phantom = FemurPhantom(PhantomSpec(voxel_mm=1.0))
    stem = phantom.make_stem_surface(spacing_mm=0.5, target_triangles=62_500)
    pts, faces = points(stem), triangles(stem)
    assert len(faces) == 62_500
    for _ in range(2):
        pts, faces = subdivide(pts, faces)
    assert len(faces) == 1_000_000
    paths = {
        "stem_small": folder / "stem_62k.stl",
        "stem_1M": folder / "stem_1M.stl",
        "ct_small": folder / "ct_1mm.nrrd",
        "ct_big": folder / "ct_512x512x1500.nrrd",
    }
    write_polydata(stem, paths["stem_small"], space="LPS")
    write_polydata(polydata_from_arrays(pts, faces), paths["stem_1M"], space="LPS")
    ct = phantom.make_ct()
    write_volume(ct, paths["ct_small"])
    image = sitk.GetImageFromArray(ct.array)
    origin, spacing, direction = itk_geometry_from_ijk_to_ras(ct.ijk_to_ras)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    size = np.array(image.GetSize())
    new_spacing = [(size[d] - 1) * spacing[d] / (BIG_CT_SHAPE_IJK[d] - 1) for d in range(3)]
    big_image = sitk.Resample(image, BIG_CT_SHAPE_IJK, sitk.Transform(), sitk.sitkLinear, origin, new_spacing, direction, -1000, sitk.sitkInt16)
    sitk.WriteImage(big_image, str(paths["ct_big"]), useCompression=False)
    del big_image, image
    return paths


def run_measured(ct: Path, model: Path, out: Path, *options: str) -> dict:
    cmd = [sys.executable, "-c", MEASURED_RUN, "analyze", "--ct", str(ct), "--model", str(model), "--out", str(out), "--quiet", *options]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MEASURED"))
    figures = dict(kv.split("=") for kv in line.split()[1:])
    report = {"peak_rss_mb": float(figures["peak_rss_mb"]), "wall_s": float(figures["wall_s"])}
    print(f"\n{out.name}: {' '.join(cmd[3:])}\n  peak RSS {report['peak_rss_mb']:.0f} MB, wall {report['wall_s']:.1f} s")
    assert report["peak_rss_mb"] < MEMORY_LIMIT_MB
    assert "Traceback" not in proc.stderr
    return report


def zones(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "zones.csv").set_index("zone")


def assert_zones_close(got: pd.DataFrame, ref: pd.DataFrame, rel: float, frac: float) -> None:
    fracs = [c for c in ref.columns if c.startswith("frac_")]
    np.testing.assert_allclose(got["area_mm2"], ref["area_mm2"], rtol=rel)
    np.testing.assert_allclose(got["hu_mean"], ref["hu_mean"], rtol=rel)
    assert np.abs(got[fracs].to_numpy() - ref[fracs].to_numpy()).max() < frac


@pytest.fixture(scope="module")
def reference(big) -> pd.DataFrame:
    """Zones of the same surface at 250 000 triangles (split once, not twice) in the 1 mm CT.

    Zone statistics of a mesh converge as it is refined (a zone boundary cuts fewer and
    smaller triangles): the 62 500-triangle input is 5 % off the 1M result in a zone's area,
    the 250 000-triangle one 1.6 %.
    """
    stem = read_model(big["stem_small"])[0]
    surface = polydata_from_arrays(*subdivide(points(stem), triangles(stem)))
    result = analyze(read_volume(big["ct_small"]), surface, AnalysisParameters(remesh="none"))
    return result.zones.set_index("zone")


def test_million_triangle_stl_without_remesh(big, reference, tmp_path: Path) -> None:
    out = tmp_path / "stl_1M_no_remesh"
    run_measured(big["ct_small"], big["stem_1M"], out, "--remesh", "none", "--no-pictures")
    vertices = pd.read_csv(out / "vertices.csv", usecols=["hu", "inside_ct", "gruen_zone"])
    assert len(vertices) == 500_002  # Euler: V = F / 2 + 2 for a closed surface
    assert vertices["inside_ct"].all()
    assert_zones_close(zones(out), reference, rel=0.03, frac=0.04)


def test_million_triangle_stl_default_remesh(big, reference, tmp_path: Path) -> None:
    out = tmp_path / "stl_1M_default"
    run_measured(big["ct_small"], big["stem_1M"], out)
    assert len(pd.read_csv(out / "vertices.csv", usecols=["hu"])) <= 10_000
    assert (out / "report.html").is_file()
    assert_zones_close(zones(out), reference, rel=0.05, frac=0.05)


def test_512x512x1500_ct_default_path(big, tmp_path: Path) -> None:
    out = tmp_path / "ct_big_default"
    run_measured(big["ct_big"], big["stem_small"], out)
    ref = tmp_path / "ct_small_default"
    run_measured(big["ct_small"], big["stem_small"], ref)
    # The same stem, the same ACVD remesh, in the same CT on a 20 x finer grid (linear upsampling).
    assert_zones_close(zones(out), zones(ref), rel=0.05, frac=0.05)


def test_big_ct_and_million_triangles_together_with_pictures(big, reference, tmp_path: Path) -> None:
    out = tmp_path / "both_big"
    run_measured(big["ct_big"], big["stem_1M"], out, "--remesh", "none")
    for name in ("vertices.csv", "zones.csv", "surface.vtp", "parameters.json", "report.html"):
        assert (out / name).stat().st_size > 0
    assert_zones_close(zones(out), reference, rel=0.03, frac=0.04)
