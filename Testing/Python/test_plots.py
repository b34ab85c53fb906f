"""The pictures show what they claim: checked against the femur phantom's ground truth.

The session's phantom analysis (conftest ``phantom_result``) is drawn. Truth comes from
the phantom's analytic model (tissue labels, true frame, the implicit stem
surface), never from the code under test; the PNG files themselves are read
back and their pixels checked.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest
from ImplantBoneContactLib import plots
from ImplantBoneContactLib.analysis import AnalysisParameters, analyze
from ImplantBoneContactLib.export import save_result
from ImplantBoneContactLib.phantom import CANCELLOUS, CORTICAL, MARROW, SOFT_TISSUE, FemurPhantom
from ImplantBoneContactLib.volume import Volume
from matplotlib import colormaps
from matplotlib.colors import to_rgb

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def result(phantom_result):
    """Left femur phantom (conftest: 1.0 mm voxels, no noise), 6000 points, true frame."""
    return phantom_result


@pytest.fixture(scope="module")
def geometry(result):
    return plots.render_geometry(result)


@pytest.fixture(scope="module")
def hu_views(result, geometry):
    return plots.colour_views(result, geometry, "hu")


@pytest.fixture(scope="module")
def small_map(result):
    # Coarser than the default so the ray-cast truth below stays fast.
    return plots.unrolled_map(result, width_px=240, height_px=180)


@pytest.fixture(scope="module")
def truth_on_map(phantom, result, small_map):
    """Tissue at the true stem surface point of every map cell, by ray casting the phantom's implicit stem."""
    az, h = np.meshgrid(small_map.azimuth_deg, small_map.height_mm)
    pts = stem_surface_points(phantom, result.frame, az.ravel(), h.ravel())
    tissue = phantom.tissue_at(pts).reshape(az.shape)
    # Blur (0.6 mm) makes the class within about a millimetre of a tissue boundary a matter of chance.
    clear = phantom.distance_to_tissue_boundary(pts, 1.0).reshape(az.shape)
    return {"points": pts.reshape(az.shape + (3,)), "tissue": tissue, "clear": clear}


# --------------------------------------------------------------------------- helpers


