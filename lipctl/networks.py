"""Networks read from a checkpoint file for export and deployment: a trained agent's policy
(an off-policy learner's or behaviour cloning's, rebuilt from the checkpoint's own config) or a
fitted process model, each with its Lipschitz certificate: the policy's computed from the weights
in the file, the process model's as saved when it was fitted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from lipctl.agents.absorbing import RealStatePolicy
from lipctl.agents.bc import KIND as BC_KIND
from lipctl.agents.bc import BCPolicy
from lipctl.agents.checkpoint import FORMAT_VERSION as AGENT_FORMAT
from lipctl.agents.checkpoint import CheckpointError
from lipctl.control.files import load_data
from lipctl.control.models import TrainedModel, certify_model
from lipctl.control.models.io import FORMAT as MODEL_FORMAT
from lipctl.control.models.io import trained_model
from lipctl.control.policy import ScaledPolicy, policy_certificate
from lipctl.envs import env_spaces, make_env
from lipctl.lipschitz import freeze
from lipctl.lipschitz.certificates import Certificate
from lipctl.runtime import uses_absorbing_states

POLICY, PROCESS_MODEL = "policy", "process model"
PROBE_SAMPLES = 64  # inputs the sampled lower bound starts from


@dataclass(frozen=True)
class Network:
    """A network ready to export or deploy.

    kind: POLICY (module: observations [1, n] -> actions [1, m] in the env's units) or
    PROCESS_MODEL (module: scaled sequences [1, T, n + m] -> scaled states [1, T, n]; `trained`
    holds the scalers). `example` is an input of the exported shape; `probes` are inputs of
    that shape to check an export with; `env_id` is the env or plant it was made for.
    """

    kind: str
    module: nn.Module
    example: Tensor
    probes: list[Tensor]
    certificate: Certificate
    env_id: str
    trained: TrainedModel | None = None


def _read(path: Path) -> dict:
    return load_data(path, (AGENT_FORMAT, MODEL_FORMAT), CheckpointError, "checkpoint",
                     "a lipctl agent checkpoint or process model")


def is_behaviour_cloning(run_cfg: DictConfig) -> bool:
    """Whether a (train) config or a checkpoint's config is behaviour cloning's."""
    return run_cfg.agent.get("kind") == BC_KIND


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


def _learner_policy(run_cfg: DictConfig, env: gym.Env, weights: dict
                    ) -> tuple[ScaledPolicy, nn.Module]:
    """The deterministic policy of an off-policy learner's checkpoint (on the env's own
    observations, also when it was trained with the absorbing-state indicator) and the MLP
    whose certified bound bounds it."""
    obs_dim, act_dim, low, high = env_spaces(env)
    absorbing = uses_absorbing_states(run_cfg)
    agent = instantiate(learner_config(run_cfg.agent.learner), obs_dim=obs_dim + int(absorbing),
                        act_dim=act_dim, device="cpu")
    agent.load_state_dict(weights)
    mlp = agent.policy().mlp.eval()  # certified as built: a chained family carries its LMI
    policy = freeze(agent.policy()).eval()  # plain layers: traceable and exportable
    if absorbing:
        policy = RealStatePolicy(policy)
    return ScaledPolicy(policy, low, high), mlp


def _policy(state: dict, path: Path, tier: str) -> Network:
    """The deterministic policy of the agent in `state`, rebuilt from its own config."""
    try:
        run_cfg = OmegaConf.create(state["config"])
        env_id = run_cfg.env.id
        weights = state["policy" if is_behaviour_cloning(run_cfg) else "agent"]
    except Exception:  # missing keys of a config that is not an agent's
        raise CheckpointError(f"{path} holds no agent config and weights") from None
    env = make_env(env_id)
    observations = torch.as_tensor(
        np.stack([env.reset(seed=i)[0] for i in range(PROBE_SAMPLES)]), dtype=torch.float32)
    try:
        if is_behaviour_cloning(run_cfg):
            built = bc_policy(run_cfg, env, weights).eval()
            certificate = built.certificate(observations, tier)  # as built (see above)
            policy = freeze(built)  # exportable
        else:
            policy, mlp = _learner_policy(run_cfg, env, weights)
            certificate = policy_certificate(mlp, policy, observations, tier=tier)
    except (InstantiationException, RuntimeError, AttributeError, KeyError) as error:
        message = str(error).splitlines()[0]
        raise CheckpointError(f"{path}: cannot rebuild its policy: {message}") from None
    finally:
        env.close()
    probes = [row[None] for row in observations[:8]]
    return Network(POLICY, policy, observations[:1], probes, certificate, env_id)


def _process_model(state: dict, path: Path) -> Network:
    """The process model of a model file's contents, with the certificate saved when it was
    fitted (computed from the weights only for a file that holds none)."""
    try:
        trained = trained_model(state, path)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    model, steps = trained.model, trained.substeps
    generator = torch.Generator().manual_seed(0)
    width = model.state_size + model.input_size
    sequences = torch.randn(PROBE_SAMPLES, steps, width, generator=generator)  # scaled units
    certificate = trained.certificate or certify_model(model, sequences)
    probes = [row[None] for row in sequences[:8]]
    return Network(PROCESS_MODEL, model, sequences[:1], probes, certificate, trained.plant_id,
                   trained)


def read_network(path: str | Path, tier: str = "eclipse") -> Network:
    """The policy or process model in the checkpoint at `path` (told apart by its format) with
    its certificate; `tier` is the policy's certificate tier (see lipschitz.certify).
    CheckpointError for a missing, unreadable or foreign file."""
    path = Path(path)
    state = _read(path)
    if state["format"] == MODEL_FORMAT:
        return _process_model(state, path)
    return _policy(state, path, tier)
