"""lipctl mpc model=NAME: closed-loop Lyapunov MPC of the CSTR on a process model."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from lipctl.config import ConfigError, require_number, solver_options, user_errors
from lipctl.control.cstr_closed_loop import FIRST_PRINCIPLES, cstr_closed_loop, cstr_mpc
from lipctl.control.models import MODELS, TrainedModel, load_model


def validate(cfg: DictConfig) -> None:
    if cfg.model.name != FIRST_PRINCIPLES and cfg.model.name not in MODELS:
        raise ConfigError("model.name", f"unknown model '{cfg.model.name}'; choose from "
                                   f"{', '.join([FIRST_PRINCIPLES, *MODELS])}")
    if cfg.model.name != FIRST_PRINCIPLES and not Path(cfg.model_file).is_file():
        raise ConfigError("model_file", f"model file not found: {cfg.model_file} "
                                        "(fit one with lipctl fit)")
    require_number(cfg, "horizon", 1, integer=True)
    require_number(cfg, "steps", 1, integer=True)
    require_number(cfg, "seed", 0, integer=True)
    for key in ("start", "obs_noise_std", "disturbance_std"):
        if len(cfg[key]) != 2:
            raise ConfigError(key, f"must hold 2 numbers [CA, T], got {list(cfg[key])}")
        for i in range(2):
            require_number(cfg, f"{key}.{i}", 0 if key != "start" else None)
    solver_options(cfg, "solver")


def read_model(path: str) -> TrainedModel:
    """The fitted model at `path`; one fitted for another plant is a ConfigError."""
    try:
        return load_model(path)
    except ValueError as error:
        raise ConfigError("model_file", str(error)) from None


def closed_loop(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.torch_threads)
    trained = None if cfg.model.name == FIRST_PRINCIPLES else read_model(cfg.model_file)
    controller = cstr_mpc(trained, cfg.horizon, cfg.contraction,
                          solver=solver_options(cfg, "solver"))
    _, metrics = cstr_closed_loop(controller, cfg.start, cfg.steps, cfg.obs_noise_std,
                                  cfg.disturbance_std, cfg.seed)
    reached = "never" if metrics.reached_step is None else f"at step {metrics.reached_step}"
    print(f"{cfg.model.name} MPC, horizon {cfg.horizon} ({controller.options.symbolic} graph, "
          f"{controller.options.hessian} Hessian{', JIT' if controller.options.jit else ''}), "
          f"start {list(cfg.start)}: target reached "
          f"{reached}; cost {metrics.integrated_cost:.4g}; solve {metrics.solve_ms_median:.1f} ms "
          f"median, {metrics.solve_ms_p95:.1f} ms p95; fallbacks {metrics.fallbacks}; "
          f"input-bound violations {metrics.bound_violations}")


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl mpc"):
        validate(cfg)
        closed_loop(cfg)
