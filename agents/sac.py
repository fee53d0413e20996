"""Soft actor-critic with twin critics held as one batched ensemble module."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipctl.agents.buffer import Batch
from lipctl.lipschitz import (
    Certificate,
    certify,
    lipschitz_mlp,
    robust_loss,
    shared_spectral_weights,
)

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
EPS_UNITS = ("std", "raw")  # robust_eps in units of the states' per-dimension std, or raw


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy on actions scaled to [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2 * act_dim)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.head(self.trunk(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised action in [-1, 1] and its log-probability."""
        mean, log_std = self(obs)
        pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
        log_prob = (-0.5 * ((pre_tanh - mean) / log_std.exp()).pow(2) - log_std
                    - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), numerically stable
        log_prob = log_prob - (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), log_prob

    def deterministic(self, obs: Tensor) -> Tensor:
        return torch.tanh(self(obs)[0])


class TwinCritic(nn.Module):
    """E Q-networks in one batched MLP; each may be held to a spectral Lipschitz bound."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], ensemble_size: int = 2,
                 bound: float | None = None, mode: str = "normalize",
                 layer_bound: float | None = None, free_output: bool = False):
        super().__init__()
        self.ensemble_size = ensemble_size
        self.net = lipschitz_mlp(obs_dim + act_dim, 1, hidden, bound=bound, mode=mode,
                                 ensemble_size=ensemble_size, layer_bound=layer_bound,
                                 free_output=free_output)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        """Q-values of shape [E, B]."""
        x = torch.cat([obs, action], dim=-1)
        return self.net(x.expand(self.ensemble_size, *x.shape)).squeeze(-1)


class SAC:
    """SAC learner with automatic entropy tuning and optional Lipschitz critic regularisers.

    Critic options: `critic_bound` holds every critic to a certified global Lipschitz bound by
    spectral normalisation of each layer, or `critic_layer_bound` holds each layer to that
    spectral norm (`critic_mode="cap"`: sigma <= bound; `critic_free_output`: the output layer
    unconstrained); `robust_weight > 0` adds the adversarial robust loss, penalising the change
    of Q under a PGD perturbation of the state within `robust_eps` (`robust_eps_units="std"`:
    in units of the per-dimension std of the training states, tracked as an exponential moving
    average of the batches' std; "raw": in the state's own units), on the first `robust_batch`
    rows of each batch (None: all). Spectral weights are computed once per update (one power
    iteration) and shared by every forward of its critic loss and its actor loss; the target
    critic is a plain network averaging the critic's effective weights.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        device: torch.device | str = "cpu",
        hidden: Sequence[int] = (256, 256),
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        init_alpha: float = 1.0,
        target_entropy: float | None = None,
        critic_bound: float | None = None,
        critic_mode: str = "normalize",
        critic_layer_bound: float | None = None,
        critic_free_output: bool = False,
        robust_weight: float = 0.0,
        robust_eps: float = 0.0,
        robust_norm: str = "l2",
        robust_steps: int = 1,
        robust_eps_units: str = "std",
        robust_batch: int | None = None,
        certificate_tier: str = "eclipse",
    ):
        if robust_eps_units not in EPS_UNITS:
            raise ValueError(f"robust_eps_units must be one of {EPS_UNITS}, got "
                             f"{robust_eps_units!r}")
        if robust_batch is not None and robust_batch < 1:
            raise ValueError(f"robust_batch must be >= 1 or None, got {robust_batch!r}")
        self.device = torch.device(device)
        self.gamma, self.tau = gamma, tau
        self.robust = dict(eps=robust_eps, norm=robust_norm, steps=robust_steps)
        self.robust_weight, self.robust_batch = robust_weight, robust_batch
        self.robust_eps_units = robust_eps_units
        # per-dimension std of the training states (EMA of batch stds), the robust loss's unit
        self.state_scale = torch.ones(obs_dim, device=self.device)
        self._state_scale_seen = torch.zeros((), device=self.device)
        self.certificate_tier = certificate_tier
        self.target_entropy = -float(act_dim) if target_entropy is None else target_entropy
        self.actor = Actor(obs_dim, act_dim, hidden).to(self.device)
        self.critic = TwinCritic(obs_dim, act_dim, hidden, bound=critic_bound, mode=critic_mode,
                                 layer_bound=critic_layer_bound,
                                 free_output=critic_free_output).to(self.device)
        # The target averages the critic's effective weights (spectral norms applied), so it is
        # a plain network: no power iteration per target call, and an average of capped
        # matrices is itself capped.
        self.critic_target = TwinCritic(obs_dim, act_dim, hidden).to(self.device)
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(init_alpha), device=self.device, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=critic_lr, fused=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=alpha_lr, fused=True)
        self._target = list(self.critic_target.parameters())
        with torch.no_grad(), shared_spectral_weights(self.critic, detach=True) as weights:
            torch._foreach_copy_(self._target, self._effective_parameters(weights))

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action in [-1, 1] for one observation."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
        action = self.actor.deterministic(x) if deterministic else self.actor.sample(x)[0]
        return action.squeeze(0).cpu().numpy()

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One gradient step on critics, actor and temperature; returns detached metrics."""
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(batch.next_obs)
            next_q = self.critic_target(batch.next_obs, next_action).min(0).values
            soft_next = next_q - alpha * next_log_prob
            target = batch.reward + self.gamma * (1.0 - batch.done) * soft_next
        metrics = {}
        with shared_spectral_weights(self.critic) as weights:
            q = self.critic(batch.obs, batch.action)
            critic_loss = 0.5 * (q - target).pow(2).mean(-1).sum()
            if self.robust_weight > 0:
                penalty = self._robust_penalty(batch, q)
                critic_loss = critic_loss + self.robust_weight * penalty
                metrics["robust_loss"] = penalty.detach()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        action, log_prob = self.actor.sample(batch.obs)
        self.critic.requires_grad_(False)  # the actor loss needs no critic weight gradients
        # through the critic's effective weights of this update (those of the critic loss)
        with shared_spectral_weights(self.critic, detach=True, weights=weights):
            q_pi = self.critic(batch.obs, action).min(0).values
        self.critic.requires_grad_(True)
        actor_loss = (alpha * log_prob - q_pi).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            torch._foreach_lerp_(self._target, self._effective_parameters(weights), self.tau)
        metrics.update(critic_loss=critic_loss.detach(), actor_loss=actor_loss.detach(),
                       alpha=alpha, q_mean=q.detach().mean(), entropy=-log_prob.detach().mean())
        return metrics

    def _effective_parameters(self, weights: dict[nn.Module, Tensor]) -> list[Tensor]:
        """The critic's parameters in the target's order, each constrained weight replaced by
        its effective weight from `weights` (detached)."""
        replaced = {id(layer.weight): w.detach() for layer, w in weights.items()}
        return [replaced.get(id(p), p.detach()) for p in self.critic.parameters()]

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

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().cpu(),
            "state_scale": self.state_scale.cpu(),
            "state_scale_seen": self._state_scale_seen.cpu(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
            self.state_scale.copy_(state["state_scale"])
            self._state_scale_seen.copy_(state["state_scale_seen"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])

    def controller(self, action_low: np.ndarray, action_high: np.ndarray,
                   deterministic: bool = True) -> PolicyController:
        """This policy as a closed-loop controller acting in the env's action units."""
        return PolicyController(self, action_low, action_high, deterministic)


class PolicyController:
    """Adapter from a learned policy to control's `act(observation) -> action` protocol."""

    def __init__(self, agent: SAC, action_low: np.ndarray, action_high: np.ndarray,
                 deterministic: bool = True):
        self.agent = agent
        self.deterministic = deterministic
        self.center = (action_high + action_low) / 2
        self.half_range = (action_high - action_low) / 2

    def act(self, observation: np.ndarray) -> np.ndarray:
        unit = self.agent.act(observation, deterministic=self.deterministic)
        return (self.center + self.half_range * unit).astype(np.float32)

    def reset(self) -> None:
        pass
