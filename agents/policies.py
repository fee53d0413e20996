"""Deterministic policies as modules, and any learner's policy as a closed-loop controller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from torch import Tensor, nn

from lipctl.envs.action_scale import ActionScale
from lipctl.lipschitz import LipschitzSpec


def actor_layers(obs_dim: int, out_features: int, hidden: Sequence[int],
                 lipschitz: LipschitzSpec | Mapping[str, Any] | None = None,
                 seeds: int | None = None) -> tuple[nn.Sequential, nn.Module]:
    """An actor MLP held to the `lipschitz` spec (None: unconstrained layers with nn.Linear's
    parameters and initialisation), split into its trunk (every layer but the last, with the
    activations) and its head (the last layer). Run in sequence they are the spec's MLP, so its
    certified bound bounds them. `seeds=S` stacks S actors ([S, B, n] inputs)."""
    mlp = LipschitzSpec.of(lipschitz).mlp(obs_dim, out_features, hidden, ensemble_size=seeds)
    return mlp[:-1], mlp[-1]


class TanhPolicy(nn.Module):
    """obs [B, n] -> tanh(mlp(obs)[:, :act_dim]) in [-1, 1]. Taking the first outputs and tanh
    are 1-Lipschitz, so `mlp`'s certified bound bounds the policy."""

    def __init__(self, mlp: nn.Module, act_dim: int):
        super().__init__()
        self.mlp, self.act_dim = mlp, act_dim

    def forward(self, obs: Tensor) -> Tensor:
        return self.mlp(obs)[..., :self.act_dim].tanh()


class Acting(Protocol):
    """A learner's action in [-1, 1] for one observation."""

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray: ...


class PolicyController:
    """Adapter from a learned policy to control's `act(observation) -> action` protocol."""

    def __init__(self, agent: Acting, action_low: np.ndarray, action_high: np.ndarray,
                 deterministic: bool = True):
        self.agent = agent
        self.deterministic = deterministic
        self.scale = ActionScale(action_low, action_high)

    def act(self, observation: np.ndarray) -> np.ndarray:
        unit = self.agent.act(observation, deterministic=self.deterministic)
        return self.scale.to_env(unit)

    def reset(self) -> None:
        pass
