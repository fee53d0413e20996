"""Agents rebuilt from their own configs: a train config's behaviour-cloning policy, and a saved
agent checkpoint reloaded whole (`load_agent`), with the faces other layers need: a controller
(eval, demos, deploy), an exportable policy with its certificate, and for MBPO checkpoints the
dynamics model and the learner's value for planners; and `load_exportable`, the network of
any checkpoint or process model file ready to export or deploy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lipctl.agents.absorbing import AbsorbingIndicator, RealStatePolicy
from lipctl.agents.bc import KIND as BC_KIND
from lipctl.agents.bc import BCPolicy
from lipctl.agents.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint
from lipctl.agents.critic_learner import CriticLearner
from lipctl.agents.dynamics import DynamicsEnsemble
from lipctl.agents.termination import termination_fn
from lipctl.control.export import POLICY, PROBES, Exportable
from lipctl.control.loop import Controller
from lipctl.control.models.io import FORMAT as MODEL_FORMAT
from lipctl.control.models.io import trained_model
from lipctl.control.planner import PlannerFactory
from lipctl.control.policy import ModuleController, ScaledPolicy, policy_certificate
from lipctl.envs import env_spaces, make_env
from lipctl.envs.action_scale import ActionScale
from lipctl.envs.files import load_data
from lipctl.lipschitz import freeze


def is_behaviour_cloning(run_cfg: DictConfig) -> bool:
    """Whether a (train) config or a checkpoint's config is behaviour cloning's."""
    return run_cfg.agent.get("kind") == BC_KIND


def uses_absorbing_states(run_cfg: DictConfig) -> bool:
    """Whether the agent of a (train) config sees observations with the absorbing indicator."""
    return bool(run_cfg.agent.get("gail", {}).get("absorbing", False))


def make_agent_env(run_cfg: DictConfig, seed: int | None = None) -> gym.Env:
    """The env of a (train) config as its agent sees it: with the absorbing-state indicator
    appended to observations when the agent uses absorbing states."""
    env = make_env(run_cfg.env.id, seed=seed)
    return AbsorbingIndicator(env) if uses_absorbing_states(run_cfg) else env


def bc_policy(run_cfg: DictConfig, env: gym.Env, weights: dict | None = None) -> BCPolicy:
    """The behaviour-cloning policy of a (train) config for `env`, with `weights` (a state
    dict) loaded when given."""
    obs_dim, act_dim, low, high = env_spaces(env)
    policy = instantiate(_policy_config(run_cfg.agent.policy), obs_dim=obs_dim, act_dim=act_dim,
                         action_low=low.tolist(), action_high=high.tolist())
    if weights is not None:
        policy.load_state_dict(weights)
    return policy


def _policy_config(node: DictConfig) -> DictConfig:
    """A BC policy config as BCPolicy takes it now: one written before the policy took a
    `lipschitz` spec (`bound`, `mode`: spectral layers with the bound split evenly over them)
    becomes that spec."""
    if "bound" not in node and "mode" not in node:
        return node
    config = OmegaConf.to_container(node, resolve=True)
    spec = {"L": config.pop("bound", None), "mode": config.pop("mode", "normalize"),
            "level": False}
    return OmegaConf.create({**config, "lipschitz": spec})


# A learner's critic options before they became one `lipschitz` spec, and the spec's field
# each became (their layers then split the bound evenly: level=False).
_OLD_CRITIC_KEYS = {"critic_bound": "L", "critic_mode": "mode", "critic_layer_bound": "layer_cap",
                    "critic_free_output": "free_output", "robust_weight": "robust_weight",
                    "robust_eps": "robust_eps", "robust_eps_units": "robust_eps_units",
                    "robust_norm": "robust_norm", "robust_steps": "robust_steps",
                    "robust_batch": "robust_batch", "certificate_tier": "certificate_tier"}


def learner_config(node: DictConfig) -> DictConfig:
    """A learner config as the learners take it now: one written before the critics took a
    `lipschitz` spec (`critic_bound`, `critic_mode`, ..., `robust_*`) becomes that spec."""
    if not set(_OLD_CRITIC_KEYS) & set(node):
        return node
    config = OmegaConf.to_container(node, resolve=True)
    spec = {new: config.pop(old) for old, new in _OLD_CRITIC_KEYS.items() if old in config}
    return OmegaConf.create({**config, "lipschitz": {**spec, "level": False}})


@dataclass(frozen=True)
class SavedAgent:
    """An agent checkpoint rebuilt from its own config. Exactly one of `learner` (an off-policy
    learner) and `bc` (a behaviour-cloning policy) is set; `dynamics` is an MBPO checkpoint's
    model (else None). `stored_certificates` are the file's figures, `current` whether they
    were measured for the weights it holds. `observation_std`: the per-dimension std of the
    real states in its replay buffer (None without one)."""

    path: Path
    config: DictConfig
    env_id: str
    step: int | None
    learner: CriticLearner | None
    bc: BCPolicy | None
    dynamics: DynamicsEnsemble | None
    action_low: np.ndarray
    action_high: np.ndarray
    observation_std: np.ndarray | None
    stored_certificates: dict[str, dict]
    current: bool

    @property
    def absorbing(self) -> bool:
        """Whether the agent acts on observations with the absorbing-state indicator."""
        return uses_absorbing_states(self.config)

    def env(self, seed: int | None = None) -> gym.Env:
        """The agent's env as it sees it (with the absorbing indicator where it was trained
        with one): what `controller` acts on."""
        return make_agent_env(self.config, seed)

    def controller(self) -> Controller:
        """The deterministic policy as a controller of `env()`, in the env's action units."""
        if self.bc is not None:
            return ModuleController(self.bc)
        self.learner.policy().eval()  # acting: no power-iteration steps in a Lipschitz actor
        return self.learner.controller(self.action_low, self.action_high)

    def certificates(self) -> dict[str, dict]:
        """The critics' certificates (and the stored actor's) for the weights in the file: the
        stored figures where current, else the critics' recomputed from the weights."""
        if self.current or self.learner is None:
            return self.stored_certificates
        return {name: c.to_dict() for name, c in self.learner.critic_certificates().items()}

    def exportable(self, tier: str = "eclipse", samples: int = 64) -> Exportable:
        """The deterministic policy as plain traceable layers on the env's own observations
        [B, n] -> actions in the env's units, with its certificate: the upper bound at `tier`
        (see lipschitz.certify) from the network as built, the sampled lower bound started from
        `samples` of the env's initial observations."""
        env = make_env(self.env_id)
        observations = torch.as_tensor(
            np.stack([env.reset(seed=i)[0] for i in range(samples)]), dtype=torch.float32)
        env.close()
        if self.bc is not None:
            bc = self.bc.eval()
            module, certificate = freeze(bc), bc.certificate(observations, tier)
        else:
            mlp = self.learner.policy().mlp.eval()  # as built: a chained family carries its LMI
            policy = freeze(self.learner.policy())
            if self.absorbing:
                policy = RealStatePolicy(policy)
            module = ScaledPolicy(policy, self.action_low, self.action_high)
            certificate = policy_certificate(mlp, module, observations, tier=tier)
        return Exportable(POLICY, module.eval(), observations[:1],
                          [row[None] for row in observations[:PROBES]], certificate, self.env_id)

    def planner(self, factory: PlannerFactory, terminal_value: bool = True,
                proposal: bool = True, seed: int = 0) -> Any:
        """The planner `factory` builds (conf/planner) on an MBPO checkpoint's model
        (`LearnedModel`) and its env's termination rule; the learner's value at its
        deterministic action as terminal value and that policy as proposal where asked.
        CheckpointError for a checkpoint without a model or whose agent uses absorbing
        states."""
        if self.dynamics is None:
            raise CheckpointError(f"{self.path} holds no dynamics model (only agent=mbpo or "
                                  "agent=mbpo_ensemble checkpoints can be planned with)")
        if self.absorbing:
            raise CheckpointError(f"{self.path}: agents with absorbing states cannot be planned "
                                  "with")
        actor = self.learner.policy().eval()
        scale = ActionScale(self.action_low, self.action_high)

        def value(state: Tensor) -> Tensor:
            return self.learner.value(state, actor(state))

        def policy(state: Tensor) -> Tensor:
            return scale.to_env(actor(state))

        return factory(dynamics=LearnedModel(self.dynamics, self.action_low, self.action_high),
                       action_low=self.action_low, action_high=self.action_high,
                       terminal_value=value if terminal_value else None,
                       termination=termination_fn(self.env_id),
                       proposal=policy if proposal else None, seed=seed)


