"""MBPO as a batch source: real replay mixed with short rollouts of a learned dynamics model.

Every `model_train_every` env steps (once `min_real_steps` are stored) the source refits its
dynamics model on the whole real buffer, then branches `rollouts_per_retrain` rollouts from real
start states with the current policy, of a length scheduled linearly in env steps, into a model
buffer. The learner's batches are a `real_ratio` share of real transitions, the rest model ones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from lipctl.agents.buffer import Batch, ReplayBuffer
from lipctl.agents.dynamics import (
    DynamicsEnsemble,
    check_training_args,
    train_model,
    transition_pairs,
)
from lipctl.agents.termination import TerminationFn


class Policy(Protocol):
    """What rollouts need of the learner: exploratory actions in [-1, 1] for a batch of
    states."""

    def explore(self, obs: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class MBPOSettings:
    """MBPO's schedule; an "epoch" of retention is one retrain period (`model_train_every`
    env steps), so MBPO's one 1000-step epoch at a retrain every 250 steps is retain_epochs=4.

    `rollout_schedule` is [start_step, end_step, min_length, max_length]: the rollout length is
    min_length until start_step, grows linearly to max_length at end_step and stays there.
    """

    model_train_every: int = 250
    min_real_steps: int = 1000
    rollouts_per_retrain: int = 100_000
    rollout_schedule: Sequence[int] = (0, 0, 1, 1)
    retain_epochs: int = 4
    real_ratio: float = 0.05
    model_lr: float = 1e-3
    model_weight_decay: float = 5e-5
    model_batch_size: int = 256
    model_holdout_ratio: float = 0.2
    model_max_epochs: int | None = None
    model_patience: int = 5
    rollout_chunk: int = 10_000  # rollouts branched at once: bounds the rollout's memory

    def __post_init__(self):
        schedule = tuple(self.rollout_schedule)
        if len(schedule) != 4 or not all(isinstance(v, int) for v in schedule) or not (
                schedule[0] <= schedule[1] and 1 <= schedule[2] <= schedule[3]):
            raise ValueError(
                "rollout_schedule must be [start_step, end_step, min_length, max_length] of "
                "integers with start_step <= end_step and 1 <= min_length <= max_length, got "
                f"{list(schedule)}")
        object.__setattr__(self, "rollout_schedule", schedule)
        if not 0 <= self.real_ratio <= 1:
            raise ValueError(f"real_ratio must be in [0, 1], got {self.real_ratio}")
        for name in ("model_train_every", "min_real_steps", "rollouts_per_retrain",
                     "retain_epochs", "rollout_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.model_lr > 0:
            raise ValueError(f"model_lr must be > 0, got {self.model_lr}")
        if not self.model_weight_decay >= 0:
            raise ValueError(f"model_weight_decay must be >= 0, got {self.model_weight_decay}")
        check_training_args(self.model_holdout_ratio, self.model_batch_size,
                            self.model_max_epochs, self.model_patience, prefix="model_")

    def rollout_length(self, step: int) -> int:
        """Scheduled rollout length at env step `step`."""
        start, end, low, high = self.rollout_schedule
        if step >= end:
            return high
        if step <= start:
            return low
        return int(low + (step - start) / (end - start) * (high - low))

    def model_buffer_capacity(self, length: int) -> int:
        """Rows kept of the model rollouts: `retain_epochs` retrains' worth at `length`."""
        return self.rollouts_per_retrain * length * self.retain_epochs


class ModelBuffer(ReplayBuffer):
    """Replay buffer for model rollouts: written a batch at a time, resizable keeping the newest."""

    def add_batch(self, batch: Batch) -> None:
        """Store rows [n, ...] (done as 0/1 or bool), overwriting the oldest once full."""
        n = len(batch.obs)
        keep = slice(max(0, n - self.capacity), n)
        rows = (self.position + torch.arange(n, device=self.device)[keep]) % self.capacity
        for name, value in batch._asdict().items():
            self._fields[name][rows] = value[keep].to(torch.float32)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def resize(self, capacity: int) -> None:
        """Change the capacity, keeping the newest rows that fit."""
        if capacity == self.capacity:
            return
        age_order = torch.arange(self.size, device=self.device)
        if self.size == self.capacity:
            age_order = (age_order + self.position) % self.capacity
        kept = age_order[max(0, self.size - capacity):]
        self._fields = {name: torch.cat([t[kept], t.new_zeros(capacity - len(kept), *t.shape[1:])])
                        for name, t in self._fields.items()}
        self.capacity, self.size = capacity, len(kept)
        self.position = self.size % capacity


