"""Bounded perturbations of the measured state: the controller sees observation + delta, while
the plant's true state and its reward are untouched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lipctl.lipschitz import project_to_ball
from lipctl.lipschitz.regularizers import NORMS

Perturb = Callable[[np.ndarray], np.ndarray]  # clean observation -> delta


def check_perturbation(eps: float, norm: str) -> None:
    """ValueError unless eps is a finite number >= 0 and norm is "l2" or "linf"."""
    if not (isinstance(eps, (int, float)) and np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def vector_norm(delta: np.ndarray, norm: str) -> float:
    """||delta|| in the l2 or linf norm."""
    return float(np.linalg.norm(np.ravel(delta), ord=2 if norm == "l2" else np.inf))


class PerturbedObservation(gym.Wrapper):
    """Hands the controller observation + delta, with delta = perturb(observation) projected
    onto the ball ||delta|| <= eps (l2 or linf), after every reset and step.

    The plant steps on its own state, so rewards and termination are those of the true state.
    `info["clean_observation"]` holds the unperturbed observation and
    `info["perturbation_norm"]` the norm of the delta applied.
    """

    def __init__(self, env: gym.Env, perturb: Perturb, eps: float, norm: str = "l2"):
        super().__init__(env)
        check_perturbation(eps, norm)
        self.perturb, self.eps, self.norm = perturb, float(eps), norm

    def _perturbed(self, observation: np.ndarray, info: dict[str, Any]
                   ) -> tuple[np.ndarray, dict[str, Any]]:
        delta = np.asarray(self.perturb(observation), dtype=np.float64).reshape(1, -1)
        delta = project_to_ball(torch.from_numpy(delta), self.eps, self.norm).numpy()[0]
        clean = np.asarray(observation)
        info = {**info, "clean_observation": clean,
                "perturbation_norm": vector_norm(delta, self.norm)}
        return (clean + delta.reshape(clean.shape)).astype(clean.dtype), info

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        return self._perturbed(*self.env.reset(**kwargs))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        observation, info = self._perturbed(observation, info)
        return observation, reward, terminated, truncated, info


class ScaledObservation(gym.ObservationWrapper):
    """Observations divided by a fixed per-dimension `scale` (e.g. the states' std), so that a
    perturbation of radius eps on top of it moves dimension i by eps * scale_i at most."""

    def __init__(self, env: gym.Env, scale: np.ndarray):
        super().__init__(env)
        space = env.observation_space
        self.scale = np.asarray(scale, dtype=np.float64).reshape(space.shape)
        if not np.all(np.isfinite(self.scale) & (self.scale > 0)):
            raise ValueError(f"scale must be finite and > 0 in every dimension, got {scale!r}")
        self.observation_space = gym.spaces.Box((space.low / self.scale).astype(space.dtype),
                                                (space.high / self.scale).astype(space.dtype),
                                                dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return (observation / self.scale).astype(np.asarray(observation).dtype)


class SphereNoise:
    """Random deltas drawn uniformly on the sphere ||delta|| = eps (not inside the ball), so
    that noise and an adversary of the same eps move the measurement equally far. l2: a
    normalised Gaussian direction; linf: uniform on the cube's surface (a random face, then a
    uniform point on it). Seeded: the same seed gives the same deltas."""

    def __init__(self, eps: float, norm: str = "l2", seed: int | None = None):
        check_perturbation(eps, norm)
        self.eps, self.norm = float(eps), norm
        self.rng = np.random.default_rng(seed)

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        n = np.size(observation)
        if self.norm == "linf":
            delta = self.rng.uniform(-self.eps, self.eps, n)
            delta[self.rng.integers(n)] = self.eps * self.rng.choice((-1.0, 1.0))
            return delta
        direction = self.rng.standard_normal(n)
        return self.eps * direction / max(np.linalg.norm(direction), 1e-300)