class LearnedModel:
    """An MBPO model as a planner's dynamics on plant-unit actions: each row's next state and
    reward from one elite member's mean, the member fixed per row (trajectory sampling: a
    rollout stays with its member over the horizon)."""

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


def load_exportable(path: str | Path, tier: str = "eclipse") -> Exportable:
    """The policy of an agent checkpoint or the network of a process model file at `path` (told
    apart by the file's format), ready to export or deploy with its certificate; `tier` is a
    policy's certificate tier. CheckpointError for a missing, unreadable or foreign file."""
    path = Path(path)
    state = load_data(path, (FORMAT_VERSION, MODEL_FORMAT), CheckpointError, "checkpoint",
                      "a lipctl agent checkpoint or process model")
    if state["format"] != MODEL_FORMAT:
        return saved_agent(state, path).exportable(tier)
    try:
        return trained_model(state, path).exportable()
    except ValueError as error:
        raise CheckpointError(str(error)) from None


def load_agent(path: str | Path, device: str | torch.device = "cpu") -> SavedAgent:
    """The agent of the checkpoint at `path`, rebuilt from the config it was trained with;
    CheckpointError for a file that is not an agent checkpoint or whose agent cannot be
    rebuilt."""
    return saved_agent(load_checkpoint(path, map_location=device), path, device)


