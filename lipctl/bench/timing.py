"""Timing shared by the in-process speed benchmarks: interleaved rounds, quartiles, machine."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Hashable

from lipctl.bench.kit import machine_info

OBS_DIM, ACT_DIM, BATCH = 11, 3, 256  # the timed SAC updates: Hopper-sized, batch 256


def interleaved_seconds(calls: dict[Hashable, Callable[[], object]], rounds: int, repeats: int
                        ) -> dict[Hashable, list[float]]:
    """Seconds per call of each entry, one figure per round: every round times `repeats` calls
    of every entry, starting one entry later than the round before, so that a slow phase of a
    shared machine hits every entry alike."""
    keys = list(calls)
    seconds: dict[Hashable, list[float]] = {key: [] for key in keys}
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            start = time.perf_counter()
            for _ in range(repeats):
                calls[key]()
            seconds[key].append((time.perf_counter() - start) / repeats)
    return seconds


def quartiles(times: list[float]) -> tuple[float, float, float]:
    """Median, 25th and 75th percentile (all the median for a single figure)."""
    median = statistics.median(times)
    if len(times) < 2:
        return median, median, median
    p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive")
    return median, p25, p75


def machine(load_before: tuple[float, float, float]) -> dict:
    """The machine a timing ran on, with the 1-minute load before and now."""
    return machine_info(load_average_1min=[round(load_before[0], 2),
                                           round(os.getloadavg()[0], 2)])


def timed_updates(calls: dict[Hashable, Callable[[], object]], rounds: int, updates: int,
                  burn_in: int) -> tuple[dict[Hashable, list[float]], dict]:
    """`interleaved_seconds` of the update `calls`, and the fields every update-cost record
    holds: the batch shape, the rounds, the measured wall time and the machine."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    seconds = interleaved_seconds(calls, rounds, updates)
    return seconds, {"batch": BATCH, "obs_dim": OBS_DIM, "act_dim": ACT_DIM, "rounds": rounds,
                     "updates_per_round": updates, "burn_in": burn_in,
                     "measured_seconds": round(time.perf_counter() - started, 1),
                     "machine": machine(load_before)}
