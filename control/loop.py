"""The closed-loop runner: any controller against any gymnasium plant."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import gymnasium as gym
import numpy as np


@runtime_checkable
class Controller(Protocol):
    """Anything that maps an observation to an action: a policy, an MPC, a planner."""

    def act(self, observation: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


@dataclass
class Trajectory:
    """One closed-loop episode: observations and infos have one entry more than actions
    (the reset's first)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    truncated: bool
    infos: list[dict]

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())

    def __len__(self) -> int:
        return len(self.actions)


def run(
    controller: Controller,
    plant: gym.Env,
    episodes: int = 1,
    seed: int | None = None,
    max_steps: int | None = None,
) -> list[Trajectory]:
    """Step `controller` against `plant` for whole episodes and record each trajectory.

    Episode i is reset with seed `seed + i` when a seed is given. An episode ends when the
    plant terminates or truncates, or after `max_steps` steps (then marked truncated).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    trajectories = []
    for episode in range(episodes):
        controller.reset()
        observation, info = plant.reset(seed=None if seed is None else seed + episode)
        observations, actions, rewards, infos = [observation], [], [], [info]
        terminated = truncated = False
        while not (terminated or truncated):
            action = controller.act(observation)
            observation, reward, terminated, truncated, info = plant.step(action)
            observations.append(observation)
            infos.append(info)
            actions.append(action)
            rewards.append(reward)
            if max_steps is not None and len(actions) >= max_steps:
                truncated = truncated or not terminated
        trajectories.append(
            Trajectory(
                observations=np.asarray(observations),
                actions=np.asarray(actions),
                rewards=np.asarray(rewards, dtype=np.float64),
                terminated=bool(terminated),
                truncated=bool(truncated),
                infos=infos,
            )
        )
    return trajectories


def returns(trajectories: list[Trajectory]) -> np.ndarray:
    """Episode returns of a list of trajectories."""
    return np.array([t.episode_return for t in trajectories])


class NoisyMeasurements:
    """A Controller that hands `controller` each observation plus Gaussian noise of per-dimension
    std `std` (seeded): measurement noise the plant's true state and rewards never see."""

    def __init__(self, controller: Controller, std: np.ndarray | float, seed: int = 0):
        self.controller, self.std = controller, np.asarray(std, dtype=np.float64)
        self.rng = np.random.default_rng(seed)

    def act(self, observation: np.ndarray) -> np.ndarray:
        noise = self.std * self.rng.standard_normal(np.shape(observation))
        return self.controller.act(observation + noise.astype(np.asarray(observation).dtype))

    def reset(self) -> None:
        self.controller.reset()


@dataclass
class TimedController:
    """Wraps a Controller and records the seconds each `act` takes in `seconds`."""

    controller: Controller
    seconds: list[float] = field(default_factory=list)

    def act(self, observation: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        action = self.controller.act(observation)
        self.seconds.append(time.perf_counter() - start)
        return action

    def reset(self) -> None:
        self.controller.reset()
