"""A user's own planner, kept outside lipctl: one step greedy over a grid of actions, on the
model faces lipctl hands every planner factory."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class GreedyPlanner:
    """Applies the grid action with the best model reward plus terminal value one step ahead."""

    def __init__(self, dynamics: Callable, action_low: np.ndarray, action_high: np.ndarray, *,
                 terminal_value: Callable | None = None, termination: Callable | None = None,
                 proposal: Callable | None = None, seed: int = 0, candidates: int = 9):
        if candidates < 2:
            raise ValueError(f"candidates must be >= 2, got {candidates}")
        axes = [torch.linspace(float(lo), float(hi), candidates)
                for lo, hi in zip(action_low, action_high, strict=True)]
        self.actions = torch.cartesian_prod(*axes).reshape(-1, len(axes))
        self.dynamics, self.terminal_value = dynamics, terminal_value

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> np.ndarray:
        state = torch.as_tensor(observation, dtype=torch.float32).expand(len(self.actions), -1)
        next_state, reward = self.dynamics(state, self.actions)
        if self.terminal_value is not None:
            reward = reward + self.terminal_value(next_state)
        return self.actions[reward.argmax()].numpy().astype(np.float64)
