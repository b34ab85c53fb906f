"""A stem surface that reads air: the model is not where the implant is (outside the body, or in gas).

Known answers on hand-made readings (areas and HU chosen so the share is exact), and the real head CT with the
scanned hip stem, whose coordinates overlap the head's scan: the stem lies in the air around the head.
"""

from __future__ import annotations

import numpy as np
from ibc_helpers import shared_file
from ImplantBoneContactLib import analysis
from ImplantBoneContactLib.cli import main


def _warned(hu, below=None, areas=None):
    hu = np.asarray(hu, dtype=float)
    below = np.ones(hu.size, dtype=bool) if below is None else np.asarray(below)
    areas = np.ones(hu.size) if areas is None else np.asarray(areas, dtype=float)
    return analysis.air_warnings(hu, below, areas)


def test_a_tenth_of_the_area_in_air_warns_with_the_share_and_median():
    """10 vertices of 1 mm2: one at -1000 HU is 10 % of the area, the limit, and warns; the median of
    -1000, 100 x 8 and 400 is 100 HU."""
    w = _warned([-1000.0] + [100.0] * 8 + [400.0])
    assert len(w) == 1
    assert w[0].startswith("10% of the analysed stem surface reads air (below -500 HU; median 100 HU")
    assert "--transform" in w[0] and "--model-space" in w[0]


def test_less_than_a_tenth_or_fat_and_marrow_do_not_warn():
    # 0.99 mm2 of 10 in air: below the limit
    assert _warned([-1000.0] + [100.0] * 9, areas=[0.99] + [1.0] * 9) == []
    # fat (-150) and exactly -500 HU are not air
    assert _warned([-150.0] * 5 + [-500.0] * 5) == []
    assert len(_warned([np.nextafter(-500.0, -np.inf)] * 10)) == 1


def test_only_the_sampled_surface_below_the_cut_counts():
    """Air above the cut (not analysed) and vertices outside the CT (NaN) are left out: 1 of the 4 sampled
    vertices below the cut reads air, 25 %."""
    hu = [-1000.0, -1000.0, -1000.0, np.nan, np.nan, 50.0, 60.0, 70.0]
    below = [False, False, True, True, True, True, True, True]
    w = _warned(hu, below)
    assert len(w) == 1 and w[0].startswith("25% of the analysed stem surface reads air")
    assert _warned(hu[:2] + [np.nan] * 6, below) == []  # nothing sampled below the cut: no share to give


def test_the_area_weights_the_share():
    """Air on 3 of 10 vertices, but their area is 1 mm2 against 27 mm2 of bone: 1 / 28 = 3.6 %, no warning;
    the other way round, 27 / 28."""
    hu = [-900.0] * 3 + [300.0] * 7
    assert _warned(hu, areas=[1 / 3] * 3 + [27 / 7] * 7) == []
    w = _warned(hu, areas=[9.0] * 3 + [1 / 7] * 7)
    assert len(w) == 1 and w[0].startswith("96% of")


def test_a_hip_stem_laid_in_a_head_ct_is_said_to_read_air(tmp_path, capsys):
    ct = shared_file("head_ct.nii.gz")
    stem = shared_file("hip_implant_surface_scan.stl")
    rc = main(["analyze", "--ct", str(ct), "--model", str(stem), "--out", str(tmp_path / "out"), "--points", "3000",
               "--no-pictures", "--quiet"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "100% of the analysed stem surface reads air" in err


def test_the_phantom_stem_in_its_femur_does_not_read_air(phantom_result):
    assert not any("reads air" in w for w in phantom_result.warnings)
