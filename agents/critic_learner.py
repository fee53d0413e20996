"""What the off-policy actor-critic learners share: twin critics held as one batched ensemble
module, their target, optimiser, Lipschitz regularisers, certificates and controller."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lipctl.agents.buffer import Batch
from lipctl.agents.policies import PolicyController
from lipctl.agents.stacking import Stacking, seed_state, stack_states
from lipctl.agents.streams import SeedStreams
from lipctl.lipschitz import (
    Certificate,
    LipschitzLinear,
    LipschitzSpec,
    certify,
    post_step,
    robust_loss,
    shared_weights,
)
from lipctl.lipschitz.muon import make_optimizer

EPS_UNITS = ("std", "raw")  # robust_eps in units of the states' per-dimension std, or raw


class TwinCritic(nn.Module):
    """E Q-networks in one batched MLP, each held to the `lipschitz` spec (None: unconstrained).

    With `seeds=S` it holds the E critics of each of S independent runs (E * S members, seed
    k's at rows k*E to k*E + E - 1) and maps [S, B, n] inputs to [S, E, B] values."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], ensemble_size: int = 2,
                 lipschitz: LipschitzSpec | None = None, seeds: int | None = None):
        super().__init__()
        self.ensemble_size, self.seeds = ensemble_size, seeds
        spec = lipschitz or LipschitzSpec()
        self.net = spec.mlp(obs_dim + act_dim, 1, hidden,
                            ensemble_size=ensemble_size * (seeds or 1))

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        """Q-values of shape [E, B] ([S, E, B] with seeds)."""
        x = torch.cat([obs, action], dim=-1)
        if self.seeds is None:
            return self.net(x.expand(self.ensemble_size, *x.shape)).squeeze(-1)
        members = x.unsqueeze(1).expand(-1, self.ensemble_size, -1, -1).flatten(0, 1)
        return self.net(members).squeeze(-1).unflatten(0, (self.seeds, self.ensemble_size))

    def layers(self) -> list[LipschitzLinear]:
        """The linear layers, input first."""
        return [m for m in self.net if isinstance(m, LipschitzLinear)]


