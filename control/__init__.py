"""Controllers, process models, MPC and the one closed-loop runner."""

from lipctl.control.loop import (
    Controller,
    NoisyMeasurements,
    TimedController,
    Trajectory,
    returns,
    run,
)
from lipctl.control.mpc import MPC, SolveFailed, SolverOptions, SolveStats
from lipctl.control.process_metrics import ProcessMetrics, process_metrics, reached_step

__all__ = [
    "MPC",
    "Controller",
    "NoisyMeasurements",
    "ProcessMetrics",
    "SolveFailed",
    "SolveStats",
    "SolverOptions",
    "TimedController",
    "Trajectory",
    "process_metrics",
    "reached_step",
    "returns",
    "run",
]
