"""Sampling: parity with VTK's vtkProbeFilter (Probe Volume With Model's algorithm), ground truth, outside handling."""

from __future__ import annotations

import numpy as np
import vtk
from ibc_helpers import metal_surface_of, nail_axis_ras, probe_in_ijk, rotation, shared_file
from ImplantBoneContactLib import AnalysisParameters, Volume, analyze, read_volume, sample, sample_surface
from ImplantBoneContactLib.mesh import points, surface_geometry, triangle_areas, triangles
from ImplantBoneContactLib.phantom import CANCELLOUS, CORTICAL, MARROW


def _oblique_volume(rng) -> Volume:
    array = rng.integers(-1000, 3000, size=(23, 31, 37)).astype(np.int16)
    m = np.eye(4)
    m[:3, :3] = rotation("z", 25) @ rotation("y", -12) @ np.diag([0.8, 0.7, 1.9])
    m[:3, 3] = [30.0, -50.0, 12.0]
    return Volume(array, m)


def test_trilinear_equals_vtk_probe_filter_on_random_points():
    rng = np.random.default_rng(0)
    vol = _oblique_volume(rng)
    ijk = rng.uniform([-3, -3, -3], [40, 34, 26], size=(20000, 3))
    pts = np.c_[ijk, np.ones(len(ijk))] @ vol.ijk_to_ras.T
    hu, inside = sample(vol, pts[:, :3], "trilinear")
    ref, valid, _ = probe_in_ijk(vol, pts[:, :3], dtype=np.float64)
    # vtkProbeFilter accepts points up to 1e-3 of a cell diagonal outside; skip points
    # within 1e-5 voxel of that limit, where rounding decides.
    outside_by = np.max(np.maximum(-ijk, ijk - np.array([36, 30, 22])), axis=1)
    margin = np.abs(outside_by - 1e-3 * np.sqrt(3)) > 1e-5
    assert (np.abs(outside_by) < 0.01).sum() > 0  # some points do test the edge
    np.testing.assert_array_equal(inside[margin], valid[margin])
    both = inside & valid
    assert both.sum() > 10000
    np.testing.assert_allclose(hu[both], ref[both], atol=1e-6)
    assert np.all(np.isnan(hu[~inside]))


def test_trilinear_vs_cli_integer_output_is_within_half_hu(phantom_ct, phantom_stem):
    """The CLI stores probe results in the volume's type (int16): rounded HU, at most 0.5 HU away."""
    pts = points(phantom_stem)
    hu, inside = sample(phantom_ct, pts)
    ref, valid, _ = probe_in_ijk(phantom_ct, pts)
    np.testing.assert_array_equal(inside, valid)
    diff = np.abs(hu[inside] - ref[inside])
    assert diff.max() <= 0.5 + 1e-9
    assert np.all(ref[~valid] == 0)  # the CLI's 0 HU outside, which this library never reports


def test_nearest_equals_vtk_find_point():
    rng = np.random.default_rng(3)
    vol = _oblique_volume(rng)
    ijk = rng.uniform([0, 0, 0], [36, 30, 22], size=(3000, 3))
    pts = (np.c_[ijk, np.ones(len(ijk))] @ vol.ijk_to_ras.T)[:, :3]
    hu, inside = sample(vol, pts, "nearest")
    assert inside.all()
    image = vtk.vtkImageData()
    nk, nj, ni = vol.array.shape
    image.SetDimensions(ni, nj, nk)
    expected = np.array([vol.array.ravel()[image.FindPoint(*p)] for p in ijk], dtype=float)
    np.testing.assert_array_equal(hu, expected)


def test_phantom_hu_matches_ground_truth_away_from_tissue_boundaries(phantom, phantom_ct, phantom_stem):
    """Where no other tissue lies within 2.5 blur sigmas + half a voxel diagonal, the CT holds the tissue's HU.

    Tolerance: the Gaussian tail beyond 2.5 sigma (0.6 %) of the largest step
    (cortex to marrow, 1800 HU) is 11 HU, plus 0.5 HU int16 rounding, plus the
    cancellous gradient (200 HU over 60 mm) over one voxel (3.3 HU): 15 HU.
    """
    pts = points(phantom_stem)
    hu, inside = sample(phantom_ct, pts)
    assert inside.all()
    radius = 2.5 * phantom.spec.blur_sigma_mm + 0.5 * np.sqrt(3) * phantom.spec.voxel_mm
    clear = phantom.distance_to_tissue_boundary(pts, radius)
    truth = phantom.true_hu_at(pts)
    tissue = phantom.tissue_at(pts)
    assert clear.sum() > 0.3 * len(pts)
    for label in (CORTICAL, CANCELLOUS, MARROW):
        sel = clear & (tissue == label)
        assert sel.sum() > 50, f"too few clear vertices in tissue {label}"
        np.testing.assert_allclose(hu[sel], truth[sel], atol=15.0, err_msg=f"tissue {label}")


