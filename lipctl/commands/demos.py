"""lipctl demos env=NAME expert=NAME: record an expert's episodes into a demonstrations file."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from control import returns, run
from envs import make_env
from envs.demos import from_episodes, load_demos, save_demos
from envs.experts import available_experts, make_expert
from lipctl.config import ConfigError, require_number, user_errors


def validate(cfg: DictConfig) -> None:
    experts = available_experts(cfg.env.id)
    if cfg.expert not in experts:
        raise ConfigError("expert", f"no '{cfg.expert}' expert for '{cfg.env.id}' "
                                    f"(available: {', '.join(experts) or 'none'})")
    require_number(cfg, "episodes", 1, integer=True)
    require_number(cfg, "seed", 0, integer=True)
    require_number(cfg, "max_steps", 1, integer=True, allow_none=True)
    if not isinstance(cfg.out, str) or not cfg.out.endswith(".npz"):
        raise ConfigError("out", f"must be a path ending in .npz, got {cfg.out!r}")


def record(cfg: DictConfig) -> None:
    env = make_env(cfg.env.id)
    try:
        expert = make_expert(cfg.expert, env)
        episodes = run(expert, env, episodes=cfg.episodes, seed=cfg.seed,
                       max_steps=cfg.max_steps)
        save_demos(cfg.out, from_episodes(episodes, env, expert=cfg.expert))
    finally:
        env.close()
    demos = load_demos(cfg.out, env=cfg.env.id)  # read back: the file is what we meant to write
    episode_returns = returns(episodes)
    print(f"{cfg.out}: {demos.num_episodes} episodes, {len(demos)} transitions of {cfg.env.id} "
          f"by the {cfg.expert} expert; return mean {episode_returns.mean():.1f} "
          f"(min {episode_returns.min():.1f}, max {episode_returns.max():.1f})")


@hydra.main(config_path="pkg://conf", config_name="demos", version_base=None)
def main(cfg: DictConfig) -> None:
    with user_errors("lipctl demos"):
        validate(cfg)
        record(cfg)
