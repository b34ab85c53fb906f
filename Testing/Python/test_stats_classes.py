"""Contact classes and area-weighted zone statistics: definitions, phantom truth, mesh independence."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from ibc_helpers import frame_parameters
from ImplantBoneContactLib import PRESETS, AnalysisParameters, ContactBand, InputError, analyze, classify, parse_classes
from ImplantBoneContactLib.mesh import triangles
from ImplantBoneContactLib.phantom import CANCELLOUS, CORTICAL
from ImplantBoneContactLib.stats import weighted_stats, zone_table
from ImplantBoneContactLib.volume import Volume


def test_presets_and_custom_bands(tmp_path):
    assert [b.name for b in parse_classes("default")] == ["no_bone", "cancellous", "cortical"]
    assert [b.low_hu for b in parse_classes("pedicle-screw")][1:] == [130.0, 250.0]
    assert [b.low_hu for b in parse_classes("fixation")][1:] == [-200.0, 100.0, 400.0, 1000.0]
    custom = parse_classes("none:-inf:150,cancellous:150:700,cortical:700:inf")
    assert custom == (
        ContactBand("none", -math.inf, 150.0),
        ContactBand("cancellous", 150.0, 700.0),
        ContactBand("cortical", 700.0, math.inf),
    )
    f = tmp_path / "bands.json"
    f.write_text(json.dumps([{"name": "soft", "low_hu": "-inf", "high_hu": 200}, {"name": "bone", "low_hu": 200, "high_hu": "inf"}]))
    assert [b.name for b in parse_classes(str(f))] == ["soft", "bone"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("a:0:200,b:100:300", "overlap"),
        ("b:200:300,a:0:200", "low to high"),
        ("a:200:100", "empty or reversed"),
        ("a:0:100,a:100:200", "repeat"),
        ("metal:0:100", "reserved"),
        ("a:0", "name:low:high"),
        ("a:x:100", "numbers"),
        ("1a:0:100", "start with a letter"),
    ],
)
def test_bad_bands_are_refused(spec, message):
    with pytest.raises(InputError, match=message):
        parse_classes(spec)


def test_classify_half_open_bands_metal_and_nan():
    bands = PRESETS["default"]
    hu = np.array([-1000, 149.999, 150, 699.9, 700, 2499, 2500, np.nan])
    assert list(classify(hu, bands)) == [
        "no_bone", "no_bone", "cancellous", "cancellous", "cortical", "cortical", "metal", "not_sampled",
    ]
    assert classify(np.array([3000.0]), bands, metal_hu=None)[0] == "cortical"
    gap = (ContactBand("low", 0, 100), ContactBand("high", 200, 300))
    assert classify(np.array([150.0]), gap)[0] == "unclassified"


def test_weighted_quantiles_equal_repeated_values():
    rng = np.random.default_rng(5)
    values = rng.normal(300, 200, 200)
    counts = rng.integers(1, 6, 200)
    stats = weighted_stats(values, counts.astype(float))
    repeated = np.repeat(values, counts)
    assert stats["hu_mean"] == pytest.approx(repeated.mean())
    assert stats["hu_std"] == pytest.approx(repeated.std())
    for key, q in (("hu_p05", 0.05), ("hu_p25", 0.25), ("hu_median", 0.5), ("hu_p75", 0.75), ("hu_p95", 0.95)):
        assert stats[key] == pytest.approx(np.quantile(repeated, q, method="inverted_cdf"))
    assert stats["hu_min"] == values.min() and stats["hu_max"] == values.max()


def test_weighted_stats_ignore_nan_and_empty():
    s = weighted_stats(np.array([np.nan, 100.0, 300.0]), np.array([5.0, 1.0, 3.0]))
    assert s["hu_mean"] == pytest.approx(250.0)
    assert math.isnan(weighted_stats(np.array([np.nan]), np.array([1.0]))["hu_mean"])


def test_zone_table_by_hand():
    v = pd.DataFrame(
        {
            "area_mm2": [1.0, 3.0, 2.0, 4.0, 5.0],
            "hu": [100.0, 800.0, np.nan, 300.0, 50.0],
            "contact_class": ["no_bone", "cortical", "not_sampled", "cancellous", "no_bone"],
            "gruen_zone": [1, 1, 1, 7, 0],
        }
    )
    t = zone_table(v, ["no_bone", "cancellous", "cortical"]).set_index("zone")
    z1 = t.loc["1"]
    assert z1["n_vertices"] == 3 and z1["n_sampled"] == 2
    assert z1["area_mm2"] == 6.0 and z1["area_sampled_mm2"] == 4.0
    assert z1["hu_mean"] == pytest.approx((100 * 1 + 800 * 3) / 4)
    assert z1["frac_cortical"] == pytest.approx(0.75) and z1["frac_no_bone"] == pytest.approx(0.25)
    assert t.loc["7", "frac_cancellous"] == 1.0
    assert t.loc["all", "area_mm2"] == 10.0  # zone 0 (above the cut) left out
    assert math.isnan(t.loc["2", "hu_mean"]) and t.loc["2", "n_vertices"] == 0
    assert t.loc["7", "region"] == "medial proximal (calcar)"


_TRUTH_CLASS = {CORTICAL: "cortical", CANCELLOUS: "cancellous"}


def test_contact_classes_match_phantom_truth(phantom, phantom_result):
    """Away from tissue boundaries every vertex has its true class; per zone, the class fractions differ
    from the true ones by at most the area fraction lying within the blur band of a boundary."""
    v = phantom_result.vertices
    pts = v[["x_mm", "y_mm", "z_mm"]].to_numpy()
    tissue = phantom.tissue_at(pts)
    truth = np.array([_TRUTH_CLASS.get(t, "no_bone") for t in tissue], dtype=object)
    radius = 2.5 * phantom.spec.blur_sigma_mm + 0.5 * np.sqrt(3) * phantom.spec.voxel_mm
    clear = phantom.distance_to_tissue_boundary(pts, radius)
    below = v["gruen_zone"].to_numpy() > 0
    cls = v["contact_class"].to_numpy()
    assert (clear & below).sum() > 1000
    assert np.all(cls[clear & below] == truth[clear & below])
    area = v["area_mm2"].to_numpy()
    zones = phantom_result.zones.set_index("zone")
    for z in range(1, 15):
        sel = v["gruen_zone"].to_numpy() == z
        ambiguous = area[sel & ~clear].sum() / area[sel].sum()
        for name in ("no_bone", "cancellous", "cortical"):
            true_frac = area[sel & (truth == name)].sum() / area[sel].sum()
            assert abs(zones.loc[str(z), f"frac_{name}"] - true_frac) <= ambiguous + 1e-9, (z, name)
    # The phantom has what it promises: cortical contact distally, cancellous at the calcar.
    assert zones.loc["3", "frac_cortical"] > 0.8 and zones.loc["5", "frac_cortical"] > 0.8
    assert zones.loc["7", "frac_cancellous"] > 0.8


def _class_boundary_area_fraction(result) -> dict[str, float]:
    """Per zone, the area fraction of vertices that have a neighbour of another class: the only
    vertices whose class can change when the mesh moves by less than one vertex spacing."""
    faces = triangles(result.surface)
    cls = result.vertices["contact_class"].to_numpy()
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    differ = cls[edges[:, 0]] != cls[edges[:, 1]]
    boundary = np.zeros(len(cls), dtype=bool)
    boundary[edges[differ].ravel()] = True
    area = result.vertices["area_mm2"].to_numpy()
    zone = result.vertices["gruen_zone"].to_numpy()
    out = {str(z): area[(zone == z) & boundary].sum() / area[zone == z].sum() for z in range(1, 15)}
    out["all"] = area[(zone > 0) & boundary].sum() / area[zone > 0].sum()
    return out


def test_zone_statistics_do_not_depend_on_mesh_density(phantom, phantom_ct, phantom_stem, phantom_result):
    """Area weighting: the same surface at 3000 and 6000 points gives the same zone numbers.

    A class fraction can only change through vertices next to a class boundary, so per zone the
    difference is bounded by the area fraction of such vertices (at the coarser density); mean HU
    within 4 %: vertices 2.6 mm apart at 3000 points move across HU gradients of bone edges.
    """
    coarse = analyze(phantom_ct, phantom_stem, AnalysisParameters(points=3000, **frame_parameters(phantom.true_frame())))
    a = coarse.zones.set_index("zone")
    b = phantom_result.zones.set_index("zone")
    bound = _class_boundary_area_fraction(coarse)
    assert abs(a.loc["all", "area_mm2"] / b.loc["all", "area_mm2"] - 1) < 0.01
    for z in [str(i) for i in range(1, 15)] + ["all"]:
        for name in ("no_bone", "cancellous", "cortical"):
            assert abs(a.loc[z, f"frac_{name}"] - b.loc[z, f"frac_{name}"]) <= bound[z], (z, name, bound[z])
        assert abs(a.loc[z, "hu_mean"] / b.loc[z, "hu_mean"] - 1) < 0.04, z
    # The bound is informative: most of the surface is far from class boundaries.
    assert bound["all"] < 0.4


def _strip(n_x: int, length_mm: float = 10.0, width_mm: float = 5.0):
    """A flat strip 0..length along x, triangulated on a grid of ``n_x`` columns; HU = 100 * x (a linear field)."""
    x = np.linspace(0.0, length_mm, n_x + 1)
    y = np.linspace(0.0, width_mm, max(2, round(width_mm / (length_mm / n_x))) + 1)
    gx, gy = np.meshgrid(x, y, indexing="ij")
    pts = np.column_stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)])
    ny = y.size
    faces = []
    for i in range(n_x):
        for j in range(ny - 1):
            a, b, c, d = i * ny + j, (i + 1) * ny + j, i * ny + j + 1, (i + 1) * ny + j + 1
            faces += [(a, b, c), (b, d, c)]
    return pts, np.array(faces), 100.0 * pts[:, 0]


@pytest.mark.parametrize("n_x", [11, 13, 17])
def test_class_fractions_integrate_the_surface_field(n_x):
    """Known answer: on a strip with HU = 100 x (x in 0..10 mm), cortical (>= 700 HU) is exactly 30% of the area.

    Integrating the linear field over the triangles (4 samples a triangle) is within a quarter of a column
    of the truth; counting each vertex's area by the vertex's class is off by up to half a column.
    """
    from ImplantBoneContactLib.classes import classify as classify_hu
    from ImplantBoneContactLib.mesh import vertex_areas
    from ImplantBoneContactLib.stats import triangle_samples

    pts, faces, hu = _strip(n_x)
    bands = parse_classes("default")
    names = ["no_bone", "cancellous", "cortical"]
    column = 1.0 / n_x  # area fraction of one column of cells
    samples = triangle_samples(pts, faces, hu)
    assert samples.subdivisions == 2 and samples.area_mm2.sum() == pytest.approx(50.0)
    integrated = zone_table(
        pd.DataFrame({"area_mm2": samples.area_mm2, "hu": samples.hu,
                      "contact_class": classify_hu(samples.hu, bands), "gruen_zone": 1}),
        names,
    ).set_index("zone")
    lumped = zone_table(
        pd.DataFrame({"area_mm2": vertex_areas(pts, faces), "hu": hu,
                      "contact_class": classify_hu(hu, bands), "gruen_zone": 1}),
        names,
    ).set_index("zone")
    err_integrated = abs(integrated.loc["1", "frac_cortical"] - 0.30)
    err_lumped = abs(lumped.loc["1", "frac_cortical"] - 0.30)
    assert err_integrated <= 0.25 * column, (err_integrated, column)
    assert err_integrated < err_lumped
    # The mean of a linear field is exact either way (the midpoint rule and vertex areas both integrate it).
    assert integrated.loc["1", "hu_mean"] == pytest.approx(500.0, rel=1e-12)
    assert lumped.loc["1", "hu_mean"] == pytest.approx(500.0, rel=1e-12)


def _step_ct(border_x_mm: float = 3.5) -> Volume:
    """A 1 mm CT over the strip: cortical (1500 HU) for x < border, cancellous (250 HU) beyond, and HU += 100 z."""
    i, j, k = np.arange(-3, 15), np.arange(-3, 9), np.arange(-4, 5)
    kk, jj, ii = np.meshgrid(k, j, i, indexing="ij")
    arr = np.where(ii < border_x_mm, 1500.0, 250.0) + 100.0 * kk
    m = np.eye(4)
    m[:3, 3] = [i[0], j[0], k[0]]
    return Volume(array=arr.astype(np.float32), ijk_to_ras=m, source="step")


@pytest.mark.parametrize("n_x", [2, 3, 5])
def test_statistics_sample_the_ct_inside_the_triangles(n_x):
    """A tissue border crossing the triangles: sampling the CT at the integration points finds it; interpolating
    between vertices 2-5 mm apart puts it wherever the vertices happen to lie.

    Truth: the trilinear CT crosses 700 HU at x = 3 + 800/1250 = 3.64 mm, so 36.4% of the strip is cortical
    (checked against 200 000 random points). And an offset along the normals samples there: 2 mm above the strip,
    the mean rises by exactly 200 HU.
    """
    from ImplantBoneContactLib.classes import classify as classify_hu
    from ImplantBoneContactLib.sampling import sample, sample_surface
    from ImplantBoneContactLib.stats import triangle_samples

    ct = _step_ct()
    pts, faces, _ = _strip(n_x)
    normals = np.tile([0.0, 0.0, 1.0], (pts.shape[0], 1))
    rng = np.random.default_rng(1)
    probe = np.column_stack([rng.uniform(0, 10, 200_000), rng.uniform(0, 5, 200_000), np.zeros(200_000)])
    truth = float(np.mean(sample(ct, probe)[0] >= 700))
    assert truth == pytest.approx(0.364, abs=0.005)
    bands = parse_classes("default")

    def cortical(samples) -> float:
        cls = classify_hu(samples.hu, bands)
        return float(samples.area_mm2[cls == "cortical"].sum() / samples.area_mm2.sum())

    def field(offset):
        return lambda p, n: sample_surface(ct, p, n, "trilinear", np.array([offset])).hu

    vertex_hu = sample_surface(ct, pts, normals, "trilinear", np.array([0.0])).hu
    direct = triangle_samples(pts, faces, vertex_hu, field=field(0.0), normals=normals)
    linear = triangle_samples(pts, faces, vertex_hu)
    np.testing.assert_array_equal(direct.hu, sample(ct, direct.points)[0])
    quarter_cell = 0.25 / n_x
    assert abs(cortical(direct) - truth) <= quarter_cell + 0.005
    assert abs(cortical(direct) - truth) < abs(cortical(linear) - truth)
    raised = triangle_samples(pts, faces, vertex_hu, field=field(2.0), normals=normals)
    assert np.average(raised.hu, weights=raised.area_mm2) == pytest.approx(np.average(direct.hu, weights=direct.area_mm2) + 200.0)


def test_triangles_with_an_unsampled_vertex_are_left_out():
    """A NaN vertex removes its triangles, and only those, from the sampled area; nothing is extrapolated."""
    from ImplantBoneContactLib.mesh import triangle_areas
    from ImplantBoneContactLib.stats import triangle_samples

    pts, faces, hu = _strip(11)
    hu[40] = np.nan
    samples = triangle_samples(pts, faces, hu)
    touching = (faces == 40).any(axis=1)
    per_triangle = samples.hu.reshape(faces.shape[0], -1)
    assert np.isnan(per_triangle[touching]).all() and np.isfinite(per_triangle[~touching]).all()
    assert np.nansum(np.where(np.isfinite(samples.hu), samples.area_mm2, 0)) == pytest.approx(
        50.0 - triangle_areas(pts, faces[touching]).sum(), rel=1e-12
    )
