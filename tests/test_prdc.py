"""k-NN precision, recall, density and coverage against the authors' `prdc` package (NAVER, Naeem et
al. 2020) on the same features: both argument orders, and the ball boundary (prdc: strict d < r)."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from prdc import compute_prdc  # the authors' package (odebench[test])

from odebench.metrics.prdc import precision_recall_density_coverage, prdc

KINDS = ("precision", "recall", "density", "coverage")


def reference_prdc(real, fake, k):
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        return compute_prdc(real, fake, k)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_equal_to_prdc_package_in_both_argument_orders(k):
    rng = np.random.default_rng(k)
    real = rng.standard_normal((180, 12))
    fake = rng.standard_normal((140, 12)) * 1.2 + 0.3
    ours = prdc(fake, real, "real", "test features", k=k)  # samples first, reference second
    theirs = reference_prdc(real, fake, k)  # prdc: real first, fake second
    for kind in KINDS:
        assert ours[kind].value == pytest.approx(float(theirs[kind]), abs=1e-12), kind
    swapped = prdc(real, fake, "fake", "test features", k=k)
    theirs_swapped = reference_prdc(fake, real, k)
    for kind in KINDS:
        assert swapped[kind].value == pytest.approx(float(theirs_swapped[kind]), abs=1e-12), kind
    # not a vacuous comparison: the numbers are inside (0, 1) and density is not coverage
    assert all(0 < ours[kind].value < 1 for kind in ("precision", "recall", "coverage"))
    assert ours["density"].value != ours["coverage"].value
    # chunking does not change anything
    tiny = precision_recall_density_coverage(real, fake, k, chunk_bytes=8 * 7)
    for kind in KINDS:
        assert tiny[kind].mean() == pytest.approx(ours[kind].value, abs=1e-12)


def test_ball_boundary_open_matches_prdc_closed_is_stated():
    # k = 1 on a line. real -40,0,1,2,3,30,33 -> radii 40,1,1,1,1,3,3; fake 4,20,37 -> radii 16,16,17.
    # fake 4 is exactly 1 from real 3 (= its radius): inside the closed ball, outside the open one.
    real = np.array([[-40.0, 0], [0, 0], [1, 0], [2, 0], [3, 0], [30, 0], [33, 0]])
    fake = np.array([[4.0, 0], [20, 0], [37, 0]])
    closed = prdc(fake, real, "hand", "line", k=1)
    opened = prdc(fake, real, "hand", "line", k=1, boundary="open")
    theirs = reference_prdc(real, fake, 1)
    for kind in KINDS:
        assert opened[kind].value == pytest.approx(float(theirs[kind])), kind
    # by hand. closed: fake 4 in real 3's ball only (1 ball) -> precision 1/3, density 1/3;
    # coverage: real 3's ball holds fake 4 -> 1/7. open: no fake point in any real ball -> 0, 0, 0.
    # recall (fake radii 16, 16, 17; no ties): every real point but -40 -> 6/7 either way.
    assert (closed["precision"].value, closed["density"].value, closed["coverage"].value) == pytest.approx((1 / 3, 1 / 3, 1 / 7))
    assert (opened["precision"].value, opened["density"].value, opened["coverage"].value) == (0.0, 0.0, 0.0)
    assert closed["recall"].value == opened["recall"].value == pytest.approx(6 / 7)
    assert "d <= r inside" in closed["density"].identity and "d < r inside" in opened["density"].identity
    with pytest.raises(ValueError, match="boundary"):
        prdc(fake, real, "hand", "line", k=1, boundary="half")


def test_density_about_one_and_coverage_sees_a_missing_mode():
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.standard_normal((200, 2)) * 0.1, rng.standard_normal((200, 2)) * 0.1 + 5])
    one_mode = rng.standard_normal((400, 2)) * 0.1  # every sample in the first mode
    m = prdc(one_mode, real, "two modes", "2-D", k=3)
    assert m["coverage"].value == pytest.approx(0.5, abs=0.06)  # half of the real points are never reached
    assert m["precision"].value > 0.9 and m["recall"].value < 0.55
    # samples drawn like the real points in their mode sit in about k real balls each: density about 1
    assert m["density"].value == pytest.approx(1.0, abs=0.15)
    assert m["density"].higher_is_better and m["coverage"].higher_is_better and m["density"].n == 400
