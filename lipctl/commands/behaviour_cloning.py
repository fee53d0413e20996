"""lipctl train agent=bc demos=PATH: behaviour cloning under a certified Lipschitz bound (its
settings checked, then `agents.cloning` on the configured device, seed and logger)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from lipctl.agents.checkpoint import CHECKPOINT_NAME
from lipctl.agents.cloning import clone, run_config
from lipctl.compute import resolve_device, seed_everything
from lipctl.config import ConfigError, require_number
from lipctl.envs import make_env
from lipctl.envs.demos import load_demos
from lipctl.lipschitz import lipschitz_mlp
from lipctl.logger import Logger, run_name

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> None:
    """Raise a ConfigError (or DemosError) for an impossible value of behaviour cloning's own
    settings (`lipctl train`'s validate checks the env, seed, device, bound and logger first),
    before anything is built."""
    if cfg.lipschitz.get("robust_weight"):
        raise ConfigError("lipschitz.robust_weight", "agent=bc has no critic to regularise; use "
                                                     "lipschitz=none with lipschitz.L=...")
    for key in ("epochs", "batch_size", "patience"):
        require_number(cfg, f"agent.fit.{key}", 1, integer=True)
    require_number(cfg, "agent.fit.lr", 0, exclusive=True)
    require_number(cfg, "agent.fit.holdout_ratio", 0)
    if cfg.agent.fit.holdout_ratio >= 1:
        raise ConfigError("agent.fit.holdout_ratio",
                          f"must be < 1, got {cfg.agent.fit.holdout_ratio}")
    require_number(cfg, "agent.eval_episodes", 1, integer=True)
    try:
        lipschitz_mlp(1, 1, list(cfg.agent.policy.hidden), None, cfg.agent.policy.activation)
    except (TypeError, ValueError) as error:
        raise ConfigError("agent.policy", str(error)) from None
    if cfg.demos is None:
        raise ConfigError("demos", "agent=bc learns from expert demonstrations: pass demos=PATH "
                                   "(a file written by `lipctl demos`)")
    load_demos(cfg.demos, env=cfg.env.id)  # DemosError: missing, unreadable or another env's


def require_new(run_dir: Path) -> None:
    """ConfigError if `run_dir` already holds a finished fit (behaviour cloning never resumes)."""
    if (run_dir / CHECKPOINT_NAME).exists():
        raise ConfigError("hydra.run.dir", f"{run_dir} already holds a run; set hydra.run.dir "
                                           "to start another")


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Behaviour cloning of `cfg` in `run_dir` (`agents.cloning.clone`) on the configured device
    and seed, logging to the configured backends; the mean closed-loop return."""
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    env = make_env(cfg.env.id)
    demos = load_demos(cfg.demos, env=env)
    logger = Logger(run_dir, cfg.logger.backends, config=run_config(cfg), run_name=run_name(cfg),
                    wandb_project=cfg.logger.wandb_project, wandb_mode=cfg.logger.wandb_mode)
    log.info("bc on %s from %d demonstrations (%d episodes) | L %s, %s layers | device %s | "
             "run dir %s", cfg.env.id, len(demos), demos.num_episodes, cfg.lipschitz.L,
             cfg.lipschitz.layer, device, run_dir)
    try:
        return clone(cfg, env, demos, run_dir, device, logger)
    finally:
        logger.close()
        env.close()
