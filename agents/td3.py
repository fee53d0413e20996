"""Twin delayed deep deterministic policy gradient (TD3, Fujimoto et al. 2018)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lipctl.agents.buffer import Batch
from lipctl.agents.critic_learner import CriticLearner
from lipctl.agents.policies import TanhPolicy, actor_layers
from lipctl.lipschitz import LipschitzSpec, post_step


def deterministic_actor(obs_dim: int, act_dim: int, hidden: Sequence[int],
                        lipschitz: LipschitzSpec | Mapping[str, Any] | None = None,
                        seeds: int | None = None) -> nn.Sequential:
    """The un-squashed actor MLP held to the `lipschitz` spec: its trunk and a head of size
    act_dim (`seeds=S`: S of them stacked)."""
    return nn.Sequential(*actor_layers(obs_dim, act_dim, hidden, lipschitz, seeds))


class TD3(CriticLearner):
    """TD3: a deterministic tanh actor trained on the first critic, clipped double-Q targets
    with target policy smoothing (Gaussian noise of std `target_noise` clipped at `noise_clip`,
    in [-1, 1] action units), actor and targets updated every `policy_delay` critic updates,
    exploration by Gaussian noise of std `exploration_noise`. Critic and optimiser options as in
    CriticLearner; `actor_lipschitz` holds the actor to a LipschitzSpec as in SAC."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        device: torch.device | str = "cpu",
        hidden: Sequence[int] = (256, 256),
        actor_lr: float = 3e-4,
        policy_delay: int = 2,
        exploration_noise: float = 0.1,
        target_noise: float = 0.2,
        noise_clip: float = 0.5,
        actor_lipschitz: LipschitzSpec | Mapping[str, Any] | None = None,
        seeds: int | None = None,
        **critic_options: Any,
    ):
        if policy_delay < 1:
            raise ValueError(f"policy_delay must be >= 1, got {policy_delay!r}")
        for name, value in (("exploration_noise", exploration_noise),
                            ("target_noise", target_noise), ("noise_clip", noise_clip)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        super().__init__(obs_dim, act_dim,
                         deterministic_actor(obs_dim, act_dim, hidden, actor_lipschitz, seeds),
                         device, hidden, seeds=seeds, **critic_options)
        self.policy_delay = policy_delay
        self.exploration_noise, self.target_noise = exploration_noise, target_noise
        self.noise_clip = noise_clip
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self._policy = TanhPolicy(self.actor, act_dim)
        self._target_policy = TanhPolicy(self.actor_target, act_dim)
        self.actor_opt = self.make_optimizer(self.actor, lr=actor_lr)
        self.updates = 0  # critic updates so far; the actor follows every policy_delay-th

    def policy(self) -> TanhPolicy:
        return self._policy

    def explore(self, obs: Tensor) -> Tensor:
        action = self._policy(obs)
        noise = self.streams.randn(action.shape)
        return (action + self.exploration_noise * noise).clamp(-1.0, 1.0)

    def smoothed_target_action(self, obs: Tensor) -> Tensor:
        """The target policy's action plus clipped Gaussian noise, clipped to [-1, 1]."""
        action = self._target_policy(obs)
        noise = (self.target_noise * self.streams.randn(action.shape)).clamp(-self.noise_clip,
                                                                             self.noise_clip)
        return (action + noise).clamp(-1.0, 1.0)

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One critic step; every `policy_delay`-th call also an actor step and a Polyak step
        of both targets. Returns detached metrics (actor_loss only on actor steps)."""
        with torch.no_grad():
            next_action = self.smoothed_target_action(batch.next_obs)
            next_q = self.critic_target(batch.next_obs, next_action).min(-2).values
            target = batch.reward + self.gamma * (1.0 - batch.done) * next_q
        weights, metrics = self._critic_step(batch, target)
        self.updates += 1
        if self.updates % self.policy_delay == 0:
            q_pi = self._policy_value(batch.obs, self._policy(batch.obs), weights)[..., 0, :]
            actor_loss = -q_pi.mean(-1)  # per seed with stacked seeds, summed below
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.sum().backward()
            self.actor_opt.step()
            post_step(self.actor)
            self._update_critic_target(weights)
            with torch.no_grad():
                torch._foreach_lerp_(list(self.actor_target.parameters()),
                                     list(self.actor.parameters()), self.tau)
            metrics["actor_loss"] = actor_loss.detach()
        return metrics

    STACKING = {**CriticLearner.STACKING, "actor_target": "seed", "actor_opt": "seed",
                "updates": "shared"}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "actor_target": self.actor_target.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.actor_target.load_state_dict(state["actor_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.updates = state["updates"]
