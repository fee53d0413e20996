"""Building gymnasium environments by id, with a clear error for ids that do not exist."""

from __future__ import annotations

import difflib

import gymnasium as gym
import numpy as np


class UnknownEnvError(ValueError):
    """Raised when an environment id is not registered with gymnasium."""


def _check_registered(env_id: str) -> None:
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnknownEnvError(f"unknown environment '{env_id}'{hint}")


def make_env(env_id: str, seed: int | None = None, **kwargs) -> gym.Env:
    """Make a continuous-action gymnasium env, seeded when `seed` is given."""
    _check_registered(env_id)
    env = gym.make(env_id, **kwargs)
    if not isinstance(env.action_space, gym.spaces.Box):
        env.close()
        raise UnknownEnvError(f"environment '{env_id}' has no continuous (Box) action space")
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def env_spaces(env: gym.Env) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Observation size, action size and action bounds of a flat Box env."""
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    return obs_dim, act_dim, env.action_space.low, env.action_space.high
