"""Benchmark statistics over seeds, from rliable."""

from __future__ import annotations

import numpy as np
import pytest

from lipctl.bench.report import (
    DEFAULT_REPS,
    _seeded_bootstrap,
    bootstrap_reps,
    interval_estimate,
    iqm,
    probability_of_improvement,
)


@pytest.mark.slow
@pytest.mark.parametrize("aggregate,expected", [("median", 5.5), ("iqm", 5.5), ("mean", 5.5)])
def test_interval_estimate_brackets_the_aggregate(aggregate, expected):
    point, low, high = interval_estimate(np.arange(1.0, 11.0), aggregate)
    assert point == pytest.approx(expected) and low < point < high
    assert 1 <= low and high <= 10


def test_iqm_is_rliables_to_the_bit_and_so_is_its_interval():
    from rliable import library as rly
    from rliable import metrics

    rng = np.random.default_rng(0)
    for n in range(1, 13):
        scores = rng.normal(size=(n, 1)) * 10.0 ** rng.integers(-3, 4)
        assert iqm(scores) == metrics.aggregate_iqm(scores), n
    scores = rng.normal(size=(5, 1))
    with _seeded_bootstrap():
        point, interval = rly.get_interval_estimates(
            {"x": scores}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=2000)
    assert interval_estimate(scores.ravel(), "iqm") == (point["x"][0], *interval["x"][:, 0])


def test_bootstrap_reps_sets_the_resamples_of_every_interval_inside_it():
    from rliable import library as rly
    from rliable import metrics

    scores = np.random.default_rng(1).normal(size=(6, 1))
    with _seeded_bootstrap():
        _, interval = rly.get_interval_estimates(
            {"x": scores}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=50)
    default = interval_estimate(scores.ravel(), "iqm")
    with bootstrap_reps(50):
        assert interval_estimate(scores.ravel(), "iqm")[1:] == tuple(interval["x"][:, 0])
    assert interval_estimate(scores.ravel(), "iqm") == default  # back to DEFAULT_REPS after
    assert default[1:] != tuple(interval["x"][:, 0]) and DEFAULT_REPS == 2000


def test_iqm_ignores_the_outer_quartiles():
    values = [0.0, 0.0, 5.0, 5.0, 5.0, 5.0, 100.0, 100.0]
    assert interval_estimate(values, "iqm")[0] == pytest.approx(5.0)
    assert interval_estimate([3.0] * 6)[1:] == (3.0, 3.0)


def test_median_is_over_seeds_not_the_mean():
    # one heavy-tailed seed: the median of [1, 2, 3, 4, 1000] is 3, its mean 202
    point, low, high = interval_estimate([4.0, 1000.0, 2.0, 3.0, 1.0], "median")
    assert point == pytest.approx(3.0)
    assert 1.0 <= low <= point <= high <= 1000.0
    assert interval_estimate([1.0, 2.0, 3.0, 4.0, 1000.0, 2000.0], "median")[0] == 3.5
    assert interval_estimate([1.0, 2.0, 3.0, 4.0, 1000.0], "mean")[0] == pytest.approx(202.0)


@pytest.mark.slow
def test_iqm_trims_a_whole_number_of_seeds_from_each_end():
    # rliable's IQM is scipy's trim_mean(0.25): floor(n / 4) scores cut from each end, no
    # fractional weights. n = 5 cuts 1: mean(2, 3, 4) = 3.
    point, low, high = interval_estimate([1.0, 2.0, 3.0, 4.0, 1000.0], "iqm")
    assert point == pytest.approx(3.0) and low <= point <= high
    # n = 6 cuts 1 (not 1.5): mean(1, 2, 10, 20) = 8.25, where half-weighting the edges would
    # give (0.5 + 2 + 10 + 10) / 3 = 7.5
    assert interval_estimate([100.0, 0.0, 20.0, 1.0, 10.0, 2.0], "iqm")[0] == pytest.approx(8.25)


@pytest.mark.slow
def test_probability_of_improvement_of_seeds():
    point, low, high = probability_of_improvement([5.0, 6.0, 7.0], [1.0, 2.0, 3.0])
    assert (point, low, high) == (1.0, 1.0, 1.0)
    assert probability_of_improvement([1.0, 2.0], [1.0, 2.0])[0] == pytest.approx(0.5)


@pytest.mark.slow
def test_intervals_are_reproducible():
    values = [1.0, 5.0, 2.0, 8.0, 3.0, 9.0, 4.0]
    assert interval_estimate(values, "iqm") == interval_estimate(values, "iqm")
