"""Closed-loop metrics of a CSTR episode: reaching the target, cost, bounds and solver figures.

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
from lipctl.envs.cstr import ACTION_HIGH, ACTION_LOW, SAMPLING_PERIOD, in_target


@dataclass(frozen=True)
class CSTRMetrics:
    """reached_step: steps until the state enters the target ellipse and stays in it to the end
    (None if it ends outside); integrated_cost: sampling period x summed stage cost;
    bound_violations: steps whose commanded input left the bounds; solve_ms_*: MPC solve time
    per step (NaN without stats); status_counts: solver return statuses; fallbacks: steps that
    applied a fallback input."""

    reached_step: int | None
    integrated_cost: float
    bound_violations: int
    solve_ms_median: float
    solve_ms_p95: float
    status_counts: dict[str, int]
    fallbacks: int


def reached_step(states: np.ndarray) -> int | None:
    """First index k with states[k:] [.., 2] all inside the target ellipse, None if none."""
    outside = np.flatnonzero(~in_target(states))
    if outside.size == 0:
        return 0
    last = int(outside[-1])
    return None if last == len(states) - 1 else last + 1


def cstr_metrics(trajectory: Trajectory, stats: Sequence[SolveStats] = (),
                 states: np.ndarray | None = None) -> CSTRMetrics:
    """Metrics of one episode; `stats` are the controller's per-step solver stats (MPC.stats).

    Reaching the target is judged on `states`, else on the true states the plant reports in
    info["state"], else on the (possibly noisy) observations.
    """
    if states is None and all("state" in info for info in trajectory.infos):
        states = np.array([info["state"] for info in trajectory.infos])
    actions = trajectory.actions
    outside = np.any((actions < ACTION_LOW) | (actions > ACTION_HIGH), axis=-1)
    times_ms = 1e3 * np.array([s.solve_time for s in stats])
    median, p95 = np.percentile(times_ms, [50, 95]) if times_ms.size else (np.nan, np.nan)
    return CSTRMetrics(
        reached_step=reached_step(trajectory.observations if states is None else states),
        integrated_cost=-SAMPLING_PERIOD * float(trajectory.rewards.sum()),
        bound_violations=int(outside.sum()),
        solve_ms_median=float(median),
        solve_ms_p95=float(p95),
        status_counts=dict(Counter(s.status for s in stats)),
        fallbacks=sum(s.fallback for s in stats),
    )
