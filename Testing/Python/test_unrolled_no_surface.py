"""The unrolled maps name their white cells (no surface at that azimuth and height) in the key, when there are enough.

Known answers: the phantom stem is a tube around its axis, so its map has no
such cells and no such key entry; planting a block of cells without a
surface (as a nail's notches leave) must bring the entry, a few stray
cells must not.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from ImplantBoneContactLib.plots.keys import NO_SURFACE_LABEL
from ImplantBoneContactLib.plots.unrolled import NO_SURFACE_MIN_SHARE, has_no_surface_cells, unrolled_figure, unrolled_map

pytestmark = pytest.mark.render


@pytest.fixture(scope="module")
def umap(phantom_result):
    return unrolled_map(phantom_result)


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _below_cut(m) -> np.ndarray:
    return ~m.above_cut() & (m.height_mm[:, None] > 0.0)


def _with_hole(m, share: float):
    """A copy of the map whose first ``share`` of the cells below the cut (row order) have no surface."""
    holed = copy.deepcopy(m)
    rows, cols = np.nonzero(_below_cut(holed))
    k = int(np.ceil(share * rows.size))
    holed.vertex_id[rows[:k], cols[:k]] = -1
    return holed


def test_a_tube_shaped_stem_has_no_white_cells_and_no_key_entry(phantom_result, umap):
    assert not (umap.vertex_id[_below_cut(umap)] < 0).any()
    assert not has_no_surface_cells(umap)
    for kind in ("hu", "class"):
        assert NO_SURFACE_LABEL not in _legend_texts(unrolled_figure(phantom_result, kind, umap))


def test_a_block_without_surface_is_named_in_both_keys(phantom_result, umap):
    holed = _with_hole(umap, 0.05)
    assert has_no_surface_cells(holed)
    for kind in ("hu", "class"):
        assert NO_SURFACE_LABEL in _legend_texts(unrolled_figure(phantom_result, kind, holed))


def test_a_few_stray_cells_are_not_worth_a_key_entry(umap):
    assert not has_no_surface_cells(_with_hole(umap, 0.5 * NO_SURFACE_MIN_SHARE))
    assert has_no_surface_cells(_with_hole(umap, 2.0 * NO_SURFACE_MIN_SHARE))
