"""Controllers, process models, MPC and the one closed-loop runner."""

from lipctl.control.cstr_metrics import CSTRMetrics, cstr_metrics, reached_step
from lipctl.control.loop import (
    Controller,
    NoisyMeasurements,
    TimedController,
    Trajectory,
    returns,
    run,
)
from lipctl.control.mpc import MPC, SolveFailed, SolverOptions, SolveStats

__all__ = [
    "MPC",
    "CSTRMetrics",
    "Controller",
    "NoisyMeasurements",
    "SolveFailed",
    "SolveStats",
    "SolverOptions",
    "TimedController",
    "Trajectory",
    "cstr_metrics",
    "reached_step",
    "returns",
    "run",
]
