"""Networks read from a checkpoint file for export and deployment: a trained agent's policy
(an off-policy learner's or behaviour cloning's, rebuilt from the checkpoint's own config) or a
fitted process model, each with its Lipschitz certificate: the policy's computed from the weights
in the file, the process model's as saved when it was fitted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lipctl.agents.checkpoint import FORMAT_VERSION as AGENT_FORMAT
from lipctl.agents.checkpoint import CheckpointError
from lipctl.agents.saved import saved_agent
from lipctl.control.models import TrainedModel, certify_model
from lipctl.control.models.io import FORMAT as MODEL_FORMAT
from lipctl.control.models.io import trained_model
from lipctl.envs import make_env
from lipctl.envs.files import load_data
from lipctl.lipschitz.certificates import Certificate

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


def _policy(state: dict, path: Path, tier: str) -> Network:
    """The deterministic policy of the agent in `state`, rebuilt from its own config."""
    saved = saved_agent(state, path)
    env = make_env(saved.env_id)
    observations = torch.as_tensor(
        np.stack([env.reset(seed=i)[0] for i in range(PROBE_SAMPLES)]), dtype=torch.float32)
    env.close()
    policy, certificate = saved.exportable_policy(observations, tier)
    probes = [row[None] for row in observations[:8]]
    return Network(POLICY, policy, observations[:1], probes, certificate, saved.env_id)


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
