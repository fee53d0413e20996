"""Pessimistic reward preconditioning (Blondé, Strasser & Kalousis, 2022): trust the learned
reward less where the dynamics are steep.

A forward model f(s, a) -> s' is learned on the replay (as s + a predicted change). Its
gradient penalty on a batch, the mean over rows of max(0, ||d sum f / d(s, a)|| - target)^2,
is divided by the running standard deviation of the penalties seen so far, and the batch's
rewards are scaled by clamp(exp(-penalty / std), floor, 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lipctl.agents.buffer import Batch
from lipctl.lipschitz import input_gradient_norm

STD_EPS = 1e-8


class ForwardModel(nn.Module):
    """Deterministic next-state model of (observation, action) rows, and the reward scale its
    local steepness gives."""

    def __init__(self, obs_dim: int, act_dim: int, target: float = 9.0, floor: float = 0.7,
                 hidden: Sequence[int] = (100, 100)):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim + act_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.SiLU()]
            width = size
        self.net = nn.Sequential(*layers, nn.Linear(width, obs_dim))
        self.obs_dim, self.target, self.floor = obs_dim, target, floor
        # running moments (count, mean, sum of squared deviations) of the batch penalties
        self.register_buffer("penalty_moments", torch.zeros(3, dtype=torch.float64))
        self.last_gradient_norm = float("nan")  # mean over the last scaled batch

    def forward(self, inputs: Tensor) -> Tensor:
        """Predicted next observations [B, n] of (observation, action) rows [B, n + m]."""
        return inputs[..., : self.obs_dim] + self.net(inputs)

    def loss(self, batch: Batch) -> Tensor:
        """Mean squared error of the predicted next observation."""
        inputs = torch.cat([batch.obs, batch.action], dim=-1)
        return (self(inputs) - batch.next_obs).pow(2).sum(-1).mean()

    def gradient_norms(self, inputs: Tensor) -> Tensor:
        """||d sum f / d(s, a)||_2 at each row of `inputs` [B, n + m] (detached)."""
        return input_gradient_norm(self, inputs)

    def penalty_std(self) -> float:
        """Standard deviation of the batch penalties recorded so far (0 before two)."""
        count, _, squares = self.penalty_moments.tolist()
        return (squares / count) ** 0.5 if count >= 2 else 0.0

    @torch.no_grad()
    def _record(self, penalty: float) -> None:
        count, mean, squares = self.penalty_moments.tolist()
        count += 1
        delta = penalty - mean
        mean += delta / count
        self.penalty_moments.copy_(torch.tensor([count, mean, squares + delta * (penalty - mean)]))

    def reward_scale(self, inputs: Tensor) -> Tensor:
        """The scale of the rewards of one batch of rows [B, n + m], a scalar in [floor, 1];
        records the batch's penalty in the running moments."""
        norms = self.gradient_norms(inputs)
        self.last_gradient_norm = float(norms.mean())
        excess = (norms - self.target).clamp_min(0.0)
        penalty = float(excess.pow(2).mean())
        self._record(penalty)
        scale = torch.exp(torch.tensor(-penalty / (self.penalty_std() + STD_EPS)))
        return scale.clamp(self.floor, 1.0).to(inputs.device)
