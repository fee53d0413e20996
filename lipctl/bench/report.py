"""Writing benchmark tables, and their statistics over seeds (rliable)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

BOOTSTRAP_SEED = 0  # every interval is reproducible: the same files give the same tables
DEFAULT_REPS = 2000  # rliable's resamples per interval
_reps: ContextVar[int] = ContextVar("bootstrap_reps", default=DEFAULT_REPS)


@contextmanager
def bootstrap_reps(reps: int) -> Iterator[None]:
    """Every interval made inside draws `reps` bootstrap resamples (`lipctl bench
    bootstrap_reps=N`; fewer make coarser intervals, faster)."""
    token = _reps.set(reps)
    try:
        yield
    finally:
        _reps.reset(token)


@contextmanager
def _seeded_bootstrap() -> Iterator[None]:
    """rliable's bootstrap (arch) draws from numpy's global generator: seed it for the call and
    restore the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm(scores: np.ndarray) -> float:
    """rliable's `aggregate_iqm` (scipy's 25% `trim_mean` over all scores): the same arithmetic
    in the same order, to the bit, without scipy's per-call argument handling, which made an
    interval of 2000 bootstrap resamples about five times slower."""
    flat = np.ravel(scores)
    cut = int(0.25 * flat.size)
    kept = np.partition(flat, (cut, flat.size - cut - 1))[cut:flat.size - cut]
    return float(np.mean(kept))


def interval_estimate(values: Sequence[float], aggregate: str = "median"
                      ) -> tuple[float, float, float]:
    """(point, low, high): the median, IQM or mean over seeds of per-seed scores and its
    stratified-bootstrap 95% interval, from rliable (`bootstrap_reps` resamples). The scores are
    one task's runs (an [n, 1] matrix), so the IQM (rliable's 25% trimmed mean of all scores,
    trimming floor(n / 4) from each end: `iqm`) and the mean are over seeds as rliable computes
    them; the median is numpy's over the runs axis, because rliable's `aggregate_median` is the
    median over tasks of per-task means, which for one task is the mean."""
    from rliable import library as rly  # imports pandas and arch: only when tables are made
    from rliable import metrics

    function = {"median": lambda s: np.median(s, axis=0),
                "iqm": lambda s: np.array([iqm(s)]),
                "mean": lambda s: np.array([metrics.aggregate_mean(s)])}[aggregate]
    scores = {"x": np.asarray(values, dtype=np.float64).reshape(-1, 1)}
    with _seeded_bootstrap():
        point, interval = rly.get_interval_estimates(scores, function, reps=_reps.get())
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def probability_of_improvement(x: Sequence[float], y: Sequence[float]
                               ) -> tuple[float, float, float]:
    """(point, low, high): P(X > Y) for per-seed scores of two algorithms (ties count half)
    and its stratified-bootstrap 95% interval, from rliable."""
    from rliable import library as rly
    from rliable import metrics

    pairs = {"x,y": (np.asarray(x, dtype=np.float64).reshape(-1, 1),
                     np.asarray(y, dtype=np.float64).reshape(-1, 1))}
    with _seeded_bootstrap():
        point, interval = rly.get_interval_estimates(pairs, metrics.probability_of_improvement,
                                                     reps=_reps.get())
    low, high = np.ravel(interval["x,y"])
    return float(np.ravel(point["x,y"])[0]), float(low), float(high)