def saved_agent(state: dict, path: str | Path, device: str | torch.device = "cpu"
                ) -> SavedAgent:
    """The agent of a checkpoint's contents `state` (read from `path`, which errors name)."""
    path = Path(path)
    try:
        run_cfg = OmegaConf.create(state["config"])
        env_id = str(run_cfg.env.id)
        bc = is_behaviour_cloning(run_cfg)
    except Exception:  # missing keys of a config that is not an agent's
        raise CheckpointError(f"{path} holds no agent config") from None
    env = make_agent_env(run_cfg)
    obs_dim, act_dim, low, high = env_spaces(env)
    try:
        if bc:
            learner, policy, dynamics = None, bc_policy(run_cfg, env, state["policy"]), None
        else:
            learner = instantiate(learner_config(run_cfg.agent.learner), obs_dim=obs_dim,
                                  act_dim=act_dim, device=device)
            learner.load_state_dict(state["agent"])
            policy, dynamics = None, _dynamics(run_cfg, state, obs_dim, act_dim)
    except (InstantiationException, RuntimeError, AttributeError, KeyError) as error:
        raise CheckpointError(f"{path}: cannot rebuild its agent: "
                              f"{str(error).splitlines()[0]}") from None
    finally:
        env.close()
    observations = state.get("buffer", {}).get("fields", {}).get("obs")
    return SavedAgent(path, run_cfg, env_id, state.get("step"), learner, policy, dynamics, low,
                      high, None if observations is None else observations.std(0).cpu().numpy(),
                      state.get("certificates", {}),
                      state.get("measured_step") == state.get("step"))


def _dynamics(run_cfg: DictConfig, state: dict, obs_dim: int, act_dim: int
              ) -> DynamicsEnsemble | None:
    """An MBPO checkpoint's dynamics model, in eval mode (None for a model-free agent)."""
    if "dynamics" not in run_cfg.agent or "model" not in state.get("batch_source", {}):
        return None
    model = instantiate(run_cfg.agent.dynamics, obs_dim=obs_dim, act_dim=act_dim)
    model.load_state_dict(state["batch_source"]["model"])
    return model.eval()
