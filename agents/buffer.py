"""Replay buffer held as preallocated float32 tensors on the agent's device."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


def evenly_spaced(rows: int, count: int, device: torch.device | str = "cpu") -> Tensor:
    """Indices of min(count, rows) rows evenly spaced over `rows` (no randomness)."""
    return torch.linspace(0, rows - 1, min(count, rows), device=device).long()

class Batch(NamedTuple):
    """A batch of transitions; `done` is 1.0 where the episode terminated (not truncated)."""

    obs: Tensor
    action: Tensor
    reward: Tensor
    next_obs: Tensor
    done: Tensor


class ReplayBuffer:
    """Ring buffer of transitions stored on `device`, sampled uniformly with its own generator."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str,
                 seed: int = 0):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.device = torch.device(device)
        self._fields = {
            "obs": torch.zeros(capacity, obs_dim, device=self.device),
            "action": torch.zeros(capacity, act_dim, device=self.device),
            "reward": torch.zeros(capacity, device=self.device),
            "next_obs": torch.zeros(capacity, obs_dim, device=self.device),
            "done": torch.zeros(capacity, device=self.device),
        }
        self.position = 0
        self.size = 0
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def megabytes(self) -> float:
        """Memory held by the preallocated storage."""
        return sum(t.numel() * t.element_size() for t in self._fields.values()) / 2**20

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray,
            terminated: bool) -> None:
        """Store one transition, overwriting the oldest once full."""
        row = self.position
        f = self._fields
        f["obs"][row] = torch.as_tensor(obs, dtype=torch.float32)
        f["action"][row] = torch.as_tensor(action, dtype=torch.float32)
        f["reward"][row] = float(reward)
        f["next_obs"][row] = torch.as_tensor(next_obs, dtype=torch.float32)
        f["done"][row] = float(terminated)
        self.position = (row + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        """Uniform sample with replacement from the stored transitions."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(self.size, (batch_size,), device=self.device,
                              generator=self.generator)
        return Batch(**{name: t[index] for name, t in self._fields.items()})

    def spread(self, count: int) -> Batch:
        """`count` stored transitions evenly spaced over the filled rows (no randomness)."""
        index = evenly_spaced(self.size, count, self.device)
        return Batch(**{name: t[index] for name, t in self._fields.items()})

    def state_dict(self) -> dict:
        """Stored rows (only the filled part), position and sampling generator state."""
        return {
            "fields": {name: t[: self.size].cpu() for name, t in self._fields.items()},
            "position": self.position,
            "size": self.size,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`. A full buffer loaded into a larger one (a resumed run given more
        steps) has its rows put oldest first, and fills on after them."""
        size, position = state["size"], state["position"]
        if size > self.capacity:
            raise ValueError(f"checkpoint buffer holds {size} rows, capacity is {self.capacity}")
        grown = size < self.capacity and position != size
        for name, t in self._fields.items():
            rows = state["fields"][name]
            t[:size] = (rows.roll(-position, 0) if grown else rows).to(self.device)
        self.position = size if grown else position
        self.size = size
        self.generator.set_state(state["generator"])
