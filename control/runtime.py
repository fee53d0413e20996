"""A controller runtime: any Controller against any Plant on a fixed sample period, with a
Lipschitz gate, measurement checks, a compute deadline, fallbacks and a crash-safe step log.

Each step reads the plant, checks the measurement, calls the controller (timed), checks its
answer and writes one action. When anything fails (the plant read raises, the measurement is
stale, non-finite or out of range, the solver fails (SolveFailed), the controller raises
anything else, overruns its deadline or answers a non-finite action) the step applies the
fallback instead and logs an event naming the cause:
- "hold": the last applied action again (`initial_action` before the first one);
- a backup Controller: its action on the last valid measurement (hold when it cannot act).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from lipctl.control.loop import Controller
from lipctl.control.mpc import SolveFailed
from lipctl.lipschitz.certificates import Certificate

HOLD = "hold"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # end a run after the current step


class DeploymentRefused(RuntimeError):
    """The controller may not be deployed (the Lipschitz gate); the message is one line."""


@runtime_checkable
class Plant(Protocol):
    """A plant the runtime talks to, in-process or over a network.

    read(): the latest measurement and its timestamp in seconds on the plant's own clock; the
    timestamp advances only when the plant has a new measurement, and never goes backwards.
    write(action): apply an input (held by the plant until the next write).
    reset(): start a new run; close(): release connections and resources.
    """

    def read(self) -> tuple[np.ndarray, float]: ...

    def write(self, action: np.ndarray) -> None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class GymPlant:
    """A gymnasium env as a Plant: each write steps the env, and the plant's clock advances by
    `period_s` simulated seconds per step. `info` holds the env's latest info dict."""

    def __init__(self, env: gym.Env, period_s: float, seed: int | None = None,
                 options: dict[str, Any] | None = None):
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.env, self.period_s, self.seed, self.options = env, period_s, seed, options
        self.info: dict[str, Any] = {}
        self._observation: np.ndarray | None = None
        self._time = 0.0

    def reset(self) -> None:
        self._observation, self.info = self.env.reset(seed=self.seed, options=self.options)
        self._time = 0.0

    def read(self) -> tuple[np.ndarray, float]:
        if self._observation is None:
            raise RuntimeError("GymPlant.read before reset")
        return np.asarray(self._observation, dtype=np.float64).copy(), self._time

    def write(self, action: np.ndarray) -> None:
        self._observation, _, _, _, self.info = self.env.step(action)
        self._time += self.period_s

    def close(self) -> None:
        self.env.close()


def lipschitz_gate(certificate: Certificate | Mapping[str, Any] | None,
                   lipschitz_max: float) -> Certificate:
    """The certificate, if its upper bound is <= lipschitz_max; DeploymentRefused otherwise."""
    if certificate is None:
        raise DeploymentRefused(f"deployment refused: the controller has no Lipschitz "
                                f"certificate and lipschitz_max={lipschitz_max:g} is set")
    if isinstance(certificate, Mapping):
        certificate = Certificate.from_dict(dict(certificate))
    if not certificate.upper <= lipschitz_max:
        raise DeploymentRefused(f"deployment refused: certified Lipschitz upper bound "
                                f"{certificate.upper:.4g} ({certificate.method}) exceeds "
                                f"lipschitz_max={lipschitz_max:g}")
    return certificate


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "max": float(np.max(values))}


def _json_floats(values: np.ndarray | None) -> list[float | str] | None:
    """Floats for a strict-JSON log line: non-finite values as the strings "nan", "inf"."""
    if values is None:
        return None
    return [v if math.isfinite(v) else str(v) for v in np.asarray(values, float).ravel().tolist()]


