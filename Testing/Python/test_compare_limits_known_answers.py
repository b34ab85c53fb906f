"""The same-stem checks of the follow-up comparison exactly at their limits.

``check_same_stem`` allows a surface-area difference of up to 0.1 % of the baseline's area, a shape RMS of
up to 0.01 mm after the best rigid fit and up to 0.1 % of the vertices in another Gruen zone; a result
exactly on a limit is accepted. The surfaces are built here with areas that are exact in floating point
(rectangles with integer sides), so the difference lands on the limit itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ImplantBoneContactLib import InputError
from ImplantBoneContactLib import compare as cmp
from ImplantBoneContactLib.frame import StemFrame
from ImplantBoneContactLib.mesh import polydata_from_arrays

FRAME = StemFrame(proximal_point=np.array([0.0, 0.0, 200.0]), axis=np.array([0.0, 0.0, -1.0]),
                  medial=np.array([1.0, 0.0, 0.0]), anterior=np.array([0.0, 1.0, 0.0]), tip=np.zeros(3),
                  resection_point=np.array([0.0, 0.0, 150.0]), resection_normal=np.array([0.0, 0.0, 1.0]), side="left")


def _grid(nx: int, ny: int, dx: float = 1.0, dy: float = 1.0):
    """A flat grid of ``nx * ny`` vertices spaced ``dx`` by ``dy`` mm, two triangles a cell."""
    x, y = np.meshgrid(np.arange(nx) * dx, np.arange(ny) * dy, indexing="xy")
    pts = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
    tris = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a = j * nx + i
            tris += [(a, a + 1, a + nx + 1), (a, a + nx + 1, a + nx)]
    return pts, np.array(tris)


def _result(name, pts, tris, zone=None):
    n = len(pts)
    zone = np.ones(n, dtype=np.int64) if zone is None else zone
    v = pd.DataFrame({"vertex_id": np.arange(n), "x_mm": pts[:, 0], "y_mm": pts[:, 1], "z_mm": pts[:, 2],
                      "gruen_zone": zone})
    meta = {"parameters": {"sampling": "trilinear", "offset_mm": 0.5}, "inputs": {}}
    return cmp.StoredResult(name, v, pd.DataFrame(), meta, FRAME, polydata_from_arrays(pts, tris))


def test_area_difference_of_exactly_a_thousandth_passes_the_area_check():
    # A 1000 x 1 mm rectangle against 1001 x 1 and 999 x 1: |difference| = 1 mm2 = 0.1 % of 1000 exactly
    # (1e-3 * 1000.0 is 1.0 in floating point). The area check passes; the shapes differ by 0.35 mm RMS
    # (two corners 1 mm apart, less the best fit), so the shape check is the one that refuses.
    pts, tris = _grid(2, 2, dx=1000.0)
    base = _result("b", pts, tris)
    for length in (1001.0, 999.0):
        other, _ = _grid(2, 2, dx=length)
        with pytest.raises(InputError, match="different shapes"):
            cmp.check_same_stem(base, _result("f", other, tris))
    # 1001.5 mm: 0.15 % more area, refused for its area
    other, _ = _grid(2, 2, dx=1001.5)
    with pytest.raises(InputError, match=r"different stems: surface areas 1000\.0 and 1001\.5 mm2"):
        cmp.check_same_stem(base, _result("f", other, tris))


def test_shape_rms_of_exactly_a_hundredth_of_a_millimetre_passes(monkeypatch):
    # The rigid fit is given: an RMS of exactly 0.01 mm is within the limit, the next double above is not.
    pts, tris = _grid(3, 3)
    base, same = _result("b", pts, tris), _result("f", pts, tris)
    monkeypatch.setattr(cmp, "rigid_fit", lambda a, b: (np.eye(4), 0.01))
    checks = cmp.check_same_stem(base, same)
    assert checks["shape_rms_mm"] == 0.01 and checks["n_vertices"] == 9 and checks["area_mm2"] == 4.0
    monkeypatch.setattr(cmp, "rigid_fit", lambda a, b: (np.eye(4), np.nextafter(0.01, 1.0)))
    with pytest.raises(InputError, match=r"different shapes: the two surfaces differ by 0\.010 mm RMS"):
        cmp.check_same_stem(base, same)


def test_exactly_a_thousandth_of_the_vertices_in_another_zone_passes():
    # 1000 vertices (a 40 x 25 grid): 1 in another zone is 0.1 % exactly and passes; 2 are 0.2 %, refused.
    pts, tris = _grid(40, 25)
    base = _result("b", pts, tris)
    zone = np.ones(1000, dtype=np.int64)
    zone[500] = 2
    checks = cmp.check_same_stem(base, _result("f", pts, tris, zone=zone))
    assert checks["vertices_in_other_zone"] == 1 and checks["n_vertices"] == 1000
    assert checks["area_mm2"] == 39.0 * 24.0
    zone[7] = 3
    with pytest.raises(InputError, match=r"^0\.2% of the vertices are in another Gruen zone in the follow-up"):
        cmp.check_same_stem(base, _result("f", pts, tris, zone=zone))
