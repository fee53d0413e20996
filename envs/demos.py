"""Expert demonstrations: a versioned .npz schema, written atomically and validated on load.

Schema (version 1), one .npz file, every array a plain numpy array (loaded with
allow_pickle=False). N transitions in E episodes, stored episode after episode:

    schema_version      int                 SCHEMA_VERSION
    format              str                 "lipctl-demos"
    env_id              str                 the gymnasium id the demonstrations were recorded on
    expert              str                 what produced them (e.g. "lqr"); free text
    observations        float64 [N, *obs]   observation before each action
    actions             float64 [N, *act]   the expert's action (in the env's units)
    rewards             float64 [N]
    next_observations   float64 [N, *obs]   observation after the action
    terminated          bool    [N]         the env terminated after this transition
    truncated           bool    [N]         the episode was cut after this transition
    episode_starts      int64   [E]         index of each episode's first transition
                                            (0 first, strictly increasing)
    episode_returns     float64 [E]         undiscounted return of each whole episode
    observation_shape   int64   [k]         the env's observation space shape ...
    observation_low     float64 [*obs]      ... and bounds (may be +-inf)
    observation_high    float64 [*obs]
    action_shape        int64   [m]         the env's action space shape and bounds
    action_low          float64 [*act]
    action_high         float64 [*act]

Every episode ends with a transition that is terminated or truncated. `load_demos` can subsample
GAIL-style (every k-th transition of each episode, from a random offset); `episode_returns` then
still holds the returns of the whole recorded episodes, and each transition keeps its own flags
(an episode's last kept transition need not be its terminal one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import gymnasium as gym
import numpy as np

from lipctl.envs.files import atomic_write, load_arrays

SCHEMA_VERSION = 1
FORMAT = "lipctl-demos"
_ARRAYS = ("observations", "actions", "rewards", "next_observations", "terminated", "truncated")
_FIELDS = ("schema_version", "format", "env_id", "expert", *_ARRAYS, "episode_starts",
           "episode_returns", "observation_shape", "observation_low", "observation_high",
           "action_shape", "action_low", "action_high")


class DemosError(ValueError):
    """A demonstrations file that cannot be read, or that disagrees with its environment."""


class Episode(Protocol):
    """One recorded episode: observations has one entry more than actions (the reset's first).
    lipctl.control.loop.Trajectory is one."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    truncated: bool


@dataclass
class Demos:
    """Demonstration transitions and the spec of the environment they came from."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episode_starts: np.ndarray
    episode_returns: np.ndarray
    env_id: str
    observation_shape: tuple[int, ...]
    observation_low: np.ndarray
    observation_high: np.ndarray
    action_shape: tuple[int, ...]
    action_low: np.ndarray
    action_high: np.ndarray
    expert: str = ""

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts)

    @property
    def episode_index(self) -> np.ndarray:
        """The episode number [N] of every transition."""
        index = np.zeros(len(self), dtype=np.int64)
        index[self.episode_starts[1:]] = 1
        return np.cumsum(index)


def from_episodes(episodes: Sequence[Episode], env: gym.Env, expert: str = "") -> Demos:
    """Demonstrations from recorded episodes (e.g. control.run's trajectories) on `env`."""
    if not episodes:
        raise DemosError("no episodes to record")
    lengths = [len(e.actions) for e in episodes]
    if min(lengths) < 1:
        raise DemosError("an episode has no transitions")
    terminated, truncated = [], []
    for episode, length in zip(episodes, lengths, strict=True):
        flags = np.zeros(length, dtype=bool)
        terminated.append(flags.copy())
        truncated.append(flags)
        terminated[-1][-1] = bool(episode.terminated)
        truncated[-1][-1] = bool(episode.truncated) or not episode.terminated
    obs_space, act_space = env.observation_space, env.action_space
    return Demos(
        observations=np.concatenate([np.asarray(e.observations[:-1], np.float64)
                                     for e in episodes]),
        actions=np.concatenate([np.asarray(e.actions, np.float64) for e in episodes]),
        rewards=np.concatenate([np.asarray(e.rewards, np.float64) for e in episodes]),
        next_observations=np.concatenate([np.asarray(e.observations[1:], np.float64)
                                          for e in episodes]),
        terminated=np.concatenate(terminated),
        truncated=np.concatenate(truncated),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        episode_returns=np.array([np.sum(e.rewards, dtype=np.float64) for e in episodes]),
        env_id=env.spec.id if env.spec is not None else "",
        observation_shape=tuple(obs_space.shape),
        observation_low=np.asarray(obs_space.low, np.float64),
        observation_high=np.asarray(obs_space.high, np.float64),
        action_shape=tuple(act_space.shape),
        action_low=np.asarray(act_space.low, np.float64),
        action_high=np.asarray(act_space.high, np.float64),
        expert=expert,
    )


def save_demos(path: str | Path, demos: Demos) -> None:
    """Write `demos` to `path` (.npz, schema in this module's docstring), atomically."""
    _check(demos, str(path))
    arrays = {name: getattr(demos, name) for name in (*_ARRAYS, "episode_starts",
                                                      "episode_returns", "observation_low",
                                                      "observation_high", "action_low",
                                                      "action_high")}
    arrays.update(
        schema_version=np.array(SCHEMA_VERSION), format=np.array(FORMAT),
        env_id=np.array(demos.env_id), expert=np.array(demos.expert),
        observation_shape=np.array(demos.observation_shape, dtype=np.int64),
        action_shape=np.array(demos.action_shape, dtype=np.int64),
    )
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_demos(path: str | Path, env: gym.Env | str | None = None, subsample: int = 1,
               seed: int | None = None, episodes: int | None = None) -> Demos:
    """Read demonstrations written by `save_demos`, check them, and optionally select episodes
    and subsample.

    `env` (an environment or its id) must agree with the file's env id, observation and action
    shapes and action bounds. `episodes=n` keeps the first n episodes (the file must hold as
    many). `subsample=k` keeps every k-th transition of each episode from an
    offset drawn uniformly in [0, min(k, episode length)) with `seed`. Any problem is a DemosError
    naming what disagrees.
    """
    path = Path(path)
    if not path.is_file():
        raise DemosError(f"demonstrations file not found: {path}")
    fields = load_arrays(path, DemosError, "demonstrations",
                         "a lipctl demonstrations file (.npz written by lipctl demos)")
    missing = [name for name in _FIELDS if name not in fields]
    if "format" not in fields or str(fields["format"]) != FORMAT:
        raise DemosError(f"{path} is not a lipctl demonstrations file")
    if "schema_version" not in fields or fields["schema_version"].shape != ():
        raise DemosError(f"{path} has no schema version")
    version = int(fields["schema_version"])
    if version != SCHEMA_VERSION:
        raise DemosError(f"{path} has schema version {version}, this lipctl reads "
                         f"{SCHEMA_VERSION}")
    if missing:
        raise DemosError(f"{path} is missing {', '.join(missing)}")
    demos = Demos(
        **{name: fields[name] for name in (*_ARRAYS, "episode_starts", "episode_returns",
                                           "observation_low", "observation_high", "action_low",
                                           "action_high")},
        env_id=str(fields["env_id"]), expert=str(fields["expert"]),
        observation_shape=tuple(int(n) for n in fields["observation_shape"]),
        action_shape=tuple(int(n) for n in fields["action_shape"]),
    )
    _check(demos, str(path))
    if env is not None:
        _check_env(demos, env, str(path))
    if isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer)) or subsample < 1:
        raise DemosError(f"subsample must be an integer >= 1, got {subsample!r}")
    if episodes is not None:
        demos = _first_episodes(demos, episodes, str(path))
    if subsample > 1:
        demos = _subsample(demos, int(subsample), np.random.default_rng(seed))
    return demos


