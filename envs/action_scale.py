"""The affine map between a learner's unit actions in [-1, 1] and a plant's action box: one place
for what policies, planners, MPC and demonstrations convert."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

Array = TypeVar("Array", np.ndarray, Tensor)


class ActionScale:
    """action = center + half_range * unit, with center and half_range from the bounds [low,
    high] of a 1-D box (low < high everywhere). Maps numpy arrays, torch tensors (kept on their
    device and dtype) and CasADi symbols alike."""

    def __init__(self, low: Sequence[float] | np.ndarray, high: Sequence[float] | np.ndarray):
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if low.ndim != 1 or low.shape != high.shape or not np.all(low < high):
            raise ValueError(f"action bounds must be 1-D with low < high, got {low} and {high}")
        self.low, self.high = low, high
        self.center, self.half_range = (high + low) / 2, (high - low) / 2

    def to_env(self, unit: Array) -> Array:
        """Unit actions -> actions in the box's units, in the dtype of `unit`."""
        center, half_range = self._like(unit)
        return center + half_range * unit

    def to_unit(self, action: Array) -> Array:
        """Actions in the box's units -> unit actions, in the dtype of `action`."""
        center, half_range = self._like(action)
        return (action - center) / half_range

    def tensors(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """(center, half_range) as float32 tensors on `device`."""
        return (torch.as_tensor(self.center, dtype=torch.float32, device=device),
                torch.as_tensor(self.half_range, dtype=torch.float32, device=device))

    def _like(self, values: Array) -> tuple[Array, Array]:
        if isinstance(values, Tensor):
            return (torch.as_tensor(self.center, dtype=values.dtype, device=values.device),
                    torch.as_tensor(self.half_range, dtype=values.dtype, device=values.device))
        if isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.floating):
            return self.center.astype(values.dtype), self.half_range.astype(values.dtype)
        return self.center, self.half_range  # float64, also for symbolic (CasADi) values
