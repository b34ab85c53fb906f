"""The pictures' geometry: zone borders on the zone planes, slices that show the stem where it is, the report's width.

Ground truth: the phantom's own implicit stem function and tissue HU, and
:func:`~ImplantBoneContactLib.frame.assign_zones` (the zones the tables use).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from ImplantBoneContactLib import plots
from ImplantBoneContactLib.display import CLASS_COLOURS, CLASS_PALETTES, FALLBACK_CLASS_COLOUR, class_colour_table
from ImplantBoneContactLib.frame import assign_zones
from ImplantBoneContactLib.plots.slices import make_slices
from ImplantBoneContactLib.plots.unrolled import unroll_segments

# Every test here renders with VTK (offscreen) or draws the pictures.
pytestmark = pytest.mark.render


@pytest.fixture(scope="module")
def result(phantom_result):
    return phantom_result


@pytest.fixture(scope="module")
def borders(result):
    return plots.zone_borders(result.surface, result.frame, result.parameters.bands_axial)


def _zone(result, pts):
    return assign_zones(result.frame, pts, result.parameters.bands_axial)["gruen_zone"]


def test_every_zone_border_is_cut_on_its_plane_and_separates_two_zones(result, borders):
    """Border points lie on their plane; 0.4 mm to either side along its normal the zones differ."""
    kinds = [b.kind for b in borders]
    assert kinds.count("resection") == 1 and kinds.count("band") == 2 and kinds.count("tip") == 1
    assert kinds.count("sector") == 4
    for b in borders:
        assert b.segments.shape[0] > 20, b.kind
        assert b.distance_to_plane().max() < 1e-3, b.kind
        mid = b.segments.mean(axis=1)
        up = _zone(result, mid + 0.4 * b.plane_normal)
        down = _zone(result, mid - 0.4 * b.plane_normal)
        # A border point where three zones meet (a corner) may see the same zone on both sides; few do.
        assert np.mean(up != down) > 0.97, b.kind
        if b.kind == "resection":
            assert np.all((up == 0) != (down == 0))


def test_band_and_resection_borders_go_all_round_the_stem(result, borders):
    for b in borders:
        if b.kind in ("resection", "band", "tip"):
            uv = unroll_segments(result.frame, b.segments)
            covered = np.zeros(360, dtype=bool)
            for (a0, _), (a1, _) in uv:
                lo, hi = sorted((a0, a1))
                covered[int(np.floor(max(lo, 0))): int(np.ceil(min(hi, 360)))] = True
            assert covered.all(), b.kind


def test_sector_borders_lie_at_their_azimuth_below_the_cut(result, borders):
    sectors = [b for b in borders if b.kind == "sector"]
    for b, az in zip(sectors, (45.0, 135.0, 225.0, 315.0)):
        pts = b.segments.reshape(-1, 3)
        r = np.linalg.norm((pts - result.frame.tip) - np.outer((pts - result.frame.tip) @ result.frame.axis, result.frame.axis), axis=1)
        off_axis = r > 1.0
        assert np.all(np.abs((result.frame.azimuth(pts[off_axis]) - az + 180) % 360 - 180) < 1e-3)
        # Clipped at the resection plane: at most on it (rounding), never above.
        assert np.max((pts - result.frame.resection_point) @ result.frame.resection_normal) < 1e-6


def test_drawn_borders_sit_where_the_pixel_zones_change(result, borders):
    """In the anterior view, pixels 3 px either side of a visible band border belong to different zones."""
    views = plots.render_surface_views(result, "zone", views=("anterior",))
    view = views[0]
    zpx = view.pixel_zones(result)
    band = [b for b in borders if b.kind == "band"]
    checked = 0
    for b in band:
        lines = plots.views3d.visible_border_lines(view, b)
        assert lines.shape[0] > 10
        mid = lines.mean(axis=1)
        c = np.rint(mid[:, 0]).astype(int)
        r = np.rint(mid[:, 1]).astype(int)
        above, below = zpx[r - 3, c], zpx[r + 3, c]
        ok = (above > 0) & (below > 0)
        checked += ok.sum()
        assert np.mean(above[ok] != below[ok]) > 0.95
    assert checked > 20


def test_no_surface_above_the_resection_is_coloured_in_the_unrolled_maps(result):
    """Every cell above the unrolled resection line is the above-cut grey, every cell below is not."""
    umap = plots.unrolled_map(result, width_px=240, height_px=180)
    grey = np.asarray(plots.style.rgb(plots.ABOVE_CUT_COLOUR))
    for kind in ("hu", "class"):
        img = plots.unrolled.unrolled_rgb(result, umap, kind)
        has = umap.vertex_id >= 0
        is_grey = np.all(np.abs(img - grey) < 1e-6, axis=-1)
        above = umap.above_cut() & has
        assert above.sum() > 100
        assert is_grey[above].all(), kind
        assert not is_grey[~umap.above_cut() & has].any(), kind
    # The unrolled resection line is the frame's cut height at the stem surface there (a second computation).
    uv = unroll_segments(result.frame, [b for b in plots.zone_borders(result.surface, result.frame)
                                        if b.kind == "resection"][0].segments)
    got = np.interp(uv[:, 0, 0], umap.azimuth_deg, umap.cut_height_mm, period=360)
    assert np.median(np.abs(got - uv[:, 0, 1])) < 0.5


# --------------------------------------------------------------------------- slices


def _inside(poly_segments: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd rule: a ray toward +u crosses the outline an odd number of times."""
    a, b = poly_segments[:, 0], poly_segments[:, 1]
    u, v = pts[:, 0][:, None], pts[:, 1][:, None]
    straddle = (a[None, :, 1] > v) != (b[None, :, 1] > v)
    t = (v - a[None, :, 1]) / np.where(b[None, :, 1] != a[None, :, 1], b[None, :, 1] - a[None, :, 1], 1.0)
    x = a[None, :, 0] + t * (b[None, :, 0] - a[None, :, 0])
    return (np.sum(straddle & (x > u), axis=1) % 2) == 1