def _check(demos: Demos, where: str) -> None:
    """Shapes, lengths, dtypes and episode bookkeeping agree with each other."""
    n = len(demos.actions)
    obs, act = demos.observation_shape, demos.action_shape
    expected = {"observations": (n, *obs), "next_observations": (n, *obs),
                "actions": (n, *act), "rewards": (n,), "terminated": (n,), "truncated": (n,),
                "observation_low": obs, "observation_high": obs,
                "action_low": act, "action_high": act}
    for name, shape in expected.items():
        found = np.shape(getattr(demos, name))
        if found != shape:
            raise DemosError(f"{where}: {name} has shape {found}, expected {shape}")
    if n == 0:
        raise DemosError(f"{where}: holds no transitions")
    for name in ("terminated", "truncated"):
        if getattr(demos, name).dtype != np.bool_:
            raise DemosError(f"{where}: {name} must be bool, got {getattr(demos, name).dtype}")
    for name in ("observations", "actions", "rewards", "next_observations"):
        values = getattr(demos, name)
        if not np.issubdtype(values.dtype, np.floating) or not np.all(np.isfinite(values)):
            raise DemosError(f"{where}: {name} must be finite floats")
    starts = demos.episode_starts
    if (starts.ndim != 1 or len(starts) == 0 or not np.issubdtype(starts.dtype, np.integer)
            or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= n):
        raise DemosError(f"{where}: episode_starts must start at 0 and increase strictly below {n}")
    if np.shape(demos.episode_returns) != (len(starts),):
        raise DemosError(f"{where}: episode_returns has shape {np.shape(demos.episode_returns)}, "
                         f"expected ({len(starts)},) (one per episode)")
    ends = np.append(starts[1:], n) - 1
    if not np.all(demos.terminated[ends] | demos.truncated[ends]):
        raise DemosError(f"{where}: an episode does not end terminated or truncated")


