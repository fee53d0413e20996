"""Off-policy adversarial imitation (DAC/SAM-style GAIL) at the loop's reward seam.

The discriminator learns to tell expert transitions from the learner's replay; every training
batch the loop samples is relabelled with rewards from the discriminator as it is at that moment.
Its Lipschitzness is kept by a gradient penalty and/or spectral normalisation (Blondé, Strasser &
Kalousis, 2022), with the reference recipe's entropy bonus and one-sided label smoothing;
optionally the reward is preconditioned pessimistically by a learned forward model (see
agents/preconditioning.py), and the scale it applies is reported.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lipctl.agents.absorbing import absorb, with_indicator
from lipctl.agents.buffer import Batch, ReplayBuffer, evenly_spaced
from lipctl.agents.discriminator import (
    PENALTY_POINTS,
    REWARD_FORMS,
    Discriminator,
    discriminator_loss,
)
from lipctl.agents.preconditioning import ForwardModel
from lipctl.agents.trainer import CERTIFICATE_ROWS
from lipctl.envs.action_scale import ActionScale
from lipctl.envs.demos import Demos
from lipctl.lipschitz import Certificate, certify, post_step
from lipctl.lipschitz.muon import make_optimizer


@dataclass(frozen=True)
class GAILSettings:
    """How the discriminator learns and how its rewards are formed.

    penalty: where the gradient penalty on D's input gradient is held ("none", "interpolate"
    between expert and policy rows, "expert" or "policy" rows plus Gaussian noise of
    `penalty_noise_std`); `penalty_k` is its target norm, `penalty_weight` its weight.
    entropy_weight: bonus on the entropy of D's outputs; expert_label_min/max: expert rows are
    labelled uniformly in this range (one-sided label smoothing; 1, 1: none).
    preconditioning: scale each relabelled batch's rewards by clamp(exp(-p / std(p)), floor, 1),
    p the forward model's gradient penalty (norms above `precondition_target`) on the batch.
    """

    absorbing: bool = True
    reward_form: str = "minus_log_one_minus_d"
    lr: float = 3e-4
    batch_size: int = 256
    update_every: int = 1
    penalty: str = "interpolate"
    penalty_k: float = 1.0
    penalty_weight: float = 10.0
    penalty_one_sided: bool = True
    penalty_noise_std: float = 0.1
    entropy_weight: float = 0.0
    expert_label_min: float = 1.0
    expert_label_max: float = 1.0
    preconditioning: bool = False
    precondition_target: float = 9.0
    precondition_floor: float = 0.7
    model_lr: float = 1e-3

    def __post_init__(self):
        if self.reward_form not in REWARD_FORMS:
            raise ValueError(f"reward_form must be one of {tuple(REWARD_FORMS)}, "
                             f"got {self.reward_form!r}")
        if self.penalty not in PENALTY_POINTS:
            raise ValueError(f"penalty must be one of {PENALTY_POINTS}, got {self.penalty!r}")
        for name in ("lr", "model_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("penalty_k", "penalty_weight", "penalty_noise_std", "entropy_weight",
                     "precondition_target"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "update_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.expert_label_min <= self.expert_label_max:
            raise ValueError(f"expert_label_min must be in [0, expert_label_max = "
                             f"{self.expert_label_max}], got {self.expert_label_min}")
        if not 0 < self.precondition_floor <= 1:
            raise ValueError(f"precondition_floor must be in (0, 1], got "
                             f"{self.precondition_floor}")


def expert_batch(demos: Demos, action_low: np.ndarray, action_high: np.ndarray, absorbing: bool,
                 device: torch.device | str) -> Batch:
    """The demonstrations as one batch in the learner's terms: actions scaled to [-1, 1],
    observations with the absorbing indicator and terminal transitions absorbed if `absorbing`."""
    def tensor(values: np.ndarray) -> Tensor:
        return torch.as_tensor(values, dtype=torch.float32, device=device)

    obs, next_obs = tensor(demos.observations), tensor(demos.next_observations)
    unit_actions = ActionScale(action_low, action_high).to_unit(demos.actions)
    batch = Batch(obs, tensor(unit_actions), tensor(demos.rewards),
                  next_obs, tensor(demos.terminated))
    if not absorbing:
        return batch
    return absorb(batch._replace(obs=with_indicator(obs), next_obs=with_indicator(next_obs)))


SCALE_WINDOW = 1000  # relabelled batches the reported preconditioning scale covers


def _inputs(batch: Batch) -> Tensor:
    return torch.cat([batch.obs, batch.action], dim=-1)


class GAILReward:
    """Reward source of off-policy GAIL: learns a discriminator between `expert` transitions and
    `buffer`'s, and relabels each sampled batch with the current discriminator's rewards."""

    def __init__(self, expert: Batch, buffer: ReplayBuffer, discriminator: Discriminator,
                 settings: GAILSettings | None = None, seed: int = 0):
        self.expert_inputs, self.buffer = _inputs(expert), buffer
        self.settings = s = settings or GAILSettings()
        self.device = buffer.device
        self.discriminator = discriminator.to(self.device)
        self.optimizer = make_optimizer(self.discriminator, "adam", lr=s.lr)
        self.reward_fn = REWARD_FORMS[s.reward_form]
        self.forward_model = None
        if s.preconditioning:
            obs_dim, act_dim = expert.obs.shape[-1], expert.action.shape[-1]
            self.forward_model = ForwardModel(obs_dim, act_dim, s.precondition_target,
                                              s.precondition_floor).to(self.device)
            self.model_optimizer = torch.optim.Adam(self.forward_model.parameters(),
                                                    lr=s.model_lr)
        self.applied_scales: deque[float] = deque(maxlen=SCALE_WINDOW)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.seconds = {"discriminator": 0.0, "relabel": 0.0}  # cumulative

    def _policy_batch(self, batch: Batch) -> Batch:
        return absorb(batch) if self.settings.absorbing else batch

    def _expert_rows(self, count: int) -> Tensor:
        index = torch.randint(len(self.expert_inputs), (count,), device=self.device,
                              generator=self.generator)
        return self.expert_inputs[index]

    def on_env_step(self, step: int) -> Mapping[str, Tensor]:
        """One discriminator (and forward-model) update every `update_every` env steps, once the
        replay holds a batch."""
        s = self.settings
        if step % s.update_every or len(self.buffer) < s.batch_size:
            return {}
        start = time.perf_counter()
        policy = self._policy_batch(self.buffer.sample(s.batch_size))
        loss, metrics = discriminator_loss(
            self.discriminator, self._expert_rows(s.batch_size), _inputs(policy),
            penalty=s.penalty, k=s.penalty_k, weight=s.penalty_weight,
            one_sided=s.penalty_one_sided, noise_std=s.penalty_noise_std,
            entropy_weight=s.entropy_weight,
            expert_labels=(s.expert_label_min, s.expert_label_max), generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        post_step(self.discriminator)
        if self.forward_model is not None:
            model_loss = self.forward_model.loss(policy)
            self.model_optimizer.zero_grad(set_to_none=True)
            model_loss.backward()
            self.model_optimizer.step()
            metrics["forward_model_loss"] = model_loss.detach()
            metrics.update(self.preconditioning_report())
        self.seconds["discriminator"] += time.perf_counter() - start
        return metrics

    def preconditioning_report(self) -> dict[str, float]:
        """The reward scale preconditioning applied to the last SCALE_WINDOW relabelled batches
        (mean, minimum, fraction of batches scaled below 1) and the forward model's mean
        gradient norm on the latest one."""
        if not self.applied_scales:
            return {}
        scales = torch.tensor(list(self.applied_scales))
        return {"precondition_scale_mean": float(scales.mean()),
                "precondition_scale_min": float(scales.min()),
                "precondition_fraction_scaled": float((scales < 1.0).float().mean()),
                "precondition_gradient_norm": self.forward_model.last_gradient_norm}

    @torch.no_grad()
    def rewards(self, batch: Batch) -> Tensor:
        """Rewards [B] of the (already absorbed) transitions under the current discriminator."""
        rewards = self.reward_fn(self.discriminator(_inputs(batch)))
        if self.forward_model is not None:
            with torch.enable_grad():
                scale = self.forward_model.reward_scale(_inputs(batch))
            self.applied_scales.append(float(scale))
            rewards = rewards * scale
        return rewards

    def relabel(self, batch: Batch) -> Batch:
        """`batch` (absorbed if configured) carrying the current discriminator's rewards."""
        start = time.perf_counter()
        batch = self._policy_batch(batch)
        batch = batch._replace(reward=self.rewards(batch))
        self.seconds["relabel"] += time.perf_counter() - start
        return batch

    def certificates(self, inputs: Tensor | None = None) -> dict[str, Certificate]:
        """Certified upper and sampled lower Lipschitz bound of the discriminator's logit; the
        lower bound starts from 256 expert rows evenly spaced over the demonstrations (no random
        stream is drawn from, so certifying never changes the run) and the policy's replay
        `inputs` [B, n + m]."""
        data = self.expert_inputs[evenly_spaced(len(self.expert_inputs), CERTIFICATE_ROWS,
                                                self.device)]
        if inputs is not None:
            data = torch.cat([data, inputs])
        was_training = self.discriminator.training
        certificate = certify(self.discriminator.net.eval(), data)
        self.discriminator.train(was_training)
        return {"discriminator": certificate}

    def state_dict(self) -> dict:
        state = {"discriminator": self.discriminator.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "generator": self.generator.get_state(), "seconds": dict(self.seconds),
                 "applied_scales": list(self.applied_scales)}
        if self.forward_model is not None:
            state.update(forward_model=self.forward_model.state_dict(),
                         model_optimizer=self.model_optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.seconds = dict(state["seconds"])
        self.applied_scales = deque(state["applied_scales"], maxlen=SCALE_WINDOW)
        if self.forward_model is not None:
            self.forward_model.load_state_dict(state["forward_model"])
            self.model_optimizer.load_state_dict(state["model_optimizer"])