def test_offset_samples_along_outward_normal(phantom, phantom_ct, phantom_stem):
    geom = surface_geometry(phantom_stem)
    s0 = sample_surface(phantom_ct, geom.points, geom.normals, offsets_mm=2.0)
    direct, _ = sample(phantom_ct, geom.points + 2.0 * geom.normals)
    np.testing.assert_array_equal(s0.hu, direct)
    # Outward: 2 mm outside along the normal is outside the implicit stem.
    local = geom.points + 2.0 * geom.normals
    f = phantom.stem_function_local(local @ phantom.ras_to_local[:3, :3].T + phantom.ras_to_local[:3, 3])
    assert np.mean(f > 1.0) > 0.97


def test_profile_aggregates(phantom_ct, phantom_stem):
    geom = surface_geometry(phantom_stem)
    offsets = np.array([0.5, 1.0, 1.5, 2.0])
    for agg, fn in (("max", np.max), ("mean", np.mean), ("median", np.median)):
        s = sample_surface(phantom_ct, geom.points, geom.normals, offsets_mm=offsets, aggregate=agg)
        cols = np.stack([sample(phantom_ct, geom.points + d * geom.normals)[0] for d in offsets], axis=1)
        np.testing.assert_allclose(s.hu, fn(cols, axis=1))


def test_profile_sees_bone_past_metal_blooming():
    """In a post-operative phantom the surface samples metal; a profile outward finds the bone."""
    from ImplantBoneContactLib import FemurPhantom, PhantomSpec

    ph = FemurPhantom(PhantomSpec(voxel_mm=1.0, metal=True))
    ct = ph.make_ct()
    stem = ph.make_stem_surface()
    # Sampled on the surface (the metal-aware walk off): the metal is seen and the run says why.
    on_surface = analyze(ct, stem, AnalysisParameters(points=3000, remesh="acvd", metal_aware="off"))
    assert on_surface.ct_kind == "post-operative"
    assert any("post-operative" in w for w in on_surface.warnings)
    geom = surface_geometry(stem)
    truth_outside = ph.tissue_at(geom.points + 2.5 * geom.normals)
    s = sample_surface(ct, geom.points, geom.normals, offsets_mm=np.arange(1.5, 3.01, 0.5), aggregate="median")
    cort = truth_outside == CORTICAL
    assert np.median(s.hu[cort]) > 1000
    assert np.median(s.hu[truth_outside == MARROW]) < 1000


def test_outside_ct_is_nan_never_zero_on_pelvis_with_implant_at_scan_edge():
    """The pelvis CT's implant touches the inferior edge: its lower part cannot be sampled."""
    vol = read_volume(shared_file("pelvis_ct_with_femoral_implant.nii.gz"))
    metal_surface = metal_surface_of(vol)  # closed by metal slices added below the scan
    assert metal_surface.GetNumberOfPoints() > 100
    # Plain sampling on the surface (the metal-aware walk, default in this CT, also counts a vertex whose walk
    # along the normal leaves the CT as outside: tested in test_postop).
    # A nail with a neck screw: the automatic axis is refused, so the nail's axis is given.
    result = analyze(vol, metal_surface, AnalysisParameters(remesh="none", axis=nail_axis_ras(vol), side="left", metal_aware="off"))
    v = result.vertices
    outside = ~v["inside_ct"]
    assert outside.sum() > 0, "the implant reaches below the scan: some vertices must be outside"
    assert v.loc[outside, "hu"].isna().all()
    assert not (v.loc[outside, "hu"] == 0).any()
    assert v.loc[~outside, "hu"].notna().all()
    assert any("outside the CT" in w for w in result.warnings)
    # Outside vertices lie below the first slice (k < 0 in voxel space).
    ijk = np.c_[v[["x_mm", "y_mm", "z_mm"]].to_numpy(), np.ones(len(v))] @ vol.ras_to_ijk.T
    assert np.all(ijk[outside.to_numpy(), 2] < 1e-6)
    # Zone statistics leave out the triangles that touch an outside vertex: the sampled area lies between the
    # area of the triangles wholly inside and below the cut, and that of those inside with a corner below it.
    all_row = result.zones.set_index("zone").loc["all"]
    faces = triangles(result.surface)
    pts = v[["x_mm", "y_mm", "z_mm"]].to_numpy()
    complete = v["inside_ct"].to_numpy()[faces].all(axis=1)
    below = v["gruen_zone"].to_numpy()[faces] > 0
    low = triangle_areas(pts, faces[complete & below.all(axis=1)]).sum()
    high = triangle_areas(pts, faces[complete & below.any(axis=1)]).sum()
    assert low - 1e-9 <= all_row["area_sampled_mm2"] <= high + 1e-9
