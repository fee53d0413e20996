"""Soft actor-critic with twin critics held as one batched ensemble module."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipctl.agents.buffer import Batch
from lipctl.agents.critic_learner import CriticLearner
from lipctl.agents.policies import TanhPolicy, actor_layers
from lipctl.agents.streams import SeedStreams
from lipctl.lipschitz import LipschitzSpec, post_step, shared_weights

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy on actions scaled to [-1, 1]: a trunk and a head giving
    [mean, log_std], held together to the `lipschitz` spec (None: unconstrained); `seeds=S`
    holds S of them (inputs [S, B, n])."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int],
                 lipschitz: LipschitzSpec | Mapping[str, Any] | None = None,
                 seeds: int | None = None):
        super().__init__()
        self.trunk, self.head = actor_layers(obs_dim, 2 * act_dim, hidden, lipschitz, seeds)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.head(self.trunk(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: Tensor, streams: SeedStreams) -> tuple[Tensor, Tensor]:
        """Reparameterised action in [-1, 1] and its log-probability, the noise drawn from
        `streams`."""
        mean, log_std = self(obs)
        pre_tanh = mean + log_std.exp() * streams.randn(mean.shape)
        log_prob = (-0.5 * ((pre_tanh - mean) / log_std.exp()).pow(2) - log_std
                    - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), numerically stable
        log_prob = log_prob - (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), log_prob


class SAC(CriticLearner):
    """SAC learner with automatic entropy tuning; critic and optimiser options as in
    CriticLearner (the temperature always learns with Adam). `actor_lipschitz` holds the
    actor's trunk and head to a LipschitzSpec (or a mapping of its fields; None: unconstrained):
    its layer family, bound `L` (which the policy's certificate then meets), level, activation
    and options; a projection family projects after every actor step."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        device: torch.device | str = "cpu",
        hidden: Sequence[int] = (256, 256),
        actor_lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        init_alpha: float = 1.0,
        target_entropy: float | None = None,
        actor_lipschitz: LipschitzSpec | Mapping[str, Any] | None = None,
        seeds: int | None = None,
        **critic_options: Any,
    ):
        super().__init__(obs_dim, act_dim,
                         Actor(obs_dim, act_dim, hidden, actor_lipschitz, seeds),
                         device, hidden, seeds=seeds, **critic_options)
        self.target_entropy = -float(act_dim) if target_entropy is None else target_entropy
        self._policy = TanhPolicy(nn.Sequential(self.actor.trunk, self.actor.head), act_dim)
        self.log_alpha = torch.full(() if seeds is None else (seeds,), math.log(init_alpha),
                                    device=self.device, requires_grad=True)
        # the trunk and head as one MLP: with optimizer=muon the trunk's last layer is hidden
        self.actor_opt = self.make_optimizer(self._policy.mlp, lr=actor_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=alpha_lr, fused=True)

    def policy(self) -> TanhPolicy:
        """tanh of the Gaussian's mean; its `mlp` is the actor's whole trunk and head."""
        return self._policy

    def explore(self, obs: Tensor) -> Tensor:
        return self.actor.sample(obs, self.streams)[0]

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One gradient step on critics, actor and temperature; returns detached metrics
        (per seed with stacked seeds: each loss is a mean over its seed's batch, and the
        seeds' losses are summed)."""
        alpha = self.log_alpha.exp().detach().unsqueeze(-1)  # [1], or [S, 1] with seeds
        with shared_weights(self.actor):  # a constrained actor's weights, once per update
            with torch.no_grad():
                next_action, next_log_prob = self.actor.sample(batch.next_obs, self.streams)
                next_q = self.critic_target(batch.next_obs, next_action).min(-2).values
                soft_next = next_q - alpha * next_log_prob
                target = batch.reward + self.gamma * (1.0 - batch.done) * soft_next
            weights, metrics = self._critic_step(batch, target)
            action, log_prob = self.actor.sample(batch.obs, self.streams)
        q_pi = self._policy_value(batch.obs, action, weights).min(-2).values
        actor_loss = (alpha * log_prob - q_pi).mean(-1)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        self.actor_opt.step()
        post_step(self.actor)

        log_alpha = self.log_alpha.unsqueeze(-1)
        alpha_loss = -(log_alpha * (log_prob.detach() + self.target_entropy)).mean(-1)
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.sum().backward()
        self.alpha_opt.step()

        self._update_critic_target(weights)
        metrics.update(actor_loss=actor_loss.detach(), alpha=alpha.squeeze(-1),
                       entropy=-log_prob.detach().mean(-1))
        return metrics

    STACKING = {**CriticLearner.STACKING, "log_alpha": "seed", "actor_opt": "seed",
                "alpha_opt": "seed"}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "log_alpha": self.log_alpha.detach().cpu(),
                "actor_opt": self.actor_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
