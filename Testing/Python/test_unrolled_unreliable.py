"""The HU pictures never spread a vertex's unreliable reading into its neighbours' cells.

On a post-operative CT a vertex whose bone cannot be told from the metal's
bloom is class ``unreliable`` and keeps the plain reading at the bounded
depth, often cortical bone 3 mm out amid cancellous neighbours. Interpolated
linearly like a reading, it drew bright star-shaped facets around itself
in the unrolled HU map.

Known answer: the phantom's surface given HU = 10 x height above the tip
(linear in the unrolled plane, so linear interpolation between the corners
of any triangle stays within that triangle's own range of heights), with
every fifth vertex below the cut planted as ``unreliable`` at 3000 HU. Every
cell of a reliable vertex must then read 10 x its height within 10 x the
height span of the tallest triangle; the cells of the planted vertices are
NaN and drawn in the unreliable colour, never on the HU scale.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from ImplantBoneContactLib.classes import UNRELIABLE
from ImplantBoneContactLib.mesh import triangles
from ImplantBoneContactLib.plots.keys import legend_handles
from ImplantBoneContactLib.plots.style import UNRELIABLE_HU_COLOUR, UNRELIABLE_HU_LABEL, hu_to_rgb, rgb, vertex_colours
from ImplantBoneContactLib.plots.unrolled import unrolled_map, unrolled_rgb

pytestmark = pytest.mark.render

HU_PER_MM = 10.0
PLANTED_HU = 3000.0


@pytest.fixture(scope="module")
def planted(phantom_result):
    """The phantom result with HU = 10 x height and every fifth vertex below the cut unreliable at 3000 HU."""
    result = copy.copy(phantom_result)
    v = phantom_result.vertices.copy()
    height = v["height_mm"].to_numpy(dtype=float)
    v["hu"] = HU_PER_MM * height
    below = np.nonzero(v["gruen_zone"].to_numpy() > 0)[0]
    bad = below[::5]
    v.loc[v.index[bad], "hu"] = PLANTED_HU
    v.loc[v.index[bad], "contact_class"] = UNRELIABLE
    result.vertices = v
    unreliable = np.zeros(len(v), dtype=bool)
    unreliable[bad] = True
    return result, unreliable


@pytest.fixture(scope="module")
def umap(planted):
    result, _ = planted
    return unrolled_map(result, width_px=360, height_px=260)


def _tallest_triangle_mm(result) -> float:
    """Height span (mm) of the tallest triangle with every corner between the tip zone and the cut."""
    v = result.vertices
    h = v["height_mm"].to_numpy(dtype=float)
    zone = v["gruen_zone"].to_numpy()
    f = triangles(result.surface)
    inner = ((zone[f] > 0) & (h[f] > result.frame.tip_length_mm)).all(axis=1)
    return float(np.ptp(h[f[inner]], axis=1).max())


def test_cells_of_reliable_vertices_read_the_linear_field_without_the_planted_value(planted, umap):
    result, unreliable = planted
    owner = umap.vertex_id
    height = np.broadcast_to(umap.height_mm[:, None], owner.shape)
    # Between the tip zone (the pole is filled, not interpolated) and the resection line, with a vertex.
    sel = (owner >= 0) & ~umap.above_cut() & (height > result.frame.tip_length_mm + 2.0)
    sel &= ~umap.values(unreliable, fill=True)
    assert sel.sum() > 10000
    span = _tallest_triangle_mm(result)
    assert span < 20.0  # a bound that means something: under 200 HU against the planted 3000
    error = np.abs(umap.hu[sel] - HU_PER_MM * height[sel])
    assert np.isfinite(umap.hu[sel]).all()
    assert error.max() <= HU_PER_MM * span
    # Most cells sit close to the field; the planted value would pull thousands of them hundreds of HU off.
    assert np.median(error) < HU_PER_MM * 0.5 * span


def test_cells_of_unreliable_vertices_have_no_hu_and_the_unreliable_colour(planted, umap):
    result, unreliable = planted
    cells = umap.values(unreliable, fill=False)
    assert cells.sum() > 1000
    assert np.isnan(umap.hu[cells]).all()
    image = unrolled_rgb(result, umap, "hu")
    drawn = cells & ~umap.above_cut()
    assert np.allclose(image[drawn], rgb(UNRELIABLE_HU_COLOUR))
    # The planted value's own colour (the top of the scale) appears nowhere in the map.
    assert not np.all(np.isclose(image, hu_to_rgb(np.array([PLANTED_HU]))[0]), axis=-1).any()


def test_the_3d_hu_colours_and_the_key_name_unreliable_vertices(planted, phantom_result):
    result, unreliable = planted
    colours = vertex_colours(result, "hu", grey_above_cut=False)
    assert np.allclose(colours[unreliable], rgb(UNRELIABLE_HU_COLOUR))
    assert np.allclose(colours[~unreliable], hu_to_rgb(result.vertices["hu"].to_numpy(dtype=float)[~unreliable]))
    assert UNRELIABLE_HU_LABEL in [h.get_label() for h in legend_handles(result, "hu")]
    # A pre-operative result has no unreliable vertex and no such key entry.
    assert UNRELIABLE_HU_LABEL not in [h.get_label() for h in legend_handles(phantom_result, "hu")]
