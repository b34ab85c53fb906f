"""Weighted quantiles and zone fractions on inputs small enough to work out by hand.

Each expected value below is derived in the comment next to it from the definition in the docstring of
:func:`weighted_quantile` (the smallest value whose cumulative share of the weight reaches ``q``) or of
:func:`zone_table` (``frac_unclassified``: the sampled area in no class over the sampled area), not taken
from the code's output.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from ImplantBoneContactLib.stats import weighted_quantile, zone_table

VALUES = np.array([30.0, 10.0, 20.0])
WEIGHTS = np.array([2.0, 1.0, 1.0])  # sorted: 10 (1), 20 (1), 30 (2): cumulative shares 0.25, 0.5, 1


def test_integer_and_boolean_quantiles_are_fractions_0_and_1():
    # q = 0: the first value with weight (10); q = 1: the largest (30). Given as integers or booleans.
    for q in ([0, 1], np.array([0, 1], dtype=np.int32), np.array([0, 1], dtype=np.uint8), [False, True]):
        got = weighted_quantile(VALUES, q, WEIGHTS)
        assert got.shape == (2,) and got.dtype == np.float64
        np.testing.assert_array_equal(got, [10.0, 30.0])
    assert weighted_quantile(VALUES, 1, WEIGHTS) == 30.0


def test_integer_weights_give_the_quantiles_of_their_float_copies():
    # Weights 2, 1, 1 as integers: the same cumulative shares 0.25, 0.5, 1. q = 0.5 reaches 0.5 at 20 (the
    # left search takes the first share >= q), q = 0.25 at 10, q = 0.3 first passes at 20, q = 0.75 at 30.
    for w in (np.array([2, 1, 1]), np.array([2, 1, 1], dtype=np.int32), np.array([2, 1, 1], dtype=np.uint16)):
        np.testing.assert_array_equal(weighted_quantile(VALUES, [0.25, 0.3, 0.5, 0.75], w), [10.0, 20.0, 20.0, 30.0])


def test_float32_quantile_is_compared_in_float32():
    # Weights 2 and 3: the first value holds 0.4 of the weight (0.4 in float64). np.float32(0.4) is
    # 0.4000000059604645: compared in float32, where the share 0.4 rounds to that same number, it reaches
    # the first value (1.0); compared in float64 it would pass 0.4 and give the second (2.0).
    v = np.array([1.0, 2.0])
    w = np.array([2.0, 3.0])
    assert weighted_quantile(v, np.float32(0.4), w) == 1.0
    np.testing.assert_array_equal(weighted_quantile(v, np.array([0.4, 0.41], dtype=np.float32), w), [1.0, 2.0])
    # in float64 0.4 is 0.4 as well: the first value
    assert weighted_quantile(v, 0.4, w) == 1.0


def test_a_nan_value_makes_every_quantile_nan_with_the_quantiles_shape():
    got = weighted_quantile(np.array([1.0, np.nan, 3.0]), [0.0, 0.5, 1.0], np.ones(3))
    assert got.shape == (3,) and got.dtype == np.float64
    assert np.isnan(got).all()
    got32 = weighted_quantile(np.array([1.0, np.nan], dtype=np.float32), [0.1, 0.9], np.ones(2))
    assert got32.shape == (2,) and got32.dtype == np.float32 and np.isnan(got32).all()
    # a scalar quantile gives a scalar NaN
    one = weighted_quantile(np.array([np.nan, 2.0]), 0.5, np.ones(2))
    assert np.ndim(one) == 0 and np.isnan(one)
    # integer values have no NaN: the quantiles are values
    np.testing.assert_array_equal(weighted_quantile(np.array([3, 1, 2]), [0.0, 1.0], np.ones(3)), [1, 3])


@pytest.mark.parametrize(
    ("values", "quantiles", "weights", "message"),
    [
        (np.ones((2, 2)), 0.5, np.ones((2, 2)), r"needs 1-D values and weights of one length, got \(2, 2\) and \(2, 2\)"),
        (np.array([]), 0.5, np.array([]), r"needs 1-D values and weights of one length, got \(0,\) and \(0,\)"),
        (np.ones(3), 0.5, np.ones(2), r"needs 1-D values and weights of one length, got \(3,\) and \(2,\)"),
        (np.ones(2), float("nan"), np.ones(2), r"^quantiles must be in the range \[0, 1\]$"),
        (np.ones(2), [0.5, -0.1], np.ones(2), r"^quantiles must be in the range \[0, 1\]$"),
        (np.ones(2), 0.5, np.array([1.0, -1.0]), r"^weights must be non-negative$"),
        (np.ones(2), 0.5, np.zeros(2), r"^weights included NaN or inf, or were all zero$"),
        (np.ones(2), 0.5, np.array([1.0, np.inf]), r"^weights included NaN or inf, or were all zero$"),
    ],
)
def test_bad_input_is_refused_saying_what_is_wrong(values, quantiles, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_quantile(values, quantiles, weights)


def _samples(area, hu, cls, zone):
    return pd.DataFrame({"area_mm2": area, "hu": hu, "contact_class": cls, "gruen_zone": zone})


def test_unclassified_fraction_is_the_sampled_area_in_no_class():
    # Zone 1: 1 mm2 cortical, 3 mm2 in no class (a gap between the bands), 4 mm2 unsampled: of the 4 mm2
    # sampled, 3/4 is unclassified and 1/4 cortical. Zone 2: 0.5 mm2 cancellous only: unclassified 0
    # (a sampled area below 1 mm2 still gives fractions). Zone 3: only unsampled area: NaN fractions.
    s = _samples(
        area=[1.0, 3.0, 4.0, 0.5, 2.0],
        hu=[900.0, 400.0, np.nan, 300.0, np.nan],
        cls=["cortical", "unclassified", "cortical", "cancellous", "cancellous"],
        zone=[1, 1, 1, 2, 3],
    )
    names = ["cancellous", "cortical"]
    t = zone_table(s, names, unclassified_column=True).set_index("zone")
    assert t.loc["1", "frac_unclassified"] == 0.75 and t.loc["1", "frac_cortical"] == 0.25
    assert t.loc["2", "frac_unclassified"] == 0.0 and t.loc["2", "frac_cancellous"] == 1.0
    assert np.isnan(t.loc["3", "frac_unclassified"]) and np.isnan(t.loc["3", "frac_cortical"])
    assert np.isnan(t.loc["4", "frac_unclassified"])  # no area at all
    # all: 4.5 mm2 sampled, 3 of them unclassified
    assert t.loc["all", "frac_unclassified"] == pytest.approx(3.0 / 4.5, rel=1e-15)
    # the fractions add up to 1 wherever something was sampled
    for zone in ("1", "2", "all"):
        assert t.loc[zone, ["frac_cancellous", "frac_cortical", "frac_unclassified"]].sum() == pytest.approx(1.0)
    # the column is there only when asked for, after the class fractions
    assert list(t.columns[-3:]) == ["frac_cancellous", "frac_cortical", "frac_unclassified"]
    assert "frac_unclassified" not in zone_table(s, names).columns
    assert "frac_unclassified" not in zone_table(s, names, unclassified_column=False).columns


@pytest.mark.parametrize("n_triangles", [11, 50, 200, 700])
def test_normals_that_cancel_give_exactly_zero_on_any_number_of_triangles(n_triangles):
    """Corner normals 0, +x, -x cancel at the two samples weighting corners 1 and 2 alike: the field gets
    exactly (0, 0, 0) there, with no warning, on meshes whose normal arrays (44 to 2800 samples) are
    allocated from reused memory, where an unfilled result holds whatever was there before."""
    from ImplantBoneContactLib.stats import triangle_samples

    base = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    pts = np.concatenate([base + [10.0 * k, 0.0, 0.0] for k in range(n_triangles)])
    faces = np.arange(3 * n_triangles).reshape(n_triangles, 3)
    normals = np.tile([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], (n_triangles, 1))
    seen = {}

    def field(p, n):
        seen["n"] = n.copy()
        return p[:, 0]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        triangle_samples(pts, faces, np.zeros(3 * n_triangles), field=field, normals=normals)
    # the four samples of each triangle weight its corners (2/3, 1/6, 1/6), (1/3, 1/3, 1/3), (1/6, 1/6, 2/3),
    # (1/6, 2/3, 1/6): normals 0, 0, -x, +x once made unit length
    expected = np.tile([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], (n_triangles, 1))
    np.testing.assert_array_equal(seen["n"], expected)
