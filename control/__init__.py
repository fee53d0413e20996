"""Controllers, process models, MPC and the one closed-loop runner."""

from control.cstr_metrics import CSTRMetrics, cstr_metrics, reached_step
from control.loop import Controller, Trajectory, returns, run
from control.mpc import MPC, SolveFailed, SolveStats

__all__ = [
    "MPC",
    "CSTRMetrics",
    "Controller",
    "SolveFailed",
    "SolveStats",
    "Trajectory",
    "cstr_metrics",
    "reached_step",
    "returns",
    "run",
]
