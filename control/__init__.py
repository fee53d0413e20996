"""Controllers, process models, MPC and the one closed-loop runner."""

from control.loop import Controller, Trajectory, returns, run

__all__ = ["Controller", "Trajectory", "returns", "run"]
