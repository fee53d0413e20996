"""Pessimistic reward preconditioning (Blondé, Strasser & Kalousis, 2022): trust the learned
reward less where the dynamics are steep.

A forward model f(s, a) -> s' - s is learned on the replay; where the spectral norm of its input
Jacobian exceeds `target`, a reward is scaled down by target / ||J||, never below `floor`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lipctl.agents.buffer import Batch


class ForwardModel(nn.Module):
    """Deterministic state-change model of (observation, action) rows, and the reward scale its
    local steepness gives."""

    def __init__(self, obs_dim: int, act_dim: int, target: float = 1.0, floor: float = 0.7,
                 hidden: Sequence[int] = (100, 100)):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim + act_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.SiLU()]
            width = size
        self.net = nn.Sequential(*layers, nn.Linear(width, obs_dim))
        self.target, self.floor = target, floor

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(inputs)

    def loss(self, batch: Batch) -> Tensor:
        """Mean squared error of the predicted state change."""
        inputs = torch.cat([batch.obs, batch.action], dim=-1)
        return (self(inputs) - (batch.next_obs - batch.obs)).pow(2).sum(-1).mean()

    def jacobian_norms(self, inputs: Tensor) -> Tensor:
        """Spectral norm of d f / d (s, a) at each row of `inputs` [B, n + m] (detached)."""
        single = lambda row: self(row.unsqueeze(0)).squeeze(0)  # noqa: E731
        jacobians = torch.func.vmap(torch.func.jacrev(single))(inputs.detach())
        return torch.linalg.matrix_norm(jacobians, ord=2).detach()

    def reward_scale(self, inputs: Tensor) -> Tensor:
        """clamp(target / ||J||, floor, 1) at each row [B]."""
        norms = self.jacobian_norms(inputs)
        return (self.target / norms.clamp_min(1e-12)).clamp(self.floor, 1.0)
