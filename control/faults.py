"""Fault injection for tests: a Plant that drops, delays and corrupts measurements, and a
Controller that fails or runs slow, on chosen steps (0-based; any container of ints)."""

from __future__ import annotations

import time
from collections.abc import Container

import numpy as np

from lipctl.control.loop import Controller
from lipctl.control.mpc import SolveFailed
from lipctl.control.runtime import Plant

NONE: frozenset[int] = frozenset()


class FaultyPlant:
    """Wraps a Plant; read number k (since reset) is faulty when k is in:
    - drop_steps: no new measurement, the reading delivered last time again (stale timestamp);
    - delay_steps: the inner plant's previous reading, with its older timestamp;
    - nan_steps: the measurement as all NaN;
    - spike_steps: the measurement plus `spike`;
    - disconnect_steps: read raises ConnectionError (the inner plant is not read).
    Read 0 has no earlier reading, so it cannot be dropped or delayed."""

    def __init__(self, plant: Plant, drop_steps: Container[int] = NONE,
                 delay_steps: Container[int] = NONE, nan_steps: Container[int] = NONE,
                 spike_steps: Container[int] = NONE, spike: float | np.ndarray = 1e6,
                 disconnect_steps: Container[int] = NONE):
        if 0 in drop_steps or 0 in delay_steps:
            raise ValueError("read 0 cannot be dropped or delayed: there is no earlier reading")
        self.plant, self.spike = plant, spike
        self.drop_steps, self.delay_steps = drop_steps, delay_steps
        self.nan_steps, self.spike_steps = nan_steps, spike_steps
        self.disconnect_steps = disconnect_steps
        self._restart()

    def _restart(self) -> None:
        """Start counting reads from 0 and forget earlier readings."""
        self.reads = 0
        self._delivered: tuple[np.ndarray, float] | None = None
        self._previous: tuple[np.ndarray, float] | None = None

    def read(self) -> tuple[np.ndarray, float]:
        k = self.reads
        self.reads += 1
        if k in self.disconnect_steps:
            raise ConnectionError(f"injected disconnect at read {k}")
        current = self.plant.read()
        previous, self._previous = self._previous, current
        if k in self.drop_steps:
            measurement, timestamp = self._delivered
        elif k in self.delay_steps:
            measurement, timestamp = previous
        else:
            measurement, timestamp = current
        measurement = np.array(measurement, dtype=np.float64)
        if k in self.nan_steps:
            measurement[:] = np.nan
        if k in self.spike_steps:
            measurement = measurement + self.spike
        self._delivered = (measurement, timestamp)
        return measurement.copy(), timestamp

    def write(self, action: np.ndarray) -> None:
        self.plant.write(action)

    def reset(self) -> None:
        self.plant.reset()
        self._restart()

    def close(self) -> None:
        self.plant.close()


class FaultyController:
    """Wraps a Controller; its act call number k (since reset) raises SolveFailed (a solver
    failure) when k is in fail_steps, and sleeps `slow_s` before answering when k is in
    slow_steps."""

    def __init__(self, controller: Controller, fail_steps: Container[int] = NONE,
                 slow_steps: Container[int] = NONE, slow_s: float = 0.0):
        self.controller, self.fail_steps, self.slow_steps, self.slow_s = (
            controller, fail_steps, slow_steps, slow_s)
        self.calls = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        k = self.calls
        self.calls += 1
        if k in self.fail_steps:
            raise SolveFailed(f"injected solver failure at call {k}")
        if k in self.slow_steps:
            time.sleep(self.slow_s)
        return self.controller.act(observation)

    def reset(self) -> None:
        self.controller.reset()
        self.calls = 0