class Runtime:
    """Runs `controller` against `plant` every `period_s` seconds for `max_steps` steps.

    lipschitz_max: refuse deployment (DeploymentRefused) unless `certificate` (a Certificate or
      its dict) has upper <= lipschitz_max.
    measurement_range: (low, high), scalars or arrays; a measurement outside is invalid.
    stale_after_s: a measurement is stale once its timestamp has not advanced for more than
      this many seconds of runtime clock (None: stale when not advanced since the last step).
    fallback: "hold" or a backup Controller (see the module docstring).
    deadline_s: longest controller call whose answer is used (None: the period); a longer
      call is not interrupted, its answer is discarded and the fallback applied.
    realtime: start each step on the period's schedule (a step that starts late shifts the
      schedule: no burst of catch-up steps); otherwise run as fast as possible, with the
      runtime clock (log "time") advancing by `period_s` per step.
    The log at `log_path` gets one JSON line per step, appended, flushed and fsync'd.
    """

    def __init__(self, controller: Controller, plant: Plant, period_s: float, max_steps: int,
                 log_path: str | Path, *, initial_action: Sequence[float] | np.ndarray,
                 lipschitz_max: float | None = None,
                 certificate: Certificate | Mapping[str, Any] | None = None,
                 measurement_range: tuple[Any, Any] | None = None,
                 stale_after_s: float | None = None,
                 fallback: str | Controller = HOLD, deadline_s: float | None = None,
                 realtime: bool = False):
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if fallback != HOLD and not isinstance(fallback, Controller):
            raise ValueError(f"fallback must be {HOLD!r} or a Controller, got {fallback!r}")
        for name, value in (("stale_after_s", stale_after_s), ("deadline_s", deadline_s)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if lipschitz_max is not None and not lipschitz_max > 0:
            raise ValueError(f"lipschitz_max must be > 0, got {lipschitz_max}")
        self.certificate = (None if lipschitz_max is None
                            else lipschitz_gate(certificate, lipschitz_max))
        self.controller, self.plant = controller, plant
        self.period_s, self.max_steps, self.log_path = period_s, max_steps, Path(log_path)
        self.initial_action = np.asarray(initial_action, dtype=np.float64)
        self.range = (None if measurement_range is None
                      else tuple(np.asarray(b, dtype=np.float64) for b in measurement_range))
        self.stale_after_s = stale_after_s or 0.0
        self.backup = fallback if isinstance(fallback, Controller) else None
        self.deadline_s = period_s if deadline_s is None else deadline_s
        self.realtime = realtime
        self._clear()

    def _clear(self) -> None:
        """Forget the last run: its records and the state the checks and fallbacks keep."""
        self.records: list[dict[str, Any]] = []
        self._step_starts: list[float] = []
        self._held, self._valid = self.initial_action.copy(), None
        self._newest: float | None = None  # newest plant timestamp seen ...
        self._fresh_at = 0.0  # ... and the runtime clock when it was first seen

    # -- one step -------------------------------------------------------------------------

    def _check(self, measurement: np.ndarray, timestamp: float, now: float) -> str | None:
        """The measurement's fault, or None if it is valid; tracks the newest timestamp."""
        if math.isfinite(timestamp) and (self._newest is None or timestamp > self._newest):
            self._newest, self._fresh_at = timestamp, now
        elif now - self._fresh_at > self.stale_after_s:
            return "stale_measurement"
        if not np.all(np.isfinite(measurement)):
            return "non_finite_measurement"
        if self.range is not None and not np.all((self.range[0] <= measurement)
                                                 & (measurement <= self.range[1])):
            return "out_of_range"
        return None

    def _act(self, measurement: np.ndarray) -> tuple[np.ndarray | None, float, str | None]:
        """The controller's action (None on a fault), its call time and the fault."""
        start = time.perf_counter()
        try:
            action = np.asarray(self.controller.act(measurement), dtype=np.float64)
        except SolveFailed as error:
            return None, time.perf_counter() - start, f"solver_failure: {error}"
        except Exception as error:  # any controller failure must fall back, not stop the loop
            return None, time.perf_counter() - start, f"controller_error: {error!r}"
        solve_time = time.perf_counter() - start
        if solve_time > self.deadline_s:
            return None, solve_time, "deadline_miss"
        if action.shape != self.initial_action.shape or not np.all(np.isfinite(action)):
            return None, solve_time, f"invalid_action: {action.tolist()}"
        return action, solve_time, None

    def _fallback_action(self, events: list[str]) -> np.ndarray:
        if self.backup is not None and self._valid is not None:
            try:
                action = np.asarray(self.backup.act(self._valid), dtype=np.float64)
                if action.shape == self._held.shape and np.all(np.isfinite(action)):
                    return action
                events.append(f"backup_invalid_action: {action.tolist()}")
            except Exception as error:  # a failing backup degrades to hold
                events.append(f"backup_error: {error!r}")
        return self._held

    def _step(self, step: int, now: float) -> dict[str, Any]:
        events: list[str] = []  # "cause" or "cause: detail"; the first is the fallback's cause
        measurement, timestamp, action, solve_time = None, None, None, None
        try:
            measurement, timestamp = self.plant.read()
            measurement, timestamp = np.asarray(measurement, dtype=np.float64), float(timestamp)
            fault = self._check(measurement, timestamp, now)
        except Exception as error:  # a lost connection is a fault, not a crash
            fault = f"read_error: {error!r}"
        if fault is None:
            self._valid = measurement
            action, solve_time, fault = self._act(measurement)
        cause = None
        if fault is not None:
            events.append(fault)
            cause = fault.split(":")[0]
            action = self._fallback_action(events)
        try:
            self.plant.write(action)
            self._held = action
        except Exception as error:  # the plant keeps its last input; try again next step
            events.append(f"write_error: {error!r}")
        return {"step": step, "time": now, "timestamp": timestamp,
                "measurement": _json_floats(measurement), "action": _json_floats(action),
                "solve_time": solve_time, "fallback": cause, "events": events}

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """Reset controller, backup and plant, run max_steps steps (fewer once `stop` is set,
        e.g. by a signal handler: the step in progress finishes and is logged), return
        `summary()`."""
        stop = stop or threading.Event()
        self.controller.reset()
        if self.backup is not None:
            self.backup.reset()
        self.plant.reset()
        self._clear()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        start = next_tick = time.monotonic()
        with open(self.log_path, "a", encoding="utf-8") as log:
            for step in range(self.max_steps):
                if self.realtime:
                    wait = next_tick - time.monotonic()
                    if wait > 0:
                        stop.wait(wait)
                    else:  # late: shift the schedule
                        next_tick -= wait
                    next_tick += self.period_s
                if stop.is_set():
                    break
                self._step_starts.append(time.perf_counter())
                now = time.monotonic() - start if self.realtime else step * self.period_s
                record = self._step(step, now)
                log.write(json.dumps(record, allow_nan=False) + "\n")
                log.flush()
                os.fsync(log.fileno())
                self.records.append(record)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """Steps, deadline misses, fallbacks by cause, failed plant reads and writes (steps
        whose read or write raised), period and solve-time percentiles (s)."""
        causes = Counter(r["fallback"] for r in self.records if r["fallback"] is not None)
        failed = Counter(event.split(":")[0] for r in self.records for event in r["events"])
        return {
            "steps": len(self.records),
            "deadline_misses": causes.get("deadline_miss", 0),
            "fallbacks": sum(causes.values()),
            "fallbacks_by_cause": dict(causes),
            "failed_reads": failed.get("read_error", 0),
            "failed_writes": failed.get("write_error", 0),
            "period_s": self.period_s,
            "deadline_s": self.deadline_s,
            "period": _percentiles(np.diff(self._step_starts).tolist()),
            "solve_time": _percentiles([r["solve_time"] for r in self.records
                                        if r["solve_time"] is not None]),
        }


def run_until_signalled(runtime: Runtime) -> tuple[dict[str, Any], int | None]:
    """`runtime.run()` with SIGINT and SIGTERM ending it after the current step (their handlers
    restored afterwards): its summary with `interrupted`, and the signal that stopped it (None
    if it ran to the end). Call from the main thread."""
    stop, received = threading.Event(), []

    def request_stop(signum: int, _: object) -> None:
        received.append(signum)
        stop.set()

    handlers = {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}
    try:
        summary = runtime.run(stop)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return summary | {"interrupted": bool(received)}, received[0] if received else None


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1e3 * seconds:.1f} ms"


