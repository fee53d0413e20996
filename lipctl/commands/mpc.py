"""lipctl mpc env=NAME model=NAME [planner=NAME]: closed-loop MPC of a process on its ODE or a
fitted model, solved by IPOPT or by a sampling planner."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from lipctl.config import (
    ConfigError,
    planner_factory,
    planner_name,
    process_of,
    require_in_box,
    require_number,
    require_state_vector,
    solver_options,
    user_errors,
)
from lipctl.control.models import MODELS, TrainedModel, load_model
from lipctl.control.planner import PlannerFactory
from lipctl.control.process_mpc import (
    FIRST_PRINCIPLES,
    ProcessController,
    mpc_episode,
    process_mpc,
)
from lipctl.control.process_planning import ProcessPlanner, process_step
from lipctl.envs.process import Process


def validate(cfg: DictConfig) -> Process:
    """Check the config; the process it controls."""
    process = process_of(cfg)
    if cfg.model.get("_target_"):  # importing a model's module registers its class
        get_class(cfg.model._target_)
    if cfg.model.name != FIRST_PRINCIPLES and cfg.model.name not in MODELS:
        raise ConfigError("model.name", f"unknown model '{cfg.model.name}'; choose from "
                                   f"{', '.join([FIRST_PRINCIPLES, *MODELS])}")
    if cfg.model.name == FIRST_PRINCIPLES and not process.has_model:
        raise ConfigError("model", f"process {process.name!r} has no first-principles model; "
                                   "use a fitted one (model=iclrnn model_file=...)")
    if cfg.model.name != FIRST_PRINCIPLES and not Path(cfg.model_file).is_file():
        raise ConfigError("model_file", f"model file not found: {cfg.model_file} "
                                        "(fit one with lipctl fit)")
    if process.env_id is None:
        raise ConfigError("env", f"process {process.name!r} has no simulated plant to run")
    require_number(cfg, "horizon", 1, integer=True)
    require_number(cfg, "steps", 1, integer=True)
    require_number(cfg, "seed", 0, integer=True)
    require_state_vector(cfg, "start", process)
    require_in_box(cfg, "start", process)
    for key in ("obs_noise_std", "disturbance_std"):
        require_state_vector(cfg, key, process, minimum=0, allow_none=True)
    for step, setpoint in (cfg.setpoints or {}).items():
        if not isinstance(step, int) or step < 0:
            raise ConfigError("setpoints", f"keys must be steps >= 0, got {step!r}")
        if setpoint is not None and setpoint not in process.operating_points:
            raise ConfigError(f"setpoints.{step}", f"unknown operating point {setpoint!r}; "
                              f"{process.name} has {', '.join(process.operating_points) or 'none'}")
    if cfg.contraction and process.lyapunov_matrix is None:
        raise ConfigError("contraction", f"process {process.name!r} has no Lyapunov function")
    solver_options(cfg, "solver")
    if cfg.get("planner") is not None:
        for key in ("solver", "contraction"):
            if cfg[key] is not None:
                raise ConfigError(key, "applies to MPC solved by IPOPT, not to a planner "
                                       "(leave it null with planner=...)")
        planner_of(cfg)
    return process


def planner_of(cfg: DictConfig) -> PlannerFactory | None:
    """The planner factory configured (with the command's horizon), None for IPOPT MPC."""
    if cfg.get("planner") is None:
        return None
    with open_dict(cfg):
        cfg.planner.horizon = cfg.horizon
    return planner_factory(cfg, "planner")


def read_model(path: str, process: Process) -> TrainedModel:
    """The fitted model at `path`; one fitted for another process is a ConfigError."""
    try:
        return load_model(path, process=process)
    except ValueError as error:
        raise ConfigError("model_file", str(error)) from None


def describe_certificate(trained: TrainedModel | None) -> str:
    """The model's Lipschitz certificate saved at fit time, as one phrase."""
    if trained is None:
        return "no network"
    if trained.certificate is None:
        return "no certificate saved with the model"
    c = trained.certificate
    lower = "" if c.lower is None else f", sampled lower {c.lower:.4g}"
    return f"certified Lipschitz upper bound {c.upper:.4g} ({c.method}){lower}"


def controller_of(cfg: DictConfig, process: Process, trained: TrainedModel | None,
                  factory: PlannerFactory | None, setpoint: str | None
                  ) -> tuple[ProcessController, str]:
    """The closed-loop controller the config asks for, with how it plans, as one phrase."""
    if factory is None:
        mpc = process_mpc(process, trained, cfg.horizon, cfg.contraction,
                          solver=solver_options(cfg, "solver"), setpoint=setpoint)
        return mpc, f"horizon {cfg.horizon} ({mpc.options.describe()})"
    planner = ProcessPlanner(factory, process, process_step(process, trained), setpoint,
                             seed=cfg.seed)
    return planner, f"planner {planner_name(cfg.planner)}"


def closed_loop(cfg: DictConfig, process: Process, factory: PlannerFactory | None) -> None:
    torch.set_num_threads(cfg.torch_threads)
    trained = None if cfg.model.name == FIRST_PRINCIPLES else read_model(cfg.model_file, process)
    setpoints = OmegaConf.to_container(cfg.setpoints) if cfg.setpoints else None
    controller, planning = controller_of(cfg, process, trained, factory,
                                         (setpoints or {}).get(0))
    plant_kwargs = OmegaConf.select(cfg, "env.kwargs", default=None)
    _, metrics = mpc_episode(controller, cfg.start, cfg.steps, cfg.obs_noise_std,
                             cfg.disturbance_std, cfg.seed, setpoints,
                             OmegaConf.to_container(plant_kwargs) if plant_kwargs else None)
    reached = "never" if metrics.reached_step is None else f"at step {metrics.reached_step}"
    print(f"{process.name}: {cfg.model.name} MPC ({describe_certificate(trained)}), {planning}"
          f", start {list(cfg.start)}: target "
          f"{'of the last setpoint ' if setpoints else ''}reached {reached}; cost "
          f"{metrics.integrated_cost:.4g}; solve {metrics.solve_ms_median:.1f} ms median, "
          f"{metrics.solve_ms_p95:.1f} ms p95; fallbacks {metrics.fallbacks}; input-bound "
          f"violations {metrics.bound_violations}; state-box violations "
          f"{metrics.state_violations}")


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl mpc"):
        process = validate(cfg)
        closed_loop(cfg, process, planner_of(cfg))
