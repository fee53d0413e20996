"""A planner over what an MBPO checkpoint learned: its dynamics model (one model, or an ensemble
with trajectory sampling), the env's termination rule, its SAC critic as terminal value and its
actor as proposal policy, all rebuilt from the checkpoint's own config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lipctl.agents.checkpoint import CheckpointError, load_checkpoint
from lipctl.agents.critic_learner import CriticLearner
from lipctl.agents.dynamics import DynamicsEnsemble
from lipctl.agents.termination import TerminationFn, termination_fn
from lipctl.control.planner import Planner, PlannerSettings
from lipctl.envs import env_spaces, make_env
from lipctl.envs.action_scale import ActionScale
from lipctl.networks import learner_config
from lipctl.runtime import uses_absorbing_states


@dataclass(frozen=True)
class PlanningParts:
    """What a planner needs from a checkpoint. `observation_std` is the per-dimension std of
    the real states in its replay buffer (the data's own scale); `certificates` are the
    critics' and actor's Lipschitz certificates saved at the end of training."""

    env_id: str
    model: DynamicsEnsemble
    agent: CriticLearner
    termination: TerminationFn
    action_low: np.ndarray
    action_high: np.ndarray
    observation_std: np.ndarray
    certificates: dict[str, dict]
    run_config: DictConfig


def read_planning_parts(path: str | Path) -> PlanningParts:
    """The dynamics model, agent and termination rule of the MBPO checkpoint at `path`;
    CheckpointError for a file that is not one (e.g. a model-free agent's)."""
    state = load_checkpoint(path)
    run_cfg = OmegaConf.create(state["config"])
    if "dynamics" not in run_cfg.get("agent", {}) or "model" not in state.get("batch_source", {}):
        raise CheckpointError(f"{path} holds no dynamics model (only agent=mbpo or "
                              f"agent=mbpo_ensemble checkpoints can be planned with)")
    if uses_absorbing_states(run_cfg):
        raise CheckpointError(f"{path}: agents with absorbing states cannot be planned with")
    env = make_env(run_cfg.env.id)
    obs_dim, act_dim, low, high = env_spaces(env)
    env.close()
    model = instantiate(run_cfg.agent.dynamics, obs_dim=obs_dim, act_dim=act_dim)
    model.load_state_dict(state["batch_source"]["model"])
    agent = instantiate(learner_config(run_cfg.agent.learner), obs_dim=obs_dim, act_dim=act_dim,
                        device="cpu")
    agent.load_state_dict(state["agent"])
    agent.policy().eval()
    observations = state["buffer"]["fields"]["obs"]
    return PlanningParts(run_cfg.env.id, model.eval(), agent, termination_fn(run_cfg.env.id),
                         low, high, observations.std(0).numpy(), state.get("certificates", {}),
                         run_cfg)


class LearnedModel:
    """The dynamics callable on plant-unit actions: each row's next state and reward from one
    elite member's mean, the member fixed per row (trajectory sampling: a rollout stays with
    its member over the horizon)."""

    def __init__(self, model: DynamicsEnsemble, action_low: np.ndarray, action_high: np.ndarray):
        self.model = model
        self.action_scale = ActionScale(action_low, action_high)

    def __call__(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        unit = self.action_scale.to_unit(action)  # the model was fitted on unit actions
        inputs = torch.cat([state, unit], -1)
        elites, rows = self.model.elite_index, len(inputs)
        per_member = -(-rows // len(elites))
        padded = inputs.new_zeros(per_member * len(elites), inputs.shape[-1])
        padded[:rows] = inputs
        # row i goes to elite i % k: every member sees only its own rows
        members = inputs.new_zeros(self.model.ensemble_size, per_member, inputs.shape[-1])
        members[elites] = padded.view(per_member, len(elites), -1).transpose(0, 1)
        mean, _ = self.model.predict(members)
        step = mean[elites].transpose(0, 1).reshape(-1, mean.shape[-1])[:rows]
        return state + step[:, 1:], step[:, 0]


def build_planner(parts: PlanningParts, settings: PlannerSettings, terminal_value: bool = True,
                  proposal: bool = True, seed: int = 0) -> Planner:
    """A planner on the checkpoint's model; its critic (the smaller twin at the actor's action)
    as terminal value and its deterministic actor as proposal where asked."""
    agent, actor = parts.agent, parts.agent.policy()
    action_scale = ActionScale(parts.action_low, parts.action_high)

    def value(state: Tensor) -> Tensor:
        return agent.value(state, actor(state))

    def policy(state: Tensor) -> Tensor:
        return action_scale.to_env(actor(state))

    return Planner(LearnedModel(parts.model, parts.action_low, parts.action_high),
                   parts.action_low, parts.action_high, settings,
                   terminal_value=value if terminal_value else None,
                   termination=parts.termination, proposal=policy if proposal else None,
                   seed=seed)
