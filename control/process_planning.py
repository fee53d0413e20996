"""Sampling-based planning (MPPI, CEM: control/planner.py) of a process, on its first-principles
ODE or on a fitted process model: the model's one-period step as the planner's batched torch
dynamics, minus the stage cost around the current setpoint as its reward, the process's input
bounds as its action box."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from lipctl.control.models import TrainedModel
from lipctl.control.models.io import check_process
from lipctl.control.mpc import SolveStats
from lipctl.control.planner import PlannerFactory
from lipctl.envs.process import Process

Step = Callable[[Tensor, Tensor], Tensor]  # (x [B, ns], u [B, nu]) -> x one period later
PLANNED = "planned"  # the status of every planning step (a planner does not fail to solve)


def process_step(process: Process, trained: TrainedModel | None = None) -> Step:
    """The process's one-period step on torch tensors: the fitted model's (which must have been
    fitted for `process`), or its ODE's (RK4 in float64 numpy) where `trained` is None."""
    if trained is not None:
        check_process(trained, process, "the process model")
        return trained.next_state

    def ode_step(x: Tensor, u: Tensor) -> Tensor:
        following = process.step(x.double().cpu().numpy(), u.double().cpu().numpy())
        return torch.as_tensor(following, dtype=x.dtype, device=x.device)

    return ode_step


class ProcessPlanner:
    """A Controller that plans a process's inputs with the planner `factory` builds on `step`;
    it offers what MPC offers the closed-loop process runner (`mpc_episode`): `process`,
    `set_setpoint`, `setpoint`, `x_ref` and per-step `stats` (the planning time)."""

    def __init__(self, factory: PlannerFactory, process: Process, step: Step,
                 setpoint: str | None = None, seed: int = 0) -> None:
        self.process, self.step = process, step
        self.set_setpoint(setpoint)
        self.planner = factory(dynamics=self.dynamics, action_low=process.input_low,
                               action_high=process.input_high, seed=seed)
        self.reset()

    def set_setpoint(self, setpoint: str | None) -> None:
        """Plan towards the named operating point (None: the steady state)."""
        self.setpoint = setpoint
        self.x_ref, self.u_ref = self.process.reference(setpoint)

    def dynamics(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(next state, minus the stage cost around the setpoint) of x [B, ns] under u [B, nu]."""
        x_ref, u_ref = (torch.as_tensor(r, dtype=x.dtype, device=x.device)
                        for r in (self.x_ref, self.u_ref))
        return self.step(x, u), -self.process.stage_cost(x, u, x_ref, u_ref)

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The planned input; on a non-finite observation, the last input applied (the steady
        input before any), counted as a fallback: any planner factory's planner is held so."""
        start = time.perf_counter()
        if not np.all(np.isfinite(observation)):
            self.stats.append(SolveStats(time.perf_counter() - start, "Non_Finite_Observation",
                                         True))
            return self.last_action.copy()
        self.last_action = np.asarray(self.planner.act(observation), dtype=np.float64)
        self.stats.append(SolveStats(time.perf_counter() - start, PLANNED, False))
        return self.last_action.copy()

    def reset(self) -> None:
        self.planner.reset()
        self.stats = []
        self.last_action = self.process.steady_input.astype(np.float64)
