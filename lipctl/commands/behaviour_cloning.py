"""lipctl train agent=bc demos=PATH: behaviour cloning under a certified Lipschitz bound."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.bc import fit_bc
from lipctl.agents.checkpoint import save_checkpoint
from lipctl.agents.saved import bc_policy
from lipctl.compute import resolve_device, seed_everything
from lipctl.config import ConfigError, require_number
from lipctl.control import returns, run
from lipctl.control.policy import ModuleController
from lipctl.envs import make_env
from lipctl.envs.demos import load_demos
from lipctl.envs.files import atomic_write
from lipctl.lipschitz import lipschitz_mlp
from lipctl.logger import Logger, run_name

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
RUN_KEYS = ("agent", "env", "lipschitz", "logger", "seed", "demos", "device", "torch_threads")
EVAL_SEED = 10_000  # closed-loop episodes are reset with seeds EVAL_SEED + seed, + 1, ...


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


def run_config(cfg: DictConfig) -> dict:
    """The resolved config a checkpoint keeps (the off-policy loop's keys do not apply)."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True)
            if OmegaConf.is_config(cfg[key]) else cfg[key] for key in RUN_KEYS}


def require_new(run_dir: Path) -> None:
    """ConfigError if `run_dir` already holds a finished fit (behaviour cloning never resumes)."""
    if (run_dir / CHECKPOINT_NAME).exists():
        raise ConfigError("hydra.run.dir", f"{run_dir} already holds a run; set hydra.run.dir "
                                           "to start another")


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Fit the policy, certify it, run it in closed loop; write checkpoint.pt, summary.json and
    train.csv (per-epoch MSE) in `run_dir`. Returns the mean closed-loop return."""
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    env = make_env(cfg.env.id)
    demos = load_demos(cfg.demos, env=env)
    policy = bc_policy(cfg, env).to(device)
    resolved = run_config(cfg)
    logger = Logger(run_dir, cfg.logger.backends, config=resolved, run_name=run_name(cfg),
                    wandb_project=cfg.logger.wandb_project, wandb_mode=cfg.logger.wandb_mode)
    log.info("bc on %s from %d demonstrations (%d episodes) | L %s, %s layers | device %s | "
             "run dir %s", cfg.env.id, len(demos), demos.num_episodes, cfg.lipschitz.L,
             cfg.lipschitz.layer, device, run_dir)
    try:
        fit = fit_bc(policy, demos.observations, demos.actions, demos.episode_index,
                     instantiate(cfg.agent.fit), seed=cfg.seed, logger=logger,
                     progress=cfg.progress)
    finally:
        logger.close()
    policy = policy.cpu().eval()
    certificate = policy.certificate(torch.as_tensor(demos.observations, dtype=torch.float32),
                                     cfg.lipschitz.certificate_tier)
    episode_returns = returns(run(ModuleController(policy), env, cfg.agent.eval_episodes,
                                  seed=EVAL_SEED + cfg.seed))
    env.close()
    mean, std = float(episode_returns.mean()), float(episode_returns.std())
    bound = cfg.lipschitz.L
    save_checkpoint(run_dir / CHECKPOINT_NAME, {
        "config": resolved, "policy": policy.state_dict(),
        "certificates": {"policy": certificate.to_dict()}, "fit": fit.to_dict(),
        "eval_return": mean})
    summary = {
        "env_id": cfg.env.id, "demos": str(cfg.demos), "transitions": len(demos),
        "expert_return": float(demos.episode_returns.mean()), "L": bound,
        "lipschitz_upper": certificate.upper, "lipschitz_lower": certificate.lower,
        "certificate_method": certificate.method,
        "within_bound": bound is None or certificate.upper <= bound,
        "eval_return": mean, "eval_return_std": std, "eval_episodes": cfg.agent.eval_episodes,
        "fit": fit.to_dict()}
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    atomic_write(run_dir / "summary.json", lambda f: f.write(text.encode()))
    holdout = "n/a" if fit.holdout_mse is None else f"{fit.holdout_mse:.3g}"
    log.info("eval return %.1f +- %.1f over %d episodes | MSE train %.3g, holdout %s | "
             "Lipschitz upper %.4g (%s), sampled lower %.4g%s", mean, std,
             cfg.agent.eval_episodes, fit.train_mse, holdout, certificate.upper,
             certificate.method, certificate.lower, "" if bound is None else f", L {bound:g}")
    return mean
