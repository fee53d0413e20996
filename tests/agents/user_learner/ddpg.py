"""A learner of a user's own, kept outside lipctl: DDPG (Lillicrap et al. 2016) as one module on
lipctl's critic-learner base, trained by `lipctl train agent/learner=ddpg` with
conf/agent/learner/ddpg.yaml on Hydra's search path."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lipctl.agents.buffer import Batch
from lipctl.agents.critic_learner import CriticLearner
from lipctl.agents.policies import TanhPolicy
from lipctl.agents.td3 import deterministic_actor
from lipctl.lipschitz import post_step


class DDPG(CriticLearner):
    """A deterministic tanh actor trained on the first critic at every update, critic targets
    from the target actor's action (no smoothing), exploration by Gaussian noise."""

    def __init__(self, obs_dim: int, act_dim: int, device: torch.device | str = "cpu",
                 hidden: Sequence[int] = (256, 256), actor_lr: float = 1e-3,
                 exploration_noise: float = 0.1, **critic_options: Any):
        super().__init__(obs_dim, act_dim, deterministic_actor(obs_dim, act_dim, hidden),
                         device, hidden, **critic_options)
        self.exploration_noise = exploration_noise
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self._policy = TanhPolicy(self.actor, act_dim)
        self._target_policy = TanhPolicy(self.actor_target, act_dim)
        self.actor_opt = self.make_optimizer(self.actor, lr=actor_lr)

    def policy(self) -> TanhPolicy:
        return self._policy

    def explore(self, obs: Tensor) -> Tensor:
        action = self._policy(obs)
        return (action + self.exploration_noise * self.streams.randn(action.shape)).clamp(-1, 1)

    def update(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            next_q = self.critic_target(batch.next_obs, self._target_policy(batch.next_obs))[0]
            target = batch.reward + self.gamma * (1.0 - batch.done) * next_q
        weights, metrics = self._critic_step(batch, target)
        actor_loss = -self._policy_value(batch.obs, self._policy(batch.obs), weights)[0].mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        post_step(self.actor)
        self._update_critic_target(weights)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.actor_target.parameters()),
                                 list(self.actor.parameters()), self.tau)
        return {**metrics, "actor_loss": actor_loss.detach()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "actor_target": self.actor_target.state_dict(),
                "actor_opt": self.actor_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.actor_target.load_state_dict(state["actor_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