def describe_summary(summary: Mapping[str, Any]) -> str:
    """A deployment's summary as one line: steps, deadline misses, fallbacks by cause, solve
    and period percentiles, the plant link's failures, the final measurement's place."""
    solve, period, ms = summary["solve_time"], summary["period"], _ms
    causes = ", ".join(f"{k} {v}" for k, v in sorted(summary["fallbacks_by_cause"].items()))
    line = (f"{summary['steps']} steps of {summary['period_s']:g} s; deadline misses "
            f"{summary['deadline_misses']}; fallbacks {summary['fallbacks']}"
            + (f" ({causes})" if causes else "")
            + f"; solve p50 {ms(solve['p50'])}, p95 {ms(solve['p95'])}, max {ms(solve['max'])}"
            + f"; measured period p50 {ms(period['p50'])}, max {ms(period['max'])}")
    failures = {"failed reads": summary["failed_reads"], "failed writes": summary["failed_writes"],
                "reconnects": summary.get("reconnects")}
    if any(failures.values()):
        line += "; " + ", ".join(f"{k} {v}" for k, v in failures.items() if v is not None)
    if "final_in_target" in summary:
        line += f"; final measurement in the target region: {summary['final_in_target']}"
    return line + ("; interrupted" if summary.get("interrupted") else "")