def test_slice_outline_is_the_stem_cross_section_and_the_ct_is_where_it_is_drawn(phantom, phantom_ct, result):
    slices = make_slices(result, phantom_ct)
    assert [s.name for s in slices] == ["coronal", "sagittal", "axial proximal", "axial middle", "axial distal"]
    for s in slices:
        rows, cols = s.hu.shape
        px = plots.slices.SLICE_PIXEL_MM
        us = s.u_range[0] + (np.arange(cols) + 0.5) * px
        vs = s.v_range[1] - (np.arange(rows) + 0.5) * px  # row 0 at the top
        uu, vv = np.meshgrid(us[::3], vs[::3])
        uv = np.stack([uu.ravel(), vv.ravel()], axis=1)
        ras = s.origin + uv[:, :1] * s.u + uv[:, 1:] * s.v
        in_stem = phantom.stem_function_local(phantom._to_local(ras)) < 0
        drawn_inside = _inside(s.outline, uv)
        # Pixels inside the drawn outline are inside the phantom's stem, except along the edge (mesh, 1 pixel).
        agree = drawn_inside == in_stem
        assert agree.mean() > 0.98, s.name
        # The CT image shows the phantom's tissue at the pixel's place (not flipped or shifted).
        true_hu = phantom.true_hu_at(ras)
        shown = s.hu[::3, ::3].ravel()
        ok = np.isfinite(shown)
        assert np.corrcoef(shown[ok], true_hu[ok])[0, 1] > 0.8, s.name
        # Every outline segment carries a class of the result.
        assert set(s.outline_class) <= set(result.class_names) | {"not_sampled", "unclassified", "above_resection"}


def test_slices_png_is_written_with_the_other_pictures(result):
    pictures, notes = plots.make_pictures(result)
    assert "slices.png" in pictures and not notes
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(pictures["slices.png"])).convert("RGB"))
    assert img.shape[0] > 500 and img.shape[1] > 800


# --------------------------------------------------------------------------- colours, modules


def test_class_colours_come_from_one_table_by_name_with_a_fallback():
    assert class_colour_table(["no_bone", "cancellous", "cortical"])["cortical"] == CLASS_COLOURS["cortical"]
    # Unknown bands: the palette by HU order, all different.
    t = class_colour_table(["soft", "middle", "hard"])
    assert [t[n] for n in ("soft", "middle", "hard")] == list(CLASS_PALETTES[3])
    # A known name next to unknown ones does not end up sharing a colour.
    t = class_colour_table(["cortical", "weird"])
    assert t["cortical"] != t["weird"]
    # A new label (not a band) gets the table's colour when it has one, else the fallback.
    t = class_colour_table(["no_bone", "cortical"], extra=["some_new_label"])
    assert t["some_new_label"] == FALLBACK_CLASS_COLOUR and t["metal"] == CLASS_COLOURS["metal"]
    many = class_colour_table([f"c{i}" for i in range(7)])
    assert len(set(many.values())) >= 7


