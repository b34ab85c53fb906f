"""--remesh acvd is Slicer Surface Toolbox's uniform remesh, call for call."""

from __future__ import annotations

import numpy as np
import pytest
from ibc_helpers import shared_file, surface_toolbox_remesh
from ImplantBoneContactLib import InputError, read_model
from ImplantBoneContactLib.analysis import auto_subdivide
from ImplantBoneContactLib.mesh import surface_geometry
from ImplantBoneContactLib.remesh import remesh_acvd
from vtk.util import numpy_support as ns


def test_acvd_is_surface_toolbox_remesh_on_scanned_stem():
    import pyacvd

    assert pyacvd.__version__ == "0.3.1"  # the version Surface Toolbox installs
    poly, _ = read_model(shared_file("hip_implant_surface_scan.stl"))
    ours = remesh_acvd(poly, points=3000, subdivide=2)
    theirs = surface_toolbox_remesh(poly, subdivide=2, clusters=3000)
    np.testing.assert_array_equal(ns.vtk_to_numpy(ours.GetPoints().GetData()), ns.vtk_to_numpy(theirs.GetPoints().GetData()))
    np.testing.assert_array_equal(
        ns.vtk_to_numpy(ours.GetPolys().GetConnectivityArray()), ns.vtk_to_numpy(theirs.GetPolys().GetConnectivityArray())
    )


def test_automatic_subdivision_makes_acvd_even(phantom_stem):
    """The phantom stem is quadric-decimated: a few flat triangles of 70 mm2 beside 0.2 mm2 ones.
    ACVD clusters whole triangles, so without subdivision the point areas stay uneven."""
    k = auto_subdivide(phantom_stem, 4000)
    assert k == 2  # largest triangle 70 mm2 / 16 <= 4 clusters of 3.5 mm2
    raw = surface_geometry(phantom_stem)
    out = surface_geometry(remesh_acvd(phantom_stem, points=4000, subdivide=k))
    assert abs(len(out.points) - 4000) <= 40  # ACVD may drop a few empty clusters
    cv_raw = raw.areas.std() / raw.areas.mean()
    cv_out = out.areas.std() / out.areas.mean()
    # Spread (std / mean) of the vertex areas. The input's is 2.73 (measured); the remesh's is 0.436 at the
    # automatic k = 2, and 1.08, 0.494 and 0.78 at k = 0, 1 and 3 (measured, 4000 points; pyacvd is
    # deterministic). The limit 0.48, 10 % above the measured 0.436, fails a remesh one level short of the
    # subdivision or with none, and one level past it.
    assert cv_raw > 2.5
    assert cv_out < 0.48


def test_more_points_than_the_surface_has():
    poly, _ = read_model(shared_file("hip_implant_surface_scan.stl"))
    with pytest.raises(InputError, match="raise --subdivide"):
        remesh_acvd(poly, points=5000, subdivide=0)
