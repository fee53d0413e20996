"""Closed-loop metrics of a process episode: reaching the target, cost, bounds and solver figures.

Reaching is judged on the true states the plant reports in info["state"] (recorded by the
closed-loop runner), not on observations, which are noisy under measurement noise. The cost comes
from the rewards, which the plant computes on its true state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lipctl.control.loop import Trajectory
from lipctl.control.mpc import SolveStats
from lipctl.envs.process import Process


@dataclass(frozen=True)
class ProcessMetrics:
    """reached_step: steps until the state enters the target ellipse around the reference and
    stays in it to the end (None if it ends outside); integrated_cost: sampling period x summed
    stage cost; bound_violations: steps whose commanded input left the bounds;
    state_violations: steps whose true state left the process's state box; solve_ms_*: MPC solve
    time per step (NaN without stats); status_counts: solver return statuses; fallbacks: steps
    that applied a fallback input."""

    reached_step: int | None
    integrated_cost: float
    bound_violations: int
    state_violations: int
    solve_ms_median: float
    solve_ms_p95: float
    status_counts: dict[str, int]
    fallbacks: int


def reached_step(process: Process, states: np.ndarray,
                 x_ref: np.ndarray | None = None) -> int | None:
    """First index k with states[k:] [.., ns] all inside the target ellipse around x_ref
    (default: the steady state), None if none."""
    outside = np.flatnonzero(~process.in_target(states, x_ref))
    if outside.size == 0:
        return 0
    last = int(outside[-1])
    return None if last == len(states) - 1 else last + 1


def true_states(trajectory: Trajectory) -> np.ndarray:
    """The plant's true states (info["state"]) where it reports them, else the observations."""
    if all("state" in info for info in trajectory.infos):
        return np.array([info["state"] for info in trajectory.infos])
    return trajectory.observations


def process_metrics(process: Process, trajectory: Trajectory, stats: Sequence[SolveStats] = (),
                    x_ref: np.ndarray | None = None) -> ProcessMetrics:
    """Metrics of one episode around the reference state x_ref (default: the steady state);
    `stats` are the controller's per-step solver stats (MPC.stats)."""
    states = true_states(trajectory)
    actions = trajectory.actions
    outside = np.any((actions < process.input_low) | (actions > process.input_high), axis=-1)
    out_of_box = ~np.all((states >= process.state_low) & (states <= process.state_high), axis=-1)
    times_ms = 1e3 * np.array([s.solve_time for s in stats])
    median, p95 = np.percentile(times_ms, [50, 95]) if times_ms.size else (np.nan, np.nan)
    return ProcessMetrics(
        reached_step=reached_step(process, states, x_ref),
        integrated_cost=-process.sampling_period * float(trajectory.rewards.sum()),
        bound_violations=int(outside.sum()),
        state_violations=int(out_of_box[1:].sum()),
        solve_ms_median=float(median),
        solve_ms_p95=float(p95),
        status_counts=dict(Counter(s.status for s in stats)),
        fallbacks=sum(s.fallback for s in stats),
    )
