"""lipctl demos env=NAME expert=NAME: record an expert's episodes into a demonstrations file.

Experts: the env's analytic experts (envs/experts.py), a trained lipctl agent's deterministic
policy (`expert=checkpoint`), or a stable-baselines3 policy (`expert=sb3`), read without running
code from its .zip unless `sb3_trust=true`.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
from omegaconf import DictConfig

from lipctl.agents.checkpoint import CheckpointError
from lipctl.agents.saved import load_exportable
from lipctl.config import ConfigError, require_number, user_errors
from lipctl.control import Controller, returns, run
from lipctl.control.export import POLICY
from lipctl.control.policy import ModuleController
from lipctl.envs import make_env
from lipctl.envs.demos import from_episodes, load_demos, save_demos
from lipctl.envs.experts import SB3Expert, available_experts, make_expert, read_sb3_policy
from lipctl.extras import require_extra

TRAINED = ("checkpoint", "sb3")  # experts read from `expert_checkpoint`
SB3_ALGORITHMS = ("sac", "td3", "ddpg", "ppo", "a2c")


def read_sb3_expert(cfg: DictConfig, env: gym.Env) -> object:
    """The stable-baselines3 policy in `expert_checkpoint`: read as data (`read_sb3_policy`), or
    with `sb3_trust=true` by stable-baselines3's own loader, which runs code from the file."""
    algorithm = cfg.sb3_algorithm.upper()
    if not cfg.sb3_trust:
        try:
            return read_sb3_policy(cfg.expert_checkpoint, cfg.sb3_algorithm, env)
        except ValueError as error:
            raise CheckpointError(str(error)) from None
    import stable_baselines3  # the sb3 extra, checked by validate

    try:
        model = getattr(stable_baselines3, algorithm).load(cfg.expert_checkpoint, device="cpu")
    except Exception as error:  # zip, pickle and shape errors of a foreign file
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"cannot load {cfg.expert_checkpoint} as a stable-baselines3 "
                              f"{algorithm} model: {message}") from None
    if model.observation_space.shape != env.observation_space.shape:
        raise CheckpointError(f"{cfg.expert_checkpoint} observes shape "
                              f"{model.observation_space.shape}, {cfg.env.id} gives "
                              f"{env.observation_space.shape}")
    return model.policy


def build_expert(cfg: DictConfig, env: gym.Env) -> Controller:
    """The configured expert for `env`; CheckpointError for an unusable expert file."""
    if cfg.expert not in TRAINED:
        return make_expert(cfg.expert, env)
    if cfg.expert == "sb3":
        return SB3Expert(read_sb3_expert(cfg, env))
    network = load_exportable(cfg.expert_checkpoint)
    if network.kind != POLICY or network.env_id != cfg.env.id:
        raise CheckpointError(f"{cfg.expert_checkpoint} holds a {network.kind} for "
                              f"'{network.env_id}', not a policy for '{cfg.env.id}'")
    return ModuleController(network.module)


def validate(cfg: DictConfig) -> None:
    experts = (*available_experts(cfg.env.id), *TRAINED)
    if cfg.expert not in experts:
        raise ConfigError("expert", f"no '{cfg.expert}' expert for '{cfg.env.id}' "
                                    f"(available: {', '.join(experts)})")
    if cfg.expert in TRAINED and not (cfg.expert_checkpoint
                                      and Path(cfg.expert_checkpoint).is_file()):
        raise ConfigError("expert_checkpoint", f"expert={cfg.expert} reads its policy from an "
                                               f"existing file, got {cfg.expert_checkpoint!r}")
    if cfg.expert == "sb3":
        require_extra("sb3", "expert=sb3")
    if cfg.expert == "sb3" and cfg.sb3_algorithm not in SB3_ALGORITHMS:
        raise ConfigError("sb3_algorithm", f"must be one of {', '.join(SB3_ALGORITHMS)}, got "
                                           f"{cfg.sb3_algorithm!r}")
    if not isinstance(cfg.sb3_trust, bool):
        raise ConfigError("sb3_trust", f"must be true or false, got {cfg.sb3_trust!r}")
    require_number(cfg, "episodes", 1, integer=True)
    require_number(cfg, "seed", 0, integer=True)
    require_number(cfg, "max_steps", 1, integer=True, allow_none=True)
    if not isinstance(cfg.out, str) or not cfg.out.endswith(".npz"):
        raise ConfigError("out", f"must be a path ending in .npz, got {cfg.out!r}")


def record(cfg: DictConfig) -> None:
    env = make_env(cfg.env.id)
    try:
        expert = build_expert(cfg, env)
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


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl demos"):
        validate(cfg)
        record(cfg)