def _check_env(demos: Demos, env: gym.Env | str, where: str) -> None:
    """The environment is the one the demonstrations were recorded on."""
    if isinstance(env, str):
        from lipctl.envs.make import make_env

        made = make_env(env)
        try:
            _check_env(demos, made, where)
        finally:
            made.close()
        return
    env_id = env.spec.id if env.spec is not None else None
    if env_id != demos.env_id:
        raise DemosError(f"{where} was recorded on {demos.env_id!r}, not {env_id!r}")
    spaces = (("observation", env.observation_space), ("action", env.action_space))
    for kind, space in spaces:
        shape = getattr(demos, f"{kind}_shape")
        if tuple(space.shape) != shape:
            raise DemosError(f"{where}: {kind} shape {shape} differs from {env_id}'s "
                             f"{tuple(space.shape)}")
    for bound in ("low", "high"):
        stored = getattr(demos, f"action_{bound}")
        if not np.allclose(stored, getattr(env.action_space, bound)):
            raise DemosError(f"{where}: action {bound} {stored.tolist()} differs from {env_id}'s "
                             f"{np.asarray(getattr(env.action_space, bound)).tolist()}")


def _first_episodes(demos: Demos, count: int, where: str) -> Demos:
    """The first `count` episodes."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise DemosError(f"episodes must be an integer >= 1, got {count!r}")
    if count > demos.num_episodes:
        raise DemosError(f"{where} holds {demos.num_episodes} episodes, {count} were asked for")
    end = len(demos) if count == demos.num_episodes else int(demos.episode_starts[count])
    kept = {name: getattr(demos, name)[:end] for name in _ARRAYS}
    return Demos(**{**demos.__dict__, **kept, "episode_starts": demos.episode_starts[:count],
                    "episode_returns": demos.episode_returns[:count]})


def _subsample(demos: Demos, k: int, rng: np.random.Generator) -> Demos:
    """Every k-th transition of each episode, from a random offset per episode."""
    ends = np.append(demos.episode_starts[1:], len(demos))
    keep, starts = [], []
    for start, end in zip(demos.episode_starts, ends, strict=True):
        offset = int(rng.integers(0, min(k, end - start)))
        starts.append(sum(len(kept) for kept in keep))
        keep.append(np.arange(start + offset, end, k))
    index = np.concatenate(keep)
    picked = {name: getattr(demos, name)[index] for name in _ARRAYS}
    return Demos(**{**demos.__dict__, **picked,
                    "episode_starts": np.array(starts, dtype=np.int64)})
