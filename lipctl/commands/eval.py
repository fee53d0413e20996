"""lipctl eval: deterministic episodes of a trained policy, built from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from lipctl.agents.checkpoint import CheckpointError
from lipctl.agents.saved import load_agent
from lipctl.compute import resolve_device
from lipctl.config import require_number, user_errors
from lipctl.control import returns, run


def validate(cfg: DictConfig) -> None:
    if not Path(cfg.checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {cfg.checkpoint}")
    require_number(cfg, "episodes", 1, integer=True)
    require_number(cfg, "seed", 0, integer=True)
    require_number(cfg, "torch_threads", 1, integer=True)
    if cfg.device != "auto":
        resolve_device(cfg.device)


def evaluate(cfg: DictConfig) -> tuple[float, float]:
    """Mean and standard deviation of the episode return; prints them with the certificates."""
    torch.set_num_threads(cfg.torch_threads)
    saved = load_agent(cfg.checkpoint, resolve_device(cfg.device))
    env = saved.env()
    episode_returns = returns(run(saved.controller(), env, cfg.episodes, seed=cfg.seed))
    env.close()
    mean, std = float(episode_returns.mean()), float(episode_returns.std())
    step = "" if saved.step is None else f" | step {saved.step}"  # behaviour cloning has none
    print(f"{saved.env_id}{step} | {cfg.episodes} episodes | return {mean:.1f} +- {std:.1f}")
    for name, certificate in saved.certificates().items():
        lower = certificate["lower"]
        print(f"{name}: Lipschitz upper {certificate['upper']:.4g} ({certificate['method']})"
              + ("" if lower is None else f", sampled lower {lower:.4g}"))
    return mean, std


def main(cfg: DictConfig) -> tuple[float, float]:
    with user_errors("lipctl eval"):
        validate(cfg)
        return evaluate(cfg)