def _imported_modules(path, top_level_only: bool) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_drawing_modules_and_export_do_not_import_each_other():
    from pathlib import Path

    import ImplantBoneContactLib.export as export_module

    folder = Path(plots.__file__).parent
    for module in folder.glob("*.py"):
        names = _imported_modules(module, top_level_only=False)
        assert not any(n.endswith("export") for n in names), module.name
    # export draws nothing itself: the pictures are imported only when a result is saved with them.
    top = _imported_modules(Path(export_module.__file__), top_level_only=True)
    assert not any("plots" in n or "matplotlib" in n for n in top)
    code = "import sys; import ImplantBoneContactLib.export; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- report in a browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium on this machine")
def test_report_fits_a_1280_px_window(tmp_path, result):
    """Rendered by Chromium at 1280 px: nothing wider than the window, the region column on one line."""
    pictures, notes = plots.make_pictures(result)
    text = plots.report_html(result, pictures, notes)
    probe = (
        "<script>var d=document.documentElement,t=document.querySelector('table.zones'),"
        "r=[].map.call(document.querySelectorAll('table.zones td:nth-child(2)'),function(c){return c.getBoundingClientRect().height});"
        "document.body.setAttribute('data-probe',[d.scrollWidth,t.getBoundingClientRect().right,Math.max.apply(null,r),"
        "Math.min.apply(null,r)].join(','));</script>"
    )
    page = tmp_path / "report.html"
    page.write_text(text.replace("</body>", probe + "</body>"), encoding="utf-8")
    out = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--window-size=1280,2000", "--virtual-time-budget=2000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    import re

    m = re.search(r'data-probe="([0-9.,]+)"', out.stdout)
    assert m, out.stderr[-2000:]
    scroll_width, table_right, tallest, lowest = (float(x) for x in m.group(1).split(","))
    assert scroll_width <= 1280
    assert table_right <= 1280
    assert tallest < 1.5 * lowest  # no region cell wraps onto a second line


@pytest.mark.parametrize("kind", ["hu", "class"])
def test_unrolled_figures_have_their_own_title_and_key(result, kind):
    umap = plots.unrolled_map(result, width_px=120, height_px=90)
    fig = plots.unrolled_figure(result, kind, umap)
    texts = " ".join(t.get_text() for t in fig.texts)
    assert ("HU at the stem surface" in texts) == (kind == "hu")
    assert ("contact class at the stem surface" in texts) == (kind == "class")
    # Every picture says what was measured: model, CT, side, sampling.
    assert plots.run_description(result) in texts and result.frame.side in plots.run_description(result)
    legend = " ".join(t.get_text() for lg in fig.legends for t in lg.get_texts())
    for name in result.class_names:
        assert (name in legend) == (kind == "class"), name


def test_bands_inside_the_tip_zone_are_neither_drawn_nor_labelled_in_the_unrolled_map(phantom, phantom_ct, phantom_stem):
    """A tip zone of 60 mm on the phantom's stem (about 130 mm from cut to tip: the distal band's border at about
    43 mm lies inside it) holds the whole distal band: zones 3, 5, 10 and 12 have no vertex. The unrolled map
    then draws no border and puts no label there: the distal border is NaN in every column, the labels are the
    ten zones that have vertices, each centred within its own zone's heights. Before, the border was drawn at
    its nominal height and zones 3, 5, 10 and 12 labelled between it and the tip zone's border."""
    from ibc_helpers import frame_parameters
    from ImplantBoneContactLib.analysis import AnalysisParameters, analyze
    from ImplantBoneContactLib.plots.unrolled import unrolled_map, zone_cell_centres

    res = analyze(phantom_ct, phantom_stem,
                  AnalysisParameters(points=3000, tip_length_mm=60.0, **frame_parameters(phantom.true_frame())))
    v = res.vertices
    present = set(int(z) for z in v["gruen_zone"].unique() if z > 0)
    assert present.isdisjoint({3, 5, 10, 12}) and {1, 2, 4, 6, 7, 8, 9, 11, 13, 14} <= present
    umap = unrolled_map(res)
    assert np.isnan(umap.band_heights_mm[1]).all()
    assert np.isfinite(umap.band_heights_mm[0]).all()
    centres = zone_cell_centres(umap)
    assert {z for z, _, _ in centres} == {1, 2, 4, 6, 7, 8, 9, 11, 13, 14}
    heights = v.groupby("gruen_zone")["height_mm"].agg(["min", "max"])
    for zone, _, height in centres:
        assert heights.loc[zone, "min"] <= height <= heights.loc[zone, "max"], zone
