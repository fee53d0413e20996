"""MPC of a process on its first-principles ODE or on a fitted process model, run in closed loop,
with setpoint changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import gymnasium as gym
import numpy as np

from lipctl.control.loop import Trajectory, run
from lipctl.control.models import TrainedModel, casadi_model
from lipctl.control.models.io import check_process
from lipctl.control.mpc import MPC, SolverOptions, SolveStats
from lipctl.control.process_metrics import ProcessMetrics, process_metrics
from lipctl.envs import make_env
from lipctl.envs.process import Process

FIRST_PRINCIPLES = "first_principles"  # MPC on the process's own ODE


def recommended_solver(trained: TrainedModel | None) -> SolverOptions:
    """The faster build for the model kind, as measured by `bench experiment=cstr_mpc`
    (results/mpc_solve_time.json): a scalar graph for a small ODE, a matrix graph for a
    network, whose dense weight products it evaluates as matrix kernels."""
    return SolverOptions(symbolic="SX" if trained is None else "MX")


def process_mpc(process: Process, trained: TrainedModel | None = None, horizon: int = 2,
                contraction: bool | None = None, strict: bool = False,
                solver: SolverOptions | None = None, ipopt_options: dict | None = None,
                setpoint: str | None = None, time_budget: float | None = None) -> MPC:
    """MPC of `process` on its own ODE (`trained=None`) or on a fitted process model (which must
    have been fitted for this process), built and solved as `solver` says (default:
    `recommended_solver`); contraction defaults to on where the process has a Lyapunov
    function. A strict one raises SolveFailed when the solver finds no solution (or none
    within `time_budget` seconds)."""
    solver = solver or recommended_solver(trained)
    if trained is None:
        model = process.step
    else:
        check_process(trained, process, "the process model")
        model = casadi_model(trained, symbolic=solver.symbolic)
    return MPC(model, process, horizon=horizon, contraction=contraction, strict=strict,
               solver=solver, ipopt_options=ipopt_options, setpoint=setpoint,
               time_budget=time_budget)


class ProcessController(Protocol):
    """What the closed-loop process runner needs of a controller: MPC, or a planner on a process
    model (control/process_planning.py)."""

    process: Process
    setpoint: str | None
    x_ref: np.ndarray
    stats: list[SolveStats]

    def set_setpoint(self, setpoint: str | None) -> None: ...

    def act(self, observation: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


class SetpointSchedule:
    """A Controller that switches the setpoint of a process controller and of its plant (a
    ProcessEnv) to `schedule[k]` before step k (step 0 included); `reset` restarts the count."""

    def __init__(self, mpc: ProcessController, plant: gym.Env,
                 schedule: Mapping[int, str | None]) -> None:
        self.mpc, self.plant, self.schedule = mpc, plant.unwrapped, dict(schedule)
        self._step = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        if self._step in self.schedule:
            self.mpc.set_setpoint(self.schedule[self._step])
            self.plant.set_setpoint(self.schedule[self._step])
        self._step += 1
        return self.mpc.act(observation)

    def reset(self) -> None:
        self._step = 0
        self.mpc.reset()


def mpc_episode(mpc: ProcessController, start: Sequence[float], steps: int = 30,
                obs_noise_std: Sequence[float] | None = None,
                disturbance_std: Sequence[float] | None = None, seed: int = 0,
                schedule: Mapping[int, str | None] | None = None,
                plant_kwargs: Mapping | None = None) -> tuple[Trajectory, ProcessMetrics]:
    """One episode of `steps` sampling periods of the controller's process's simulated plant (its
    registered env, made with `plant_kwargs`) from state `start`, switching setpoints as
    `schedule` says, with its metrics around the last setpoint."""
    process = mpc.process
    if process.env_id is None:
        raise ValueError(f"process {process.name!r} has no simulated plant (env_id)")
    plant = make_env(process.env_id, x0=list(start), obs_noise_std=obs_noise_std,
                     disturbance_std=disturbance_std, max_episode_steps=steps,
                     **(plant_kwargs or {}))
    plant.unwrapped.set_setpoint(mpc.setpoint)  # the plant's cost around the MPC's setpoint
    controller = mpc if not schedule else SetpointSchedule(mpc, plant, schedule)
    (trajectory,) = run(controller, plant, seed=seed)
    plant.close()
    return trajectory, process_metrics(process, trajectory, mpc.stats, mpc.x_ref)
