"""The fast remesh is the default of the library and the command line; a remesh that changes the surface is reported."""

from __future__ import annotations

import numpy as np
from ibc_helpers import vtk_sphere
from ImplantBoneContactLib.analysis import AnalysisParameters, remesh_warnings
from ImplantBoneContactLib.cli import build_parser
from ImplantBoneContactLib.mesh import points, polydata_from_arrays, triangles


def test_fast_is_the_default_remesh_and_acvd_stays_available():
    assert AnalysisParameters().remesh == "fast"
    args = build_parser().parse_args(["analyze", "--ct", "c.nrrd", "--model", "m.stl", "--out", "o"])
    assert args.remesh == "fast"
    args = build_parser().parse_args(["analyze", "--ct", "c.nrrd", "--model", "m.stl", "--out", "o", "--remesh", "acvd"])
    assert args.remesh == "acvd"


def test_no_warning_for_a_remesh_that_keeps_the_surface():
    s = vtk_sphere()
    assert remesh_warnings(s, s, "fast") == []
    # 0.5 % more area (radius x 1.0025): under the 1 % limit.
    bigger = polydata_from_arrays(points(s) * 1.0025, triangles(s))
    assert remesh_warnings(s, bigger, "fast") == []


def test_area_change_over_one_percent_is_reported_with_its_size():
    s = vtk_sphere()
    bigger = polydata_from_arrays(points(s) * 1.02, triangles(s))  # area x 1.0404
    w = remesh_warnings(s, bigger, "acvd")
    assert len(w) == 1 and "+4.0%" in w[0] and "acvd" in w[0]
    smaller = polydata_from_arrays(points(s) * 0.99, triangles(s))  # area x 0.9801
    assert "-2.0%" in remesh_warnings(s, smaller, "fast")[0]


def test_the_advice_names_what_else_to_try_not_the_remesh_just_run():
    s = vtk_sphere()
    bigger = polydata_from_arrays(points(s) * 1.02, triangles(s))
    assert "try --remesh fast" in remesh_warnings(s, bigger, "acvd")[0]
    after_fast = remesh_warnings(s, bigger, "fast")[0]
    assert "--remesh fast" not in after_fast and "another --points" in after_fast and "--remesh none" in after_fast


def test_a_remesh_that_opens_a_closed_surface_is_reported():
    s = vtk_sphere()
    faces = triangles(s)
    holed = polydata_from_arrays(points(s), faces[np.arange(len(faces)) % 400 != 7])  # a few triangles gone
    w = remesh_warnings(s, holed, "acvd")
    assert any("opened" in x and "boundary edges" in x for x in w)
    # An input that was already open is not blamed on the remesh.
    assert not any("opened" in x for x in remesh_warnings(holed, holed, "acvd"))


def test_analysis_reports_the_area_change_of_a_remesher(phantom_ct, phantom_stem):
    """A remesher that inflates the surface by 3 % makes the analysis say so."""
    from ImplantBoneContactLib.analysis import analyze
    from ImplantBoneContactLib.mesh import prepare_surface

    def inflating(surface, n, k):
        p = points(surface)
        c = p.mean(axis=0)
        return prepare_surface(polydata_from_arrays(c + (p - c) * 1.015, triangles(surface)))

    res = analyze(phantom_ct, phantom_stem, AnalysisParameters(remesh="acvd", points=2000), remesher=inflating)
    assert any("changed the surface area by +3.0%" in w for w in res.warnings)
