"""Termination rules of gymnasium environments as pure functions of batched transitions.

Each rule maps (obs [B, o], action [B, a], next_obs [B, o]) to a bool tensor [B] that is True
where the real environment would report `terminated`. The rules assume the environments'
default constructor arguments: default healthy ranges, and the v5 observation layouts that
exclude the x (and, for Ant and Humanoid, y) position, so that next_obs[:, 0] is the torso
height of the walkers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def never(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Environments that only truncate (HalfCheetah, Pendulum)."""
    return torch.zeros(len(next_obs), dtype=torch.bool, device=next_obs.device)


def hopper(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Unhealthy: height <= 0.7, |torso angle| >= 0.2, or any later entry outside (-100, 100)."""
    height, angle = next_obs[:, 0], next_obs[:, 1]
    healthy = (height > 0.7) & (angle.abs() < 0.2) & (next_obs[:, 1:].abs() < 100).all(-1)
    return ~healthy


def walker2d(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Unhealthy: height outside (0.8, 2) or torso angle outside (-1, 1)."""
    height, angle = next_obs[:, 0], next_obs[:, 1]
    return ~((height > 0.8) & (height < 2.0) & (angle.abs() < 1.0))


def ant(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Unhealthy: a non-finite observation or height outside [0.2, 1]."""
    height = next_obs[:, 0]
    return ~(torch.isfinite(next_obs).all(-1) & (height >= 0.2) & (height <= 1.0))


def humanoid(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Unhealthy: height outside (1, 2)."""
    height = next_obs[:, 0]
    return ~((height > 1.0) & (height < 2.0))


def inverted_pendulum(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Fallen: a non-finite observation or |pole angle| > 0.2."""
    return ~torch.isfinite(next_obs).all(-1) | (next_obs[:, 1].abs() > 0.2)


def inverted_double_pendulum(obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
    """Fallen: a non-finite observation or the tip at height <= 1 (two 0.6-long poles; the
    observation holds sin and cos of both hinge angles at columns 1-4)."""
    sin1, sin2, cos1, cos2 = next_obs[:, 1], next_obs[:, 2], next_obs[:, 3], next_obs[:, 4]
    tip = 0.6 * cos1 + 0.6 * (cos1 * cos2 - sin1 * sin2)
    return ~torch.isfinite(next_obs).all(-1) | (tip <= 1.0)


TERMINATIONS: dict[str, TerminationFn] = {
    "Hopper-v5": hopper,
    "Walker2d-v5": walker2d,
    "Ant-v5": ant,
    "Humanoid-v5": humanoid,
    "HalfCheetah-v5": never,
    "InvertedPendulum-v5": inverted_pendulum,
    "InvertedDoublePendulum-v5": inverted_double_pendulum,
    "Pendulum-v1": never,
}


def termination_fn(env_id: str) -> TerminationFn:
    """The termination rule of `env_id`; ValueError for an env without one."""
    if env_id not in TERMINATIONS:
        raise ValueError(f"no termination function for env '{env_id}'; known: "
                         f"{', '.join(TERMINATIONS)}")
    return TERMINATIONS[env_id]