class CriticLearner(ABC):
    """An actor-critic learner on actions in [-1, 1] with twin critics and optional Lipschitz
    critic regularisers, all given by one `lipschitz` spec (a LipschitzSpec or a mapping of its
    fields, e.g. the `lipschitz` config group).

    The critics' layers come from the spec's family, held to its certified bound `L` (at a
    level: unit layers and a fixed output scale) or to a per-layer `layer_cap`; a family that
    projects its weights does so after every critic step. `robust_weight > 0` adds the
    adversarial robust loss, penalising the change of Q under a PGD perturbation of the state
    within `robust_eps` (`robust_eps_units="std"`: in units of the per-dimension std of the
    training states, tracked as an exponential moving average of the batches' std; "raw": in
    the state's own units), on the first `robust_batch` rows of each batch (None: all).
    Constrained weights are computed once per update and shared by every forward of its critic
    loss and its actor loss; the target critic is a plain network averaging the critic's
    effective weights (Polyak `tau`).

    `optimizer` trains the critics and the actor: "adam" (Adam at the learner's rates) or
    "muon" (Muon at `muon_lr` on the hidden weight matrices, Adam at those rates on the rest);
    `make_optimizer(network, lr=...)` builds it for a network. `actor` (built by the subclass
    before the critics) is moved to `device`. Exploration and target noise come from the
    learner's own random streams (`streams`, saved with its state).

    `seeds=S` stacks S independent runs in one learner: every network holds S (critics: 2S)
    members, batches are [S, B, ...] (seed k's rows at index k), losses are summed over seeds
    (so each seed's parameters get exactly their own run's gradient) and metrics are [S]
    vectors. `seed_state_dict(k)` is seed k's state as its separate run holds it, and
    `load_seed_state_dicts` stacks such states. The robust loss is not stacked.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        actor: nn.Module,
        device: torch.device | str = "cpu",
        hidden: Sequence[int] = (256, 256),
        critic_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        lipschitz: LipschitzSpec | Mapping[str, Any] | None = None,
        optimizer: str = "adam",
        muon_lr: float = 0.02,
        seeds: int | None = None,
    ):
        spec = LipschitzSpec.of(lipschitz)
        if seeds is not None and spec.robust_weight > 0:
            raise ValueError("the robust loss is not available with stacked seeds: run the "
                             "seeds separately")
        if spec.robust_eps_units not in EPS_UNITS:
            raise ValueError(f"robust_eps_units must be one of {EPS_UNITS}, got "
                             f"{spec.robust_eps_units!r}")
        if spec.robust_batch is not None and spec.robust_batch < 1:
            raise ValueError(f"robust_batch must be >= 1 or None, got {spec.robust_batch!r}")
        self.device = torch.device(device)
        self.gamma, self.tau = gamma, tau
        self.robust = dict(eps=spec.robust_eps, norm=spec.robust_norm, steps=spec.robust_steps)
        self.robust_weight, self.robust_batch = spec.robust_weight, spec.robust_batch
        self.robust_eps_units = spec.robust_eps_units
        # per-dimension std of the training states (EMA of batch stds), the robust loss's unit
        self.state_scale = torch.ones(obs_dim, device=self.device)
        self._state_scale_seen = torch.zeros((), device=self.device)
        self.certificate_tier = spec.certificate_tier
        self.seeds = seeds
        self.streams = SeedStreams(seeds, self.device)
        self.actor = actor.to(self.device)
        self.critic = TwinCritic(obs_dim, act_dim, hidden, lipschitz=spec,
                                 seeds=seeds).to(self.device)
        # The target averages the critic's effective weights (constraints applied), so it is a
        # plain network: no constraint work per target call, and an average of matrices within
        # a spectral-norm ball stays inside it.
        self.critic_target = TwinCritic(obs_dim, act_dim, hidden, seeds=seeds).to(self.device)
        self.critic_target.requires_grad_(False)
        self.make_optimizer = partial(make_optimizer, name=optimizer, muon_lr=muon_lr, fused=True)
        self.critic_opt = self.make_optimizer(self.critic, lr=critic_lr)
        self._target = list(self.critic_target.parameters())
        with torch.no_grad(), shared_weights(self.critic, detach=True) as weights:
            torch._foreach_copy_(self._target, self._effective_parameters(weights))

    @abstractmethod
    def policy(self) -> nn.Module:
        """The deterministic policy: observations [B, n] -> actions in [-1, 1] [B, m]; its
        `mlp` is the un-squashed network whose certified bound bounds it."""

    @abstractmethod
    def explore(self, obs: Tensor) -> Tensor:
        """Exploratory actions in [-1, 1] for observations [B, n] ([S, B, n] with seeds)."""

    def value(self, obs: Tensor, action: Tensor) -> Tensor:
        """The pessimistic action value: the smaller twin critic's Q for observations [B, n]
        and actions in [-1, 1] [B, m], [B]; the critics read in eval mode (no power-iteration
        step), their mode restored after."""
        training = self.critic.training
        self.critic.eval()
        try:
            return self.critic(obs, action).min(-2).values
        finally:
            self.critic.train(training)

    @abstractmethod
    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One learning step on a batch; returns detached metrics."""

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action in [-1, 1] for one observation [n] (with seeds: one per seed, [S, n])."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(-2)
        action = self.policy()(x) if deterministic else self.explore(x)
        return action.squeeze(-2).cpu().numpy()

    def _critic_step(self, batch: Batch, target: Tensor
                     ) -> tuple[dict[nn.Module, Tensor], dict[str, Tensor]]:
        """One gradient step of the critics towards `target` [B]; returns the critic's
        effective weights of this step (for the actor loss and the target) and detached
        metrics."""
        metrics = {}
        with shared_weights(self.critic) as weights:
            q = self.critic(batch.obs, batch.action)
            critic_loss = 0.5 * (q - target.unsqueeze(-2)).pow(2).mean(-1).sum(-1)  # per seed
            if self.robust_weight > 0:
                penalty = self._robust_penalty(batch, q)
                critic_loss = critic_loss + self.robust_weight * penalty
                metrics["robust_loss"] = penalty.detach()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        self.critic_opt.step()
        post_step(self.critic)
        metrics.update(critic_loss=critic_loss.detach(), q_mean=q.detach().mean((-2, -1)))
        return weights, metrics

    def _policy_value(self, obs: Tensor, action: Tensor, weights: dict[nn.Module, Tensor]
                      ) -> Tensor:
        """Q [E, B] through the critic's effective `weights`, differentiable in `action` only
        (an actor loss needs no critic weight gradients)."""
        self.critic.requires_grad_(False)
        with shared_weights(self.critic, detach=True, weights=weights):
            q = self.critic(obs, action)
        self.critic.requires_grad_(True)
        return q

    @torch.no_grad()
    def _update_critic_target(self, weights: dict[nn.Module, Tensor]) -> None:
        """Polyak-average the critic's effective `weights` into the target."""
        torch._foreach_lerp_(self._target, self._effective_parameters(weights), self.tau)

    def _effective_parameters(self, weights: dict[nn.Module, Tensor]) -> list[Tensor]:
        """The target's parameters as the critic has them now: each layer's effective weight
        (from `weights` where constrained) and bias, detached, layer by layer."""
        return [tensor.detach() for layer in self.critic.layers()
                for tensor in (weights.get(layer, layer.weight), layer.bias) if tensor is not None]

    def _robust_penalty(self, batch: Batch, q: Tensor) -> Tensor:
        """The robust loss on the first `robust_batch` rows, with the state perturbed in units
        of `state_scale` (robust_eps_units="std") or raw units; q [E, B] are the critics'
        values on the batch, the loss's reference."""
        rows = slice(None) if self.robust_batch is None else slice(self.robust_batch)
        obs, action, reference = batch.obs[rows], batch.action[rows], q[:, rows]
        if self.robust_eps_units == "raw":
            return robust_loss(lambda s: self.critic(s, action), obs, reference=reference,
                               **self.robust)
        with torch.no_grad():
            std = obs.std(0).clamp_min(1e-6)
            first = self._state_scale_seen == 0
            self.state_scale.copy_(torch.where(first, std, self.state_scale.lerp(std, 0.01)))
            self._state_scale_seen.add_(1)
        scale = self.state_scale
        return robust_loss(lambda z: self.critic(z * scale, action), obs / scale,
                           reference=reference, **self.robust)

    def critic_state_lipschitz(self, obs: Tensor, action: Tensor) -> dict[str, float]:
        """Per critic, the largest input-gradient norm ||dQ/ds||_2 over the rows of (obs,
        action), in eval mode with the action held fixed: a sampled lower bound of the critic's
        Lipschitz constant with respect to the state."""
        self.critic.eval()
        try:
            obs = obs.detach().clone().requires_grad_(True)
            q = self.critic(obs, action.detach())
            norms = {}
            for i in range(self.critic.ensemble_size):
                (grad,) = torch.autograd.grad(q[i].sum(), obs, retain_graph=True)
                norms[f"critic{i}"] = float(torch.linalg.vector_norm(grad, dim=-1).max())
        finally:
            self.critic.train()
        return norms

    def critic_certificates(self, inputs: Tensor | None = None) -> dict[str, Certificate]:
        """Certified upper (and sampled lower, given critic inputs) bound of each critic."""
        return {
            f"critic{i}": certify(self.critic.net, inputs, tier=self.certificate_tier, member=i)
            for i in range(self.critic.ensemble_size)
        }

    # how each entry of `state_dict` stacks over seeds (see lipctl.agents.stacking)
    STACKING: dict[str, Stacking] = {
        "actor": "seed", "critic": "twin", "critic_target": "twin", "state_scale": "shared",
        "state_scale_seen": "shared", "critic_opt": "twin", "streams": "list"}

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "state_scale": self.state_scale.cpu(),
            "state_scale_seen": self._state_scale_seen.cpu(),
            "critic_opt": self.critic_opt.state_dict(),
            "streams": self.streams.state(),
        }

    def seed_state_dict(self, k: int) -> dict:
        """Seed k's state (a stacked learner), as the separate run of seed k holds it."""
        if self.seeds is None or not 0 <= k < self.seeds:
            raise ValueError(f"seed index {k} is not one of this learner's {self.seeds} seeds")
        return seed_state(self.state_dict(), self.STACKING, k)

    def load_seed_state_dicts(self, states: list[dict]) -> None:
        """Load one separate run's state per seed (seed order) into this stacked learner."""
        if self.seeds is None or len(states) != self.seeds:
            raise ValueError(f"a learner of {self.seeds} stacked seeds takes that many states,"
                             f" got {len(states)}")
        self.load_state_dict(stack_states(states, self.STACKING))

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.state_scale.copy_(state["state_scale"])
            self._state_scale_seen.copy_(state["state_scale_seen"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        if "streams" in state:  # files from before the learners had their own streams
            self.streams.set_state(state["streams"])

    def controller(self, action_low: np.ndarray, action_high: np.ndarray,
                   deterministic: bool = True) -> PolicyController:
        """This policy as a closed-loop controller acting in the env's action units."""
        return PolicyController(self, action_low, action_high, deterministic)
