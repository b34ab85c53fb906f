"""How the pictures are drawn: the unrolled-map rasteriser, pictures placed pixel for pixel, and what they show.

Known answers (triangles whose cells can be counted by hand, linear
functions that interpolation must reproduce exactly) and parity between the
pictures' pixels and the zone table, which is computed from the vertex
areas without any drawing.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from ImplantBoneContactLib import plots
from ImplantBoneContactLib.plots.slices import resample_bilinear
from ImplantBoneContactLib.plots.unrolled import _rasterise, _unwrapped_triangles
from matplotlib.colors import to_rgb

pytestmark = pytest.mark.render


@pytest.fixture(scope="module")
def result(phantom_result):
    return phantom_result


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --------------------------------------------------------------------------- rasteriser


def test_rasteriser_covers_the_cells_whose_centres_are_inside_once_each():
    """A 4 x 3 cell rectangle split in two triangles: 12 cells, each once, weights reproduce the centre."""
    x = np.array([[0.0, 4.0, 4.0], [0.0, 4.0, 0.0]])
    y = np.array([[0.0, 0.0, 3.0], [0.0, 3.0, 3.0]])
    rows, cols, tri, w = _rasterise(x, y, np.zeros(2), width=10, height=10)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(r, c) for r in range(3) for c in range(4)]
    centre_x = (w * x[tri]).sum(axis=1)
    centre_y = (w * y[tri]).sum(axis=1)
    assert np.allclose(centre_x, cols + 0.5) and np.allclose(centre_y, rows + 0.5)
    assert np.all(w >= -1e-9) and np.allclose(w.sum(axis=1), 1.0)


def test_rasteriser_keeps_the_deepest_triangle_where_two_overlap_and_clips_to_the_grid():
    x = np.array([[0.0, 6.0, 0.0], [0.0, 6.0, 0.0], [-5.0, 2.0, -5.0]])
    y = np.array([[0.0, 0.0, 6.0], [0.0, 0.0, 6.0], [0.0, 0.0, 30.0]])
    rows, cols, tri, _ = _rasterise(x, y, np.array([1.0, 5.0, 2.0]), width=4, height=4)
    cell = rows * 4 + cols
    assert np.unique(cell).size == cell.size  # one triangle per cell
    assert rows.max() < 4 and cols.max() < 4 and rows.min() >= 0 and cols.min() >= 0
    # Triangle 1 (depth 5) wins over 0 (depth 1) and 2 (depth 2) wherever it covers a cell.
    inside_1 = (cols + 0.5) + (rows + 0.5) <= 6.0
    assert np.all(tri[inside_1] == 1)
    assert np.all(tri[~inside_1] == 2)


def test_triangles_across_zero_degrees_are_drawn_on_both_sides_and_pole_triangles_left_out():
    az = np.array([350.0, 10.0, 0.0, 100.0, 220.0, 340.0])
    faces = np.array([[0, 1, 2], [3, 4, 5], [0, 2, 5]])
    corners, a = _unwrapped_triangles(az, faces, max_span_deg=90.0)
    # [0, 1, 2]: across the seam -> twice, 350..370 and -10..10; [3, 4, 5] spans 240 degrees: the pole;
    # [0, 2, 5]: across the seam too (340..360 once unwrapped) -> twice.
    assert corners.shape[0] == 4
    spans = a.max(axis=1) - a.min(axis=1)
    assert np.all(spans <= 90.0)
    assert any(np.allclose(sorted(r), [350.0, 360.0, 370.0]) for r in a)
    assert any(np.allclose(sorted(r), [-10.0, 0.0, 10.0]) for r in a)


def test_unrolled_hu_of_a_linear_field_is_exact_at_every_cell(result):
    """HU set to 10 x height: linear on every unrolled triangle, so each cell reads 10 x its own height."""
    linear = copy.copy(result)
    linear.vertices = result.vertices.copy()
    linear.vertices["hu"] = 10.0 * linear.vertices["height_mm"]
    umap = plots.unrolled_map(linear, width_px=240, height_px=180)
    expected = np.broadcast_to(10.0 * umap.height_mm[:, None], umap.hu.shape)
    drawn = umap.vertex_id >= 0
    # The pole (within 5 mm of the tip) repeats the cell above it; everywhere else interpolation is exact.
    away = drawn & (umap.height_mm[:, None] > 5.0)
    assert away.mean() > 0.9
    assert np.allclose(umap.hu[away], expected[away], atol=1e-6)


def test_resample_bilinear_reproduces_a_linear_ramp():
    img = np.add.outer(np.arange(10.0) * 3.0, np.arange(20.0))  # 3 per row, 1 per column
    out = resample_bilinear(img, 25, 50)
    # Output pixel centres mapped back into the input (pixel centres aligned), away from the clamped border.
    r = (np.arange(25) + 0.5) * 10 / 25 - 0.5
    c = (np.arange(50) + 0.5) * 20 / 50 - 0.5
    inner_r, inner_c = (r >= 0) & (r <= 9), (c >= 0) & (c <= 19)
    assert np.allclose(out[np.ix_(inner_r, inner_c)], np.add.outer(3.0 * r[inner_r], c[inner_c]))


# --------------------------------------------------------------------------- what the pictures show


def _dominant_classes(result) -> dict[int, tuple[str, float]]:
    zones = result.zones.set_index(result.zones["zone"].astype(str))
    out = {}
    for z in range(1, 15):
        row = zones.loc[str(z)]
        fr = {n: float(row[f"frac_{n}"]) for n in result.class_names if np.isfinite(row[f"frac_{n}"])}
        if fr:
            name = max(fr, key=fr.get)
            out[z] = (name, fr[name])
    return out


def test_unrolled_class_picture_shows_each_zones_main_class_in_its_cell(result):
    """Over each zone's cells of the PNG, the most frequent class colour is the zone table's largest class.

    The table comes from the vertex areas (no drawing); the picture from the rasterised mesh, read back from the PNG.
    """
    umap = plots.unrolled_map(result)
    fig = plots.unrolled_figure(result, "class", umap)
    png = _png(plots.figure_png(fig))
    ax = next(a for a in fig.axes if a.get_label() == "unrolled")
    bb = ax.get_window_extent()
    x0, y_top = int(round(bb.x0)), int(round(png.shape[0] - bb.y1))
    h, w = umap.vertex_id.shape
    crop = png[y_top: y_top + h, x0: x0 + w].astype(float)
    assert crop.shape[:2] == (h, w)
    zone_cells = umap.values(result.vertices["gruen_zone"].to_numpy(), fill=-1)
    colours = plots.class_colours(result)
    names = list(result.class_names)
    palette = np.array([to_rgb(colours[n]) for n in names]) * 255.0
    dominant = _dominant_classes(result)
    checked = 0
    for zone, (main, share) in dominant.items():
        if share < 0.6:
            continue  # no clear majority: nothing to compare
        pix = crop[zone_cells == zone]
        d = np.linalg.norm(pix[:, None, :] - palette[None, :, :], axis=-1)
        exact = d.min(axis=1) < 3.0  # class colours, not the grid lines or the zone number's box
        assert exact.sum() > 0.5 * pix.shape[0], zone
        counts = np.bincount(np.argmin(d[exact], axis=1), minlength=len(names))
        assert names[int(np.argmax(counts))] == main, (zone, dict(zip(names, counts)))
        checked += 1
    assert checked >= 6


def test_3d_and_slice_panels_are_recorded_where_their_images_are_drawn(result):
    """figure.panels gives each panel's place in the PNG: the crop there is the panel's image."""
    geometry = plots.render_geometry(result)
    views = plots.colour_views(result, geometry, "class")
    fig = plots.surface_views_figure(result, "class", views)
    png = _png(plots.figure_png(fig))
    assert list(fig.panels) == list(plots.VIEWS)
    for view in views:
        crop = fig.panels[view.name].crop(png)
        same = np.all(np.abs(crop.astype(int) - view.image.astype(int)) <= 2, axis=-1)
        assert same.mean() > 0.9, view.name  # the rest: border lines and words drawn over the image
    slices = plots.make_slices(result, result.volume)
    fig = plots.slices_figure(result, slices=slices)
    png = _png(plots.figure_png(fig))
    assert [p.name for p in fig.panels.values()] == [s.name for s in slices]
    lo, hi = plots.HU_DISPLAY_RANGE
    for s in slices:
        crop = fig.panels[s.name].crop(png).astype(float)
        grey = np.where(np.isfinite(s.hu), np.clip((s.hu - lo) / (hi - lo), 0, 1), 1.0)
        shown = resample_bilinear(grey, crop.shape[0], crop.shape[1]) * 255.0
        # Grey where no outline or word is drawn: the slice itself, not flipped or shifted.
        is_grey = (np.ptp(crop, axis=-1) < 2)
        assert is_grey.mean() > 0.8, s.name
        assert np.mean(np.abs(crop[..., 0][is_grey] - shown[is_grey]) <= 2) > 0.95, s.name
