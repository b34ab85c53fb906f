"""The library on Slicer 5.8's Python 3.9 and numpy 1.26 as well as on numpy 2.

``weighted_quantile`` replaces numpy 2's ``quantile(weights=, method="inverted_cdf")``: on
numpy 2 it is checked against numpy bit for bit; on any numpy against the quantile of the
values repeated by integer weights (an independent definition). ``make test`` runs this
file (with the rest of the library tests) in a second environment on Python 3.9 + numpy 1.26.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ImplantBoneContactLib.stats import weighted_quantile, weighted_stats

NUMPY_HAS_WEIGHTS = int(np.__version__.split(".")[0]) >= 2

finite = st.floats(-5000, 30000, allow_nan=False, allow_infinity=False, width=64)
# Few distinct values, so that ties (many equal HU, as in an integer CT) are common.
tied = st.sampled_from([-1000.0, -200.0, 0.0, 0.0, 150.5, 400.0, 1200.0, 3071.0])
quantile_lists = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=7)


@st.composite
def values_and_weights(draw):
    n = draw(st.integers(1, 60))
    values = draw(hnp.arrays(np.float64, n, elements=st.one_of(finite, tied)))
    weights = draw(hnp.arrays(np.float64, n, elements=st.one_of(
        st.just(0.0), st.floats(1e-6, 50.0, allow_nan=False), st.sampled_from([0.25, 0.5, 1.0, 1.4400735]))))
    if not np.any(weights > 0):
        weights[draw(st.integers(0, n - 1))] = 1.0
    return values, weights


@pytest.mark.skipif(not NUMPY_HAS_WEIGHTS, reason=f"numpy {np.__version__} has no quantile(weights=) to compare with")
@settings(max_examples=400, deadline=None)
@given(values_and_weights(), quantile_lists)
def test_weighted_quantile_equals_numpy2(vw, quantiles):
    values, weights = vw
    ours = weighted_quantile(values, quantiles, weights)
    theirs = np.quantile(values, quantiles, weights=weights, method="inverted_cdf")
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(not NUMPY_HAS_WEIGHTS, reason=f"numpy {np.__version__} has no quantile(weights=) to compare with")
def test_weighted_quantile_equals_numpy2_at_the_edges():
    values = np.array([5.0, 1.0, 3.0, 3.0, 9.0])
    for weights in ([0.0, 0.0, 1.0, 2.0, 0.0], [1, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.2, 0.2]):
        for q in (0.0, 0.2, 0.4, 0.5, 0.6, 1.0, [0.0, 1.0], np.float32(0.4)):
            expected = np.quantile(values, q, weights=np.asarray(weights, dtype=float), method="inverted_cdf")
            np.testing.assert_array_equal(weighted_quantile(values, q, np.asarray(weights, dtype=float)), expected)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(finite, tied), min_size=1, max_size=40), st.data(), quantile_lists)
def test_weighted_quantile_with_integer_weights_is_the_quantile_of_repeated_values(values, data, quantiles):
    values = np.asarray(values)
    counts = np.asarray(data.draw(st.lists(st.integers(0, 6), min_size=len(values), max_size=len(values))))
    if counts.sum() == 0:
        counts[0] = 1
    repeated = np.sort(np.repeat(values, counts))
    # Independent definition: the smallest value with at least q of the items at or below it.
    n = repeated.size
    expected = [repeated[max(int(np.ceil(q * n)) - 1, 0)] for q in quantiles]
    ours = weighted_quantile(values, quantiles, counts.astype(float))
    # ceil(q * n) in floating point can differ from the cumulative-sum comparison by one item
    # only when q * n is within rounding of an integer; the two neighbours are then both right.
    for q, got, want in zip(quantiles, ours, expected):
        k = q * n
        if abs(k - round(k)) < 1e-9:
            lo = repeated[max(int(round(k)) - 1, 0)]
            hi = repeated[min(int(round(k)), n - 1)]
            assert got in (lo, hi)
        else:
            assert got == want


def test_weighted_quantile_refuses_bad_weights():
    with pytest.raises(ValueError):
        weighted_quantile(np.array([1.0, 2.0]), 0.5, np.array([0.0, 0.0]))
    with pytest.raises(ValueError):
        weighted_quantile(np.array([1.0, 2.0]), 0.5, np.array([-1.0, 2.0]))
    with pytest.raises(ValueError):
        weighted_quantile(np.array([1.0, 2.0]), 1.5, np.array([1.0, 1.0]))
    with pytest.raises(ValueError):
        weighted_quantile(np.array([1.0, 2.0]), 0.5, np.array([1.0]))


def test_weighted_stats_median_of_a_two_valued_surface():
    # 3 mm^2 at 100 HU and 1 mm^2 at 900 HU: the median is 100, the 95th percentile 900.
    s = weighted_stats(np.array([900.0, 100.0]), np.array([1.0, 3.0]))
    assert s["hu_median"] == 100.0 and s["hu_p95"] == 900.0 and s["hu_p05"] == 100.0
    assert s["hu_mean"] == pytest.approx(300.0)
