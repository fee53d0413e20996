"""Behaviour cloning end to end: a Lipschitz policy fitted to expert demonstrations, certified
from its weights, run in closed loop, and saved with its summary."""

from __future__ import annotations

import logging
from pathlib import Path

import gymnasium as gym
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.bc import fit_bc
from lipctl.agents.checkpoint import CHECKPOINT_NAME, save_checkpoint
from lipctl.agents.saved import bc_policy
from lipctl.agents.trainer import MetricsLogger
from lipctl.control import returns, run
from lipctl.control.policy import ModuleController
from lipctl.envs.demos import Demos
from lipctl.envs.files import write_json

log = logging.getLogger(__name__)
RUN_KEYS = ("agent", "env", "lipschitz", "logger", "seed", "demos", "device", "torch_threads")
EVAL_SEED = 10_000  # closed-loop episodes are reset with seeds EVAL_SEED + seed, + 1, ...


def run_config(cfg: DictConfig) -> dict:
    """The resolved config a checkpoint keeps (the off-policy loop's keys do not apply)."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True)
            if OmegaConf.is_config(cfg[key]) else cfg[key] for key in RUN_KEYS}


def clone(cfg: DictConfig, env: gym.Env, demos: Demos, run_dir: Path, device: torch.device,
          logger: MetricsLogger) -> float:
    """Fit the policy of `cfg` to `demos` (per-epoch MSE to `logger`), certify it, run it in
    closed loop on `env`; write checkpoint.pt and summary.json in `run_dir`. Returns the mean
    closed-loop return."""
    policy = bc_policy(cfg, env).to(device)
    fit = fit_bc(policy, demos.observations, demos.actions, demos.episode_index,
                 instantiate(cfg.agent.fit), seed=cfg.seed, logger=logger, progress=cfg.progress)
    policy = policy.cpu().eval()
    certificate = policy.certificate(torch.as_tensor(demos.observations, dtype=torch.float32),
                                     cfg.lipschitz.certificate_tier)
    episode_returns = returns(run(ModuleController(policy), env, cfg.agent.eval_episodes,
                                  seed=EVAL_SEED + cfg.seed))
    mean, std = float(episode_returns.mean()), float(episode_returns.std())
    bound = cfg.lipschitz.L
    save_checkpoint(run_dir / CHECKPOINT_NAME, {
        "config": run_config(cfg), "policy": policy.state_dict(),
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
    write_json(run_dir / "summary.json", summary, allow_nan=False)
    holdout = "n/a" if fit.holdout_mse is None else f"{fit.holdout_mse:.3g}"
    log.info("eval return %.1f +- %.1f over %d episodes | MSE train %.3g, holdout %s | "
             "Lipschitz upper %.4g (%s), sampled lower %.4g%s", mean, std,
             cfg.agent.eval_episodes, fit.train_mse, holdout, certificate.upper,
             certificate.method, certificate.lower, "" if bound is None else f", L {bound:g}")
    return mean
