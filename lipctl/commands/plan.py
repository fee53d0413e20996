"""lipctl plan checkpoint=PATH: MPPI (or CEM) on an MBPO checkpoint's dynamics model, with its
critic as terminal value and its actor as proposal, through the closed-loop runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from lipctl.agents.checkpoint import CheckpointError
from lipctl.agents.saved import load_agent
from lipctl.config import planner_factory, planner_name, require_number, user_errors
from lipctl.control import NoisyMeasurements, TimedController, returns, run
from lipctl.control.planner import PlannerFactory
from lipctl.envs import make_env


def validate(cfg: DictConfig) -> PlannerFactory:
    if not Path(cfg.checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {cfg.checkpoint}")
    require_number(cfg, "episodes", 1, integer=True)
    require_number(cfg, "seed", 0, integer=True)
    require_number(cfg, "obs_noise", 0.0)
    require_number(cfg, "torch_threads", 1, integer=True)
    return planner_factory(cfg, "planner")


def plan(cfg: DictConfig) -> dict[str, float]:
    """Return mean and std and planning ms per step; prints them with the certificates."""
    factory = validate(cfg)
    torch.set_num_threads(cfg.torch_threads)
    saved = load_agent(cfg.checkpoint)
    planner = TimedController(saved.planner(factory, cfg.terminal_value, cfg.proposal,
                                            seed=cfg.seed))
    controller = (NoisyMeasurements(planner, cfg.obs_noise * saved.observation_std, cfg.seed)
                  if cfg.obs_noise > 0 else planner)
    env = make_env(saved.env_id)
    episode_returns = returns(run(controller, env, cfg.episodes, seed=cfg.seed))
    env.close()
    result = {"return_mean": float(episode_returns.mean()),
              "return_std": float(episode_returns.std()),
              "plan_ms_median": 1000 * float(np.median(planner.seconds)),
              "plan_ms_p95": 1000 * float(np.percentile(planner.seconds, 95))}
    print(f"{saved.env_id} | {planner_name(cfg.planner)} | terminal value "
          f"{'on' if cfg.terminal_value else 'off'} | {cfg.episodes} episodes "
          f"| return {result['return_mean']:.1f} +- {result['return_std']:.1f} | planning "
          f"{result['plan_ms_median']:.1f} ms per step (p95 {result['plan_ms_p95']:.1f})")
    for name, certificate in saved.stored_certificates.items():
        if name.startswith("critic"):
            print(f"{name}: Lipschitz upper {certificate['upper']:.4g} ({certificate['method']})"
                  f", sampled lower {certificate['lower']:.4g}")
    return result


def main(cfg: DictConfig) -> dict[str, float]:
    with user_errors("lipctl plan"):
        return plan(cfg)
