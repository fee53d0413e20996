"""Lyapunov MPC of the CSTR on a first-principles or a fitted process model, run in closed loop."""

from __future__ import annotations

from collections.abc import Sequence

from lipctl.control.cstr_metrics import CSTRMetrics, cstr_metrics
from lipctl.control.loop import Trajectory, run
from lipctl.control.models import TrainedModel, casadi_model
from lipctl.control.mpc import MPC, SolverOptions
from lipctl.envs import make_env
from lipctl.envs.cstr import ENV_ID, rk4_step

FIRST_PRINCIPLES = "first_principles"  # MPC on the plant's own ODE
PUBLISHED_STARTS = ((1.5, -70.0), (-1.5, 70.0), (-1.25, 50.0), (1.25, -50.0))


def recommended_solver(trained: TrainedModel | None) -> SolverOptions:
    """The faster build for the model kind, as measured by `bench experiment=cstr_mpc`
    (results/mpc_solve_time.json): a scalar graph for the plant's small ODE, a matrix graph for
    a network, whose dense weight products it evaluates as matrix kernels."""
    return SolverOptions(symbolic="SX" if trained is None else "MX")


def cstr_mpc(trained: TrainedModel | None = None, horizon: int = 2,
             contraction: bool = True, strict: bool = False,
             solver: SolverOptions | None = None,
             ipopt_options: dict | None = None) -> MPC:
    """LMPC on the plant's own ODE (`trained=None`) or on a fitted process model, built and
    solved as `solver` says (default: `recommended_solver`); a strict one raises SolveFailed
    when IPOPT finds no solution."""
    solver = solver or recommended_solver(trained)
    model = rk4_step if trained is None else casadi_model(trained, symbolic=solver.symbolic)
    return MPC(model, horizon=horizon, contraction=contraction, strict=strict, solver=solver,
               ipopt_options=ipopt_options)


def cstr_closed_loop(controller: MPC, start: Sequence[float], steps: int = 30,
                     obs_noise_std: Sequence[float] = (0.0, 0.0),
                     disturbance_std: Sequence[float] = (0.0, 0.0),
                     seed: int = 0) -> tuple[Trajectory, CSTRMetrics]:
    """One episode of `steps` sampling periods from deviation state `start`, with its metrics."""
    plant = make_env(ENV_ID, x0=list(start), obs_noise_std=list(obs_noise_std),
                     disturbance_std=list(disturbance_std), max_episode_steps=steps)
    (trajectory,) = run(controller, plant, seed=seed)
    plant.close()
    return trajectory, cstr_metrics(trajectory, controller.stats)