def stem_surface_points(phantom: FemurPhantom, frame, az_deg: np.ndarray, h_mm: np.ndarray) -> np.ndarray:
    """Outermost point of the analytic stem along the ray from the axis at (azimuth, height) (RAS mm).

    The frame only places the rays; where they meet the stem is the phantom's own geometry.
    """
    axis = np.asarray(frame.axis, float)
    rad = np.radians(az_deg)
    u = np.cos(rad)[:, None] * np.asarray(frame.medial, float) + np.sin(rad)[:, None] * np.asarray(frame.anterior, float)
    base = np.asarray(frame.tip, float) - h_mm[:, None] * axis
    m = phantom.ras_to_local

    def f(t):
        p = base + t[:, None] * u
        return FemurPhantom.stem_function_local(p @ m[:3, :3].T + m[:3, 3])

    step = 0.75
    ts = np.arange(0.0, 30.0, step)
    inside = np.stack([f(np.full(len(az_deg), t)) <= 0 for t in ts], axis=1)
    last = np.where(inside.any(1), inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
    lo = ts[last]
    hi = lo + step
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        inn = f(mid) <= 0
        lo = np.where(inn, mid, lo)
        hi = np.where(inn, hi, mid)
    return base + (0.5 * (lo + hi))[:, None] * u


def true_azimuth(phantom: FemurPhantom, pts: np.ndarray) -> np.ndarray:
    """Azimuth (degrees) of RAS points in the phantom's true frame: 0 medial, 90 anterior."""
    f = phantom.true_frame()
    r = pts - f.tip
    return np.degrees(np.arctan2(r @ f.anterior, r @ f.medial)) % 360.0


def read_png(data: bytes) -> np.ndarray:
    from PIL import Image

    assert data[:8] == PNG_SIGNATURE
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def axes_crop(fig, png: np.ndarray, label: str) -> np.ndarray:
    """The pixels of the panel (drawn without axes) or of the axes labelled ``label`` in the PNG of ``fig``."""
    panels = getattr(fig, "panels", {})
    if label in panels:
        return panels[label].crop(png)
    ax = next(a for a in fig.axes if a.get_label() == label)
    bb = ax.get_window_extent()
    h = png.shape[0]
    x0, x1 = int(round(bb.x0)), int(round(bb.x1))
    y0, y1 = int(round(h - bb.y1)), int(round(h - bb.y0))
    return png[y0:y1, x0:x1]


def invert_colormap(rgb: np.ndarray) -> np.ndarray:
    """HU from shaded colormap colours: the colormap entry of the same chromaticity (shading scales brightness only)."""
    lo, hi = plots.HU_RANGE
    lut = colormaps[plots.HU_COLORMAP](np.linspace(0.0, 1.0, 1024))[:, :3]
    lut_u = lut / np.linalg.norm(lut, axis=1)[:, None]
    p = rgb.reshape(-1, 3).astype(float)
    p_u = p / np.maximum(np.linalg.norm(p, axis=1), 1e-9)[:, None]
    k = np.argmax(p_u @ lut_u.T, axis=1)
    return (lo + (hi - lo) * k / 1023.0).reshape(rgb.shape[:-1])


def map_colour(crop: np.ndarray, result, kind: str) -> np.ndarray:
    """Pixels (uint8 RGB) showing a colour of the map's scale: a colormap entry or a class colour."""
    if kind == "hu":
        palette = colormaps[plots.HU_COLORMAP](np.linspace(0.0, 1.0, 1024))[:, :3]
    else:
        palette = np.array([to_rgb(c) for c in plots.class_colours(result).values()])
    palette = np.rint(palette * 255)
    flat = crop.reshape(-1, 3).astype(int)
    best = np.full(flat.shape[0], 10**9)
    for chunk in np.array_split(palette, max(1, len(palette) // 64)):
        best = np.minimum(best, np.abs(flat[:, None, :] - chunk[None, :, :]).max(-1).min(-1))
    return (best <= 3).reshape(crop.shape[:2])


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 8 neighbours are all in ``mask`` (no anti-aliased edge against the background)."""
    out = mask.copy()
    out[0, :] = out[-1, :] = out[:, 0] = out[:, -1] = False
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            out &= np.roll(np.roll(mask, dr, 0), dc, 1)
    return out


# --------------------------------------------------------------------------- 3D views


def test_each_view_looks_at_its_named_side_with_proximal_up(phantom, result, hu_views):
    """Visible surface faces the camera on the named side (true frame); proximal is at the top."""
    pts = result.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()
    truth_frame = phantom.true_frame()
    true_h = (truth_frame.tip - pts) @ truth_frame.axis
    centre_az = {"medial": 0.0, "anterior": 90.0, "lateral": 180.0, "posterior": 270.0}
    for view in hu_views:
        ids = view.vertex_id
        fg = ids >= 0
        body = fg & (result.vertices["gruen_zone"].to_numpy()[np.clip(ids, 0, None)] > 0)
        az = true_azimuth(phantom, pts[ids[body]])
        off = np.abs((az - centre_az[view.name] + 180.0) % 360.0 - 180.0)
        # A convex section seen from one side shows at most a half turn: |offset| < 90 degrees.
        assert np.mean(off < 90.0) > 0.97, view.name
        # The camera model the views report (centre, right, up, scale) puts each vertex where it is drawn:
        # a pixel lies within its vertex's area patch (about 1 mm at 6000 points), without bias.
        rows, cols = np.nonzero(fg)
        col_row = view.project(pts[ids[fg]])
        dist_mm = np.hypot(col_row[:, 0] - cols, col_row[:, 1] - rows) * view.mm_per_pixel
        assert np.median(dist_mm) < 1.2, view.name
        assert abs(np.mean(col_row[:, 0] - cols)) < 0.5 and abs(np.mean(col_row[:, 1] - rows)) < 0.5, view.name
        slope = np.polyfit(col_row[:, 0], cols, 1)[0], np.polyfit(col_row[:, 1], rows, 1)[0]
        assert np.allclose(slope, 1.0, atol=0.01), (view.name, slope)
        top = rows < np.percentile(rows, 20)
        bottom = rows > np.percentile(rows, 80)
        h_rows = true_h[ids[fg]]
        assert h_rows[top].mean() > h_rows[bottom].mean() + 80.0, view.name


def test_anterior_view_shows_the_left_femur_as_facing_the_patient(phantom, result, hu_views):
    """Anterior view, like an AP radiograph: the patient's right is on the left of the picture.

    For a left femur the medial side (toward the patient's right) is on the left.
    """
    view = next(v for v in hu_views if v.name == "anterior")
    pts = result.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()
    ids = view.vertex_id
    fg = ids >= 0
    cols = np.nonzero(fg)[1]
    az = true_azimuth(phantom, pts[ids[fg]])
    medial = (az < 60) | (az > 300)
    lateral = (az > 120) & (az < 240)
    assert medial.sum() > 100 and lateral.sum() > 100
    assert cols[medial].mean() < cols[lateral].mean() - 20
    # And the patient's right (+R in RAS) is toward the picture's left.
    assert view.right[0] < -0.9


def test_views_show_the_stem_big_and_whole(result, hu_views):
    for view in hu_views:
        fg = view.vertex_id >= 0
        h, w = fg.shape
        rows, cols = np.nonzero(fg)
        # The stem fills most of the height (same scale in all views, fitted to the tallest).
        assert (rows.max() - rows.min()) > 0.85 * h, view.name
        # Nothing touches the picture edges: nothing clipped.
        assert rows.min() > 0 and rows.max() < h - 1 and cols.min() > 0 and cols.max() < w - 1, view.name
        assert 0.05 < fg.mean() < 0.6, view.name
    scales = {v.mm_per_pixel for v in hu_views}
    assert len(scales) == 1


def test_heatmap_colours_give_back_the_phantom_hu(phantom, result, hu_views):
    """Shaded heat-map colours, mapped back through the colormap, give low HU on marrow and high HU on cortex."""
    pts = result.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()
    zone = result.vertices["gruen_zone"].to_numpy()
    tissue = phantom.tissue_at(pts)
    clear = phantom.distance_to_tissue_boundary(pts, 1.5)
    estimates = {CORTICAL: [], MARROW: [], CANCELLOUS: []}
    everything = []
    for view in hu_views:
        ids = view.vertex_id
        ok = interior(ids >= 0)
        ok[ok] &= zone[ids[ok]] > 0
        hu_px = invert_colormap(view.image[ok] / 255.0)
        v_ids = ids[ok]
        everything.append(hu_px)
        for t in estimates:
            sel = (tissue[v_ids] == t) & clear[v_ids]
            estimates[t].append(hu_px[sel])
    cort = np.concatenate(estimates[CORTICAL])
    marrow = np.concatenate(estimates[MARROW])
    canc = np.concatenate(estimates[CANCELLOUS])
    assert cort.size > 2000 and marrow.size > 500 and canc.size > 2000
    # Phantom HU before blur: cortex 1500-1800, cancellous 200-400, marrow 30.
    assert np.median(cort) > 1300
    assert np.median(marrow) < 150
    assert 150 < np.median(canc) < 500
    allpx = np.concatenate(everything)
    # The colours span the range from the marrow (30 HU; under 2 % of this stem's surface) to the
    # cortex (1500-1800 HU): both ends are on the picture, not a washed-out middle.
    assert np.percentile(allpx, 0.5) < 150
    assert np.percentile(allpx, 99) > 1500


def test_heatmap_png_panels_are_the_rendered_views(result, hu_views):
    """The PNG shows each rendered view pixel for pixel in the panel titled with its name."""
    borders = plots.zone_borders(result.surface, result.frame, result.parameters.bands_axial)
    fig = plots.surface_views_figure(result, "hu", hu_views, borders)
    png = read_png(plots.figure_png(fig))
    for view in hu_views:
        crop = axes_crop(fig, png, view.name)
        assert crop.shape == view.image.shape, view.name
        same = np.all(np.abs(crop.astype(int) - view.image.astype(int)) <= 2, axis=-1)
        # The zone border lines are drawn over the image: leave out the pixels within 2 px of them.
        lines = np.concatenate([plots.views3d.visible_border_lines(view, b) for b in borders])
        t = np.linspace(0.0, 1.0, 6)[None, :, None]
        along = (lines[:, :1] * (1 - t) + lines[:, 1:] * t).reshape(-1, 2)
        under = np.zeros(same.shape, dtype=bool)
        for dc in range(-2, 3):
            for dr in range(-2, 3):
                c = np.clip(np.rint(along[:, 0]).astype(int) + dc, 0, same.shape[1] - 1)
                r = np.clip(np.rint(along[:, 1]).astype(int) + dr, 0, same.shape[0] - 1)
                under[r, c] = True
        assert under.mean() < 0.1, view.name
        # Text drawn over the panel (orientation words, scale bar) may cover a few pixels.
        assert same[~under].mean() > 0.98, view.name
        assert view.name.lower() in fig.panels[view.name].title.lower()
    legends = [a.get_legend() for a in fig.axes if a.get_legend()] + list(fig.legends)
    texts = " ".join(t.get_text() for lg in legends for t in lg.get_texts())
    assert "outside the CT" in texts and "above the resection" in texts


def test_zone_picture_shows_zone_1_laterally_and_zone_7_medially(result, geometry):
    """Read the zones PNG: zone 1's colour fills the lateral view and is absent from the medial one (zone 7 the reverse)."""
    views = plots.colour_views(result, geometry, "zone")
    fig = plots.surface_views_figure(result, "zone", views)
    png = read_png(plots.figure_png(fig))
    palette = {z: np.asarray(to_rgb(c)) for z, c in plots.ZONE_COLOURS.items()}
    palette[0] = np.asarray(to_rgb(plots.ABOVE_CUT_COLOUR))
    keys = list(palette)
    units = np.stack([palette[k] / np.linalg.norm(palette[k]) for k in keys])

    def zone_share(name: str) -> dict[int, float]:
        crop = axes_crop(fig, png, name).astype(float) / 255.0
        fg = np.any(crop < 0.97, axis=-1)
        p = crop[fg]
        p_u = p / np.maximum(np.linalg.norm(p, axis=1), 1e-9)[:, None]
        cos = p_u @ units.T
        best = np.argmax(cos, axis=1)
        confident = cos[np.arange(len(best)), best] > 0.995
        labels = np.array(keys)[best[confident]]
        return {z: float(np.mean(labels == z)) for z in keys}

    lateral, medial = zone_share("lateral"), zone_share("medial")
    assert lateral[1] > 0.15 and medial[1] < 0.005
    assert medial[7] > 0.15 and lateral[7] < 0.005
    # The zone numbers are written on their own zone, and only where the zone is seen.
    zone_v = result.vertices["gruen_zone"].to_numpy()
    for view in views:
        numbers = {int(text): (x, y) for text, x, y in fig.panels[view.name].labels}
        for z, (x, y) in numbers.items():
            assert zone_v[view.vertex_id[int(round(y)), int(round(x))]] == z
        if view.name == "lateral":
            assert {1, 2, 3} <= set(numbers) and 7 not in numbers
        if view.name == "medial":
            assert {5, 6, 7} <= set(numbers) and 1 not in numbers


# --------------------------------------------------------------------------- unrolled map


def test_unrolled_map_cells_sit_at_their_azimuth_and_height(phantom, result, small_map, truth_on_map):
    """The vertex drawn in each cell lies on the stem at the cell's azimuth and height (true geometry)."""
    pts = result.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()
    vid = small_map.vertex_id
    zone = result.vertices["gruen_zone"].to_numpy()
    assert (vid >= 0).all()
    below = zone[vid] > 0
    d = np.linalg.norm(pts[vid] - truth_on_map["points"], axis=-1)
    # Within a few vertex spacings (6000 points: about 1.5 mm apart), except around the tip pole.
    far_from_tip = small_map.height_mm[:, None] > 8.0
    assert np.percentile(d[below & far_from_tip], 95) < 4.0


def test_unrolled_class_png_shows_cortical_where_the_phantom_is_cortical(result, small_map, truth_on_map):
    """Pixels of the cortical colour in the PNG lie where the phantom has cortex, and the other way round."""
    fig = plots.unrolled_figure(result, "class", small_map)
    png = read_png(plots.figure_png(fig))
    crop = axes_crop(fig, png, "unrolled")
    assert crop.shape[:2] == small_map.vertex_id.shape
    colours = plots.class_colours(result)

    def painted(name: str) -> np.ndarray:
        c = np.rint(np.asarray(to_rgb(colours[name])) * 255)
        return np.all(np.abs(crop.astype(int) - c) <= 3, axis=-1)

    tissue, clear = truth_on_map["tissue"], truth_on_map["clear"]
    below = small_map.values(result.vertices["gruen_zone"].to_numpy(), fill=-1) > 0
    # Pixels under the zone grid and numbers show no class: leave them out.
    shown = np.any([painted(n) for n in colours], axis=0)
    assert shown.mean() > 0.5
    use = clear & below & shown
    cortical_px = painted("cortical") & use
    truth_cortical = (tissue == CORTICAL) & use
    assert cortical_px.sum() > 0.1 * use.sum()
    precision = (cortical_px & truth_cortical).sum() / cortical_px.sum()
    recall = (cortical_px & truth_cortical).sum() / truth_cortical.sum()
    no_bone_px = painted("no_bone") & use
    truth_no_bone = np.isin(tissue, (MARROW, SOFT_TISSUE)) & use
    nb_precision = (no_bone_px & truth_no_bone).sum() / no_bone_px.sum()
    # Sampling at the surface of a 0.6 mm-blurred CT classifies a vertex more than 1 mm from any
    # tissue boundary right nearly always; the nearest vertex of a cell is within about 3 mm of the
    # cell's true surface point (test above), which costs a few percent near class boundaries.
    assert precision > 0.93, precision
    assert recall > 0.93, recall
    assert nb_precision > 0.9, nb_precision


def test_unrolled_hu_follows_the_phantom(phantom, small_map, truth_on_map, result):
    """Interpolated HU of the map against the phantom's HU at the same surface points, away from tissue boundaries."""
    below = small_map.values(result.vertices["gruen_zone"].to_numpy(), fill=-1) > 0
    use = truth_on_map["clear"] & below & (small_map.height_mm[:, None] > 3.0)
    true_hu = phantom.true_hu_at(truth_on_map["points"][use])
    got = small_map.hu[use]
    assert np.all(np.isfinite(got))
    # Cortex 1500-1800 HU reads lower after blur near its inner edge; medians per tissue hold.
    tissue = truth_on_map["tissue"][use]
    for t, lo, hi in ((CORTICAL, 1100, 1900), (CANCELLOUS, 150, 500), (MARROW, -100, 200)):
        sel = tissue == t
        assert sel.sum() > 200
        assert lo < np.median(got[sel]) < hi, (t, np.median(got[sel]))
    assert np.corrcoef(got, true_hu)[0, 1] > 0.85


def test_unrolled_zone_grid_matches_the_zones_of_the_cells(result, small_map):
    """The zone numbers written on the map sit on cells of that zone (Gruen grid drawn where the zones are)."""
    fig = plots.unrolled_figure(result, "hu", small_map)
    ax = next(a for a in fig.axes if a.get_label() == "unrolled")
    zone_cells = small_map.values(result.vertices["gruen_zone"].to_numpy(), fill=-1)
    labels = [(int(t.get_text()), t.get_position()) for t in ax.texts if t.get_text().isdigit()]
    assert sorted({z for z, _ in labels}) == list(range(1, 15))
    step_h = small_map.height_mm[0] - small_map.height_mm[1]
    for z, (a, h) in labels:
        col = int(np.clip(np.searchsorted(small_map.azimuth_deg, a), 0, len(small_map.azimuth_deg) - 1))
        row = int(np.clip(round((small_map.height_mm[0] - h) / step_h), 0, len(small_map.height_mm) - 1))
        window = zone_cells[max(row - 2, 0): row + 3, max(col - 2, 0): col + 3]
        assert np.mean(window == z) > 0.5, (z, a, h)


# --------------------------------------------------------------------------- bars, report, files


def test_zone_fraction_bars_are_area_fractions_in_anatomical_order(result):
    """Bar heights equal the zone table's area fractions, in percent, zones 1-7 then 8-14 left to right."""
    fig = plots.zone_fractions_figure(result)
    ax = next(a for a in fig.axes if a.get_label() == "zone_fractions")
    zones = result.zones.set_index("zone")
    ticks = [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]
    assert ticks == [str(z) for z in range(1, 15)]
    xs = ax.get_xticks()
    assert np.all(np.diff(xs) > 0)
    for container in ax.containers:
        name = container.get_label()
        cls = next((n for n in result.class_names if name.startswith(n)), None)
        if cls is None:  # "unclassified" or "no sampled area": none here
            continue
        for z, x, rect in zip(range(1, 15), xs, container.patches):
            assert abs(rect.get_x() + rect.get_width() / 2 - x) < 1e-9
            assert rect.get_height() == pytest.approx(100 * zones.loc[str(z), f"frac_{cls}"], abs=1e-6)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.fixture(scope="module")
def written(tmp_path_factory, result):
    """``write_pictures`` once, with matplotlib's global settings recorded before and after."""
    folder = tmp_path_factory.mktemp("pictures")
    before = (matplotlib.get_backend(), dict(matplotlib.rcParams), "matplotlib.pyplot" in sys.modules)
    names = plots.write_pictures(result, folder)
    after = (matplotlib.get_backend(), dict(matplotlib.rcParams), "matplotlib.pyplot" in sys.modules)
    return {"folder": folder, "names": names, "before": before, "after": after}


def test_write_pictures_writes_every_file(written):
    folder = written["folder"]
    assert written["names"] == [*plots.PICTURE_FILES, plots.REPORT_FILE]
    assert sorted(p.name for p in folder.iterdir()) == sorted(written["names"])
    for name in plots.PICTURE_FILES:
        img = read_png((folder / name).read_bytes())
        assert img.shape[0] > 300 and img.shape[1] > 600
        # Not blank: many distinct colours.
        packed = (img[..., 0].astype(np.int32) << 16) | (img[..., 1].astype(np.int32) << 8) | img[..., 2]
        assert len(np.unique(packed)) > 30, name


def test_pictures_leave_matplotlib_settings_alone(written):
    """No backend switch, no rcParams change, no pyplot import: safe inside Slicer or a user's notebook."""
    assert written["after"] == written["before"]


def test_report_is_well_formed_and_holds_everything(written, result):
    tmp_path = written["folder"]
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    # Well-formed (every element closed, text escaped): an XML parser reads it whole.
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.tag == "html"
    rows = {tr.get("data-zone"): tr for tr in root.iter("tr") if tr.get("data-zone")}
    assert set(rows) == {str(z) for z in range(1, 15)} | {"all"}
    for _, r in result.zones.iterrows():
        cells = [td.text for td in rows[str(r["zone"])].iter("td")]
        assert cells[1] == r["region"]
        assert float(cells[3]) == pytest.approx(r["area_mm2"], rel=1e-3)
    collector = _Collector()
    collector.feed(text)
    images = [a["src"] for t, a in collector.tags if t == "img"]
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in images]
    assert all(src.startswith("data:image/png;base64,") for src in images)
    written = [(tmp_path / n).read_bytes() for n in plots.PICTURE_FILES]
    assert embedded == written
    assert not any(a.get("src", "").startswith(("http", "file")) for _, a in collector.tags)
    for key in ("medial", "anterior", "resection_normal", "tip"):
        assert key in text
    frame_values = result.frame.to_dict()
    assert f"{frame_values['axis'][0]:.4g}"[:5] in text


def test_report_escapes_text_and_lists_input_hashes(tmp_path, result):
    r = copy.copy(result)
    r.warnings = ["<script>alert('x')</script> & more"]
    ct_file = tmp_path / "ct <1>.nrrd"
    ct_file.write_bytes(b"not really a CT")
    digest = hashlib.sha256(ct_file.read_bytes()).hexdigest()
    r.inputs = {**result.inputs, "ct": {**result.inputs.get("ct", {}), "name": ct_file.name, "sha256": digest}}
    text = plots.report_html(r, {})
    root = ET.fromstring(text.split("\n", 1)[1])
    assert not list(root.iter("script"))
    assert "<script>alert" not in text
    assert any("<script>alert('x')</script> & more" == (li.text or "") for li in root.iter("li"))
    assert digest in text and "ct &lt;1&gt;.nrrd" in text


def test_save_result_writes_pictures_beside_the_tables(tmp_path, result):
    out = save_result(result, tmp_path / "res", pictures=True)
    names = {p.name for p in out.iterdir()}
    assert {*plots.PICTURE_FILES, plots.REPORT_FILE, "zones.csv", "vertices.csv", "parameters.json"} <= names
    out2 = save_result(result, tmp_path / "res2", pictures=False)
    assert not ({*plots.PICTURE_FILES, plots.REPORT_FILE} & {p.name for p in out2.iterdir()})


# --------------------------------------------------------------------------- outside the CT


@pytest.fixture(scope="module")
def cropped(phantom, phantom_ct, result):
    """The same phantom with the CT cut 40 mm above its lowest slice: the distal stem lies outside it."""
    ct = phantom_ct
    spacing = float(np.linalg.norm(ct.ijk_to_ras[:3, 2]))
    k0 = int(round(70.0 / spacing))
    m = ct.ijk_to_ras.copy()
    m[:3, 3] = m[:3, 3] + k0 * m[:3, 2]
    vol = Volume(array=np.ascontiguousarray(ct.array[k0:]), ijk_to_ras=m)
    # The remeshed surface of the full analysis, analysed as it is: the same vertices, faster.
    res = analyze(vol, result.surface, AnalysisParameters(remesh="none"))
    z_floor = float(m[2, 3])  # lowest slice centre (S mm): the CT's direction is axis-aligned here
    return res, z_floor


def test_surface_outside_the_ct_is_drawn_grey(phantom, cropped):
    res, z_floor = cropped
    assert (~res.vertices["inside_ct"]).sum() > 200
    umap = plots.unrolled_map(res, width_px=240, height_px=180)
    az, h = np.meshgrid(umap.azimuth_deg, umap.height_mm)
    pts = stem_surface_points(phantom, res.frame, az.ravel(), h.ravel()).reshape(az.shape + (3,))
    grey = np.rint(np.asarray(to_rgb(plots.NOT_SAMPLED_COLOUR)) * 255)
    for kind in ("hu", "class"):
        fig = plots.unrolled_figure(res, kind, umap)
        crop = axes_crop(fig, read_png(plots.figure_png(fig)), "unrolled").astype(int)
        is_grey = np.all(np.abs(crop - grey) <= 3, axis=-1)
        # Pixels under the zone grid and numbers show no map colour: leave them out.
        shown = is_grey | map_colour(crop, res, kind)
        outside = (pts[..., 2] < z_floor - 2.0) & shown
        inside = (pts[..., 2] > z_floor + 2.0) & shown
        assert outside.sum() > 500 and inside.sum() > 500
        assert is_grey[outside].mean() > 0.9, kind
        assert is_grey[inside].mean() < 0.01, kind
    views = plots.render_surface_views(res, "hu", views=("anterior",))
    ids = views[0].vertex_id
    ok = interior(ids >= 0)
    p = res.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()[ids[ok]]
    px = views[0].image[ok].astype(float)
    grey_u = grey / np.linalg.norm(grey)
    is_grey3d = (px / np.maximum(np.linalg.norm(px, axis=1), 1e-9)[:, None]) @ grey_u > 0.9999
    # A grey pixel has equal R, G and B; no viridis colour does.
    assert is_grey3d[p[:, 2] < z_floor - 2.0].mean() > 0.95
