"""The loop's two seams: where training batches come from and where their rewards come from.

The off-policy loop asks a `BatchSource` for every training batch and passes it through a
`RewardSource` before the learner sees it. Plain SAC uses real replay and environment rewards;
model-based RL swaps the batch source (real + model rollouts), adversarial imitation swaps the
reward source (a discriminator). Both may learn between env steps through `on_env_step`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torch import Tensor

from lipctl.agents.buffer import Batch, ReplayBuffer
from lipctl.lipschitz import Certificate


class BatchSource(Protocol):
    """Supplies training batches; may train its own models as the loop steps."""

    seconds: Mapping[str, float]  # cumulative time of the source's own work, by name

    def sample(self, batch_size: int) -> Batch: ...

    def on_env_step(self, step: int) -> Mapping[str, Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RewardSource(Protocol):
    """Decides the rewards a training batch carries; may learn from the batches it labels."""

    seconds: Mapping[str, float]  # cumulative time of the source's own work, by name

    def relabel(self, batch: Batch) -> Batch: ...

    def certificates(self, inputs: Tensor | None = None) -> dict[str, Certificate]:
        """Certificates of the networks the rewards come from (given replay inputs [B, n + m])."""
        ...

    def on_env_step(self, step: int) -> Mapping[str, Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Stateless:
    """A source that neither learns between env steps nor holds state to checkpoint."""

    @property
    def seconds(self) -> Mapping[str, float]:
        return {}

    def on_env_step(self, step: int) -> Mapping[str, Tensor]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ReplaySource(Stateless):
    """Batches drawn uniformly from the real replay buffer (plain SAC)."""

    def __init__(self, buffer: ReplayBuffer):
        self.buffer = buffer

    def sample(self, batch_size: int) -> Batch:
        return self.buffer.sample(batch_size)


class EnvironmentReward(Stateless):
    """Keeps the rewards the environment gave."""

    def relabel(self, batch: Batch) -> Batch:
        return batch

    def certificates(self, inputs: Tensor | None = None) -> dict[str, Certificate]:
        return {}
