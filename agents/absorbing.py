"""Absorbing states for adversarial imitation (DAC, Kostrikov et al. 2019).

An episode that terminates is continued forever in one absorbing state, so a learned reward can
say whether ending the episode is good or bad (otherwise a positive reward biases the learner to
survive, a negative one to die). Observations carry one extra indicator feature: 0 in every real
state, 1 in the absorbing state, whose other features are 0.

`absorb` rewrites a batch of real transitions: each terminal transition (s, a, s', done=1) becomes
(s, a, absorbing, done=0) and brings one absorbing self-transition (absorbing, 0, absorbing, done=0)
along, appended at the end of the batch. `strip` undoes it, but for the terminal next observations,
which the absorbing state replaced (they never enter a bootstrapped target).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from lipctl.agents.buffer import Batch


class AbsorbingIndicator(gym.ObservationWrapper):
    """Appends the absorbing indicator (always 0 in a real state) to a Box observation."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"absorbing states need a flat Box observation, got {space}")
        self.observation_space = gym.spaces.Box(
            np.append(space.low, 0.0).astype(space.dtype),
            np.append(space.high, 1.0).astype(space.dtype), dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.append(observation, 0.0).astype(self.observation_space.dtype)


def with_indicator(obs: Tensor) -> Tensor:
    """Real observations [B, n] -> [B, n + 1] with indicator 0."""
    return torch.cat([obs, obs.new_zeros(*obs.shape[:-1], 1)], dim=-1)


def absorbing_state(obs_dim: int, like: Tensor) -> Tensor:
    """The absorbing state [obs_dim] (indicator included) with `like`'s dtype and device."""
    state = like.new_zeros(obs_dim)
    state[-1] = 1.0
    return state


def is_absorbing(obs: Tensor) -> Tensor:
    """Boolean [B]: which rows of observations with indicator [B, n + 1] are absorbing."""
    return obs[..., -1] > 0.5


def absorb(batch: Batch) -> Batch:
    """The batch (observations with indicator) with terminal transitions led into the absorbing
    state and one absorbing self-transition appended per terminal transition."""
    terminal = batch.done > 0.5
    count = int(terminal.sum())
    if count == 0:
        return batch
    absorbing = absorbing_state(batch.obs.shape[-1], batch.obs)
    next_obs = torch.where(terminal[:, None], absorbing, batch.next_obs)
    loops = absorbing.expand(count, -1)
    return Batch(
        obs=torch.cat([batch.obs, loops]),
        action=torch.cat([batch.action, batch.action.new_zeros(count, batch.action.shape[-1])]),
        reward=torch.cat([batch.reward, batch.reward.new_zeros(count)]),
        next_obs=torch.cat([next_obs, loops]),
        done=batch.done.new_zeros(len(batch.done) + count),
    )


def strip(batch: Batch) -> Batch:
    """Undo `absorb`: drop absorbing self-transitions, mark transitions into the absorbing state
    terminal again (their next observation stays the absorbing one)."""
    keep = ~is_absorbing(batch.obs)
    into_absorbing = is_absorbing(batch.next_obs)
    done = torch.where(into_absorbing, torch.ones_like(batch.done), batch.done)
    return Batch(batch.obs[keep], batch.action[keep], batch.reward[keep], batch.next_obs[keep],
                 done[keep])


class RealStatePolicy(nn.Module):
    """A policy trained on observations with the absorbing indicator, called on the env's own
    observations (appending a constant feature leaves its Lipschitz constant unchanged, so the
    policy's `mlp` still bounds it)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    @property
    def mlp(self) -> nn.Module:
        return self.policy.mlp

    def forward(self, obs: Tensor) -> Tensor:
        return self.policy(with_indicator(obs))
