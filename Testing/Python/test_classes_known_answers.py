"""The HU ranges no contact class covers (``band_gaps``), worked out by hand from the class bands.

A sample whose HU falls in such a gap is ``unclassified``; the metal level covers everything above it.
"""

from __future__ import annotations

import math

import pytest
from ImplantBoneContactLib.classes import band_gaps, parse_classes

INF = math.inf


@pytest.mark.parametrize(
    "spec, metal, gaps",
    [
        # below the first band and between the last band and the metal level
        ("a:-200:100,b:100:2000", 2500.0, [(-INF, -200.0), (2000.0, 2500.0)]),
        # no metal level: everything above the last band is a gap
        ("a:-inf:100,b:100:2000", None, [(2000.0, INF)]),
        # bands that touch leave no gap; a band ending exactly at the metal level neither
        ("a:-inf:100,b:100:inf", None, []),
        ("a:-inf:2500", 2500.0, []),
        # several gaps
        ("a:-200:500,c:600:2000", 2500.0, [(-INF, -200.0), (500.0, 600.0), (2000.0, 2500.0)]),
        # a band above the metal level: the gap below it ends at the metal level, and nothing above the metal
        # level is a gap
        ("a:-inf:100,b:3000:4000", 2500.0, [(100.0, 2500.0)]),
        ("a:-inf:100,b:200:300", 150.0, [(100.0, 150.0)]),
        # covered up to the metal level exactly, then a band above it: no empty gap (2500, 2500)
        ("a:-inf:2500,b:3000:4000", 2500.0, []),
    ],
)
def test_band_gaps_by_hand(spec, metal, gaps):
    """Catches: a touching band counted as a gap, a gap missed, the metal level not capping a gap, a gap
    reported above the metal level. (``parse_classes`` refuses bands out of order or overlapping.)"""
    assert band_gaps(parse_classes(spec), metal) == gaps


def test_default_classes_leave_no_gap_and_the_default_metal_level_is_used():
    """The default metal level is 2500 HU (README, --metal-hu)."""
    assert band_gaps(parse_classes("default")) == []
    assert band_gaps(parse_classes("a:-inf:100")) == [(100.0, 2500.0)]
