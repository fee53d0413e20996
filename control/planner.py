"""Sampling-based planning over a learned (or known) model: MPPI, with CEM as an option.

The planner sees the world only through callables on batched torch tensors, so it plans with any
model: `dynamics(state [B, n], action [B, m]) -> (next_state [B, n], reward [B])`, an optional
`terminal_value(state [B, n]) -> [B]` added (discounted) after the last step, an optional
`termination(state, action, next_state) -> bool [B]` after which a rollout earns nothing more,
and an optional `proposal(state [B, n]) -> action [B, m]` whose rollouts are mixed in with the
sampled ones. Every sample is rolled out at once (one batched model call per horizon step).

A planner config (conf/planner/<name>.yaml) names a planner factory with `_partial_: true`: a
callable that takes the model faces as keywords, (dynamics, action_low, action_high,
terminal_value, termination, proposal, seed), and returns a Controller; its other keys are the
planner's settings. `sampling_planner` is the factory of MPPI and CEM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lipctl.envs.action_scale import ActionScale

Dynamics = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Value = Callable[[Tensor], Tensor]
Termination = Callable[[Tensor, Tensor, Tensor], Tensor]
Proposal = Callable[[Tensor], Tensor]
PlannerFactory = Callable[..., Any]  # model faces as keywords -> a Controller (act, reset)

METHODS = ("mppi", "cem")


@dataclass(frozen=True)
class PlannerSettings:
    """method: mppi (exponentially weighted average of all samples, with `temperature` in
    units of the samples' return std, so one value suits any reward scale) or cem (mean and std
    of the `elites` best); `iterations` refinements per step; `noise_std` the initial sampling
    std as a fraction of the action half-range; `proposal_samples` rollouts of the proposal
    policy (with `proposal_noise` the same way) among the `samples`."""

    horizon: int = 5
    samples: int = 512
    iterations: int = 3
    method: str = "mppi"
    temperature: float = 0.1
    elites: int = 64
    noise_std: float = 0.5
    min_std: float = 0.05
    gamma: float = 0.99
    proposal_samples: int = 32
    proposal_noise: float = 0.1

    def __post_init__(self) -> None:
        for name in ("horizon", "samples", "iterations", "elites"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 <= self.proposal_samples < self.samples:
            raise ValueError(f"proposal_samples must be in [0, samples={self.samples}), got "
                             f"{self.proposal_samples}")
        if self.method == "cem" and self.elites > self.samples:
            raise ValueError(f"elites ({self.elites}) must be <= samples ({self.samples})")
        for name in ("temperature", "noise_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_std <= self.noise_std:
            raise ValueError(f"min_std must be in [0, noise_std], got {self.min_std}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")


class Planner:
    """A Controller that plans an action sequence from each observation and applies its first
    action; the rest of the plan (shifted by one step) starts the next step's search."""

    def __init__(self, dynamics: Dynamics, action_low: Sequence[float] | np.ndarray,
                 action_high: Sequence[float] | np.ndarray, settings: PlannerSettings,
                 terminal_value: Value | None = None, termination: Termination | None = None,
                 proposal: Proposal | None = None, seed: int = 0, device: str = "cpu"):
        scale = ActionScale(action_low, action_high)
        self.dynamics, self.terminal_value = dynamics, terminal_value
        self.termination, self.proposal = termination, proposal
        self.settings, self.device = settings, device
        self.low, self.high = (torch.as_tensor(bound, dtype=torch.float32, device=device)
                               for bound in (scale.low, scale.high))
        self.center, self.half_range = scale.tensors(device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.discounts = settings.gamma ** torch.arange(settings.horizon + 1, device=device,
                                                        dtype=torch.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the previous plan (a new episode)."""
        self.plan = self.center.expand(self.settings.horizon, -1).clone()

    def _noise(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)

    @torch.no_grad()
    def returns(self, state: Tensor, actions: Tensor, proposal_rows: int = 0
                ) -> tuple[Tensor, Tensor]:
        """Discounted returns [P + B] from `state` [n] of P = `proposal_rows` rollouts of the
        proposal policy followed by the B action sequences `actions` [B, H, m]; also the
        sequences as applied (clipped to the bounds), [P + B, H, m]."""
        s = self.settings
        rows = proposal_rows + len(actions)
        states = state.expand(rows, -1).clone()
        alive = torch.ones(rows, dtype=torch.bool, device=self.device)
        total = torch.zeros(rows, device=self.device)
        applied = []
        for t in range(s.horizon):
            step_actions = [actions[:, t]]
            if proposal_rows:
                proposed = self.proposal(states[:proposal_rows])
                noise = s.proposal_noise * self.half_range * self._noise(proposed.shape)
                step_actions.insert(0, proposed + noise)
            action = torch.clamp(torch.cat(step_actions), self.low, self.high)
            next_states, reward = self.dynamics(states, action)
            total = total + self.discounts[t] * reward * alive
            if self.termination is not None:
                alive = alive & ~self.termination(states, action, next_states)
            states = next_states
            applied.append(action)
        if self.terminal_value is not None:
            total = total + self.discounts[s.horizon] * self.terminal_value(states) * alive
        return total, torch.stack(applied, 1)

    @torch.no_grad()
    def plan_actions(self, observation: np.ndarray | Tensor) -> Tensor:
        """The refined action sequence [H, m] from `observation`, in the plant's units."""
        s = self.settings
        state = torch.as_tensor(observation, dtype=torch.float32, device=self.device).reshape(-1)
        mean = self.plan
        std = (s.noise_std * self.half_range).expand_as(mean).clone()
        proposal_rows = s.proposal_samples if self.proposal is not None else 0
        sampled = s.samples - proposal_rows
        for _ in range(s.iterations):
            actions = mean + std * self._noise((sampled, s.horizon, mean.shape[-1]))
            actions[0] = mean  # the current plan is always a candidate
            total, applied = self.returns(state, actions, proposal_rows)
            total = torch.nan_to_num(total, nan=-torch.inf)
            if s.method == "mppi":
                scale = total[torch.isfinite(total)].std().clamp_min(1e-6)
                weights = torch.softmax((total - total.max()) / (s.temperature * scale), 0)
            else:
                weights = torch.zeros_like(total)
                weights[total.topk(s.elites).indices] = 1.0 / s.elites
            mean = torch.einsum("b,bhm->hm", weights, applied)
            spread = torch.einsum("b,bhm->hm", weights, (applied - mean).pow(2)).sqrt()
            std = torch.maximum(spread, s.min_std * self.half_range)
        return mean

    def act(self, observation: np.ndarray) -> np.ndarray:
        sequence = self.plan_actions(observation)
        self.plan = torch.cat([sequence[1:], sequence[-1:]])  # warm start of the next step
        return sequence[0].cpu().numpy().astype(np.float64)


def sampling_planner(dynamics: Dynamics, action_low: Sequence[float] | np.ndarray,
                     action_high: Sequence[float] | np.ndarray, *,
                     terminal_value: Value | None = None, termination: Termination | None = None,
                     proposal: Proposal | None = None, seed: int = 0, device: str = "cpu",
                     **settings: Any) -> Planner:
    """MPPI or CEM on the given model, the `PlannerSettings` fields as keywords (the planner
    factory of conf/planner/mppi.yaml and cem.yaml)."""
    return Planner(dynamics, action_low, action_high, PlannerSettings(**settings),
                   terminal_value=terminal_value, termination=termination, proposal=proposal,
                   seed=seed, device=device)


def stand_in_dynamics(state: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
    """A one-state model that stays put and earns nothing: what a planner factory is built on
    to check its settings before a real model is at hand."""
    return state, torch.zeros(len(state), device=state.device)