def _concat(first: Batch, second: Batch) -> Batch:
    return Batch(*(torch.cat(pair) for pair in zip(first, second, strict=True)))


class MBPOSource:
    """Batch source of MBPO: trains `model` on `buffer`'s real data and mixes in its rollouts."""

    def __init__(
        self,
        buffer: ReplayBuffer,
        model: DynamicsEnsemble,
        termination: TerminationFn,
        policy: Policy,
        settings: MBPOSettings | None = None,
        seed: int = 0,
    ):
        self.real, self.termination, self.policy = buffer, termination, policy
        self.settings = settings or MBPOSettings()
        self.device = buffer.device
        self.model = model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.settings.model_lr,
                                          weight_decay=self.settings.model_weight_decay)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.seconds = {"model_train": 0.0, "rollout": 0.0}  # cumulative
        capacity = self.settings.model_buffer_capacity(self.settings.rollout_length(0))
        self.model_buffer = ModelBuffer(capacity, model.obs_dim, model.act_dim, self.device, seed)

    def on_env_step(self, step: int) -> Mapping[str, Tensor]:
        """Every `model_train_every` steps after `min_real_steps`: retrain, then roll out."""
        s = self.settings
        if step < s.min_real_steps or step % s.model_train_every:
            return {}
        metrics = {**self.fit_model(), **self.rollout(s.rollout_length(step))}
        self.seconds["model_train"] += float(metrics["model_train_seconds"])
        self.seconds["rollout"] += float(metrics["rollout_seconds"])
        return metrics

    def fit_model(self) -> dict[str, Tensor]:
        """Refit the dynamics model on every stored real transition."""
        s = self.settings
        real = self.real.state_dict()["fields"]  # the filled rows, the buffer's public view
        inputs, targets = transition_pairs(*(real[name].to(self.device)
                                             for name in ("obs", "action", "reward", "next_obs")))
        result = train_model(self.model, self.optimizer, inputs, targets,
                             holdout_ratio=s.model_holdout_ratio, batch_size=s.model_batch_size,
                             max_epochs=s.model_max_epochs, patience=s.model_patience,
                             generator=self.generator)
        return {"model_holdout_mse": result["holdout_mse"], "model_epochs": result["epochs"],
                "model_train_seconds": result["train_seconds"]}

    @torch.no_grad()
    def rollout(self, length: int) -> dict[str, Tensor]:
        """Branch `rollouts_per_retrain` rollouts of up to `length` model steps from real states
        into the model buffer, `rollout_chunk` of them at a time (so memory does not grow with
        the number of rollouts); a rollout stops at the first step the termination rule flags."""
        start = time.perf_counter()
        self.model_buffer.resize(self.settings.model_buffer_capacity(length))
        starts = self.real.sample(self.settings.rollouts_per_retrain).obs
        for obs in starts.split(self.settings.rollout_chunk):
            for _ in range(length):
                action = self.policy.explore(obs)
                next_obs, reward = self.model.sample_step(obs, action, self.generator)
                done = self.termination(obs, action, next_obs)
                self.model_buffer.add_batch(Batch(obs, action, reward, next_obs, done))
                obs = next_obs[~done]
                if len(obs) == 0:
                    break
        return {"rollout_length": torch.tensor(length),
                "model_buffer_size": torch.tensor(len(self.model_buffer)),
                "rollout_seconds": torch.tensor(time.perf_counter() - start)}

    def sample(self, batch_size: int) -> Batch:
        """`real_ratio` of the rows (rounded down) from real replay, the rest from the model
        buffer; all real until the first rollouts exist."""
        n_real = int(batch_size * self.settings.real_ratio)
        if len(self.model_buffer) == 0 or n_real == batch_size:
            return self.real.sample(batch_size)
        model_batch = self.model_buffer.sample(batch_size - n_real)
        if n_real == 0:
            return model_batch
        return _concat(self.real.sample(n_real), model_batch)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "model_buffer": self.model_buffer.state_dict(),
            "model_buffer_capacity": self.model_buffer.capacity,
            "generator": self.generator.get_state(),
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.model_buffer.resize(state["model_buffer_capacity"])
        self.model_buffer.load_state_dict(state["model_buffer"])
        self.generator.set_state(state["generator"])
        self.seconds = dict(state["seconds"])
