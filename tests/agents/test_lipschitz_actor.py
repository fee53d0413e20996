"""The SAC and TD3 actors held to a Lipschitz spec: unchanged by default, certified within the
bound with every layer family, and the `agent.learner.actor_lipschitz` config key."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lipctl.agents.sac import SAC
from lipctl.agents.td3 import TD3
from lipctl.lipschitz import LipschitzLinear, certify, lower_bound
from tests.agents.test_sac import random_batch
from tests.helpers import TINY_TRAIN, config_error, lipctl

FAMILIES = ["spectral", "soft_cap", "hammer", "svd_clip", "aol", "orthogonal"]
BOUND = 5.0
RESTARTS = 20


class UnconstrainedActor(nn.Module):
    """The SAC actor as it was built before it took a spec: ReLU trunk of nn.Linear layers and
    an nn.Linear head giving [mean, log_std]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2 * act_dim)


def test_default_actor_is_bit_identical_to_the_unconstrained_one():
    torch.manual_seed(3)
    reference = UnconstrainedActor(5, 2, (32, 16))
    torch.manual_seed(3)
    agent = SAC(5, 2, hidden=(32, 16))
    expected, actual = reference.state_dict(), agent.actor.state_dict()
    assert list(actual) == list(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)
    obs = torch.randn(7, 5)
    mean, _ = agent.actor(obs)
    assert torch.equal(mean, reference.head(reference.trunk(obs))[:, :2])
    # a checkpoint written by the unconstrained actor loads into the new one
    agent.actor.load_state_dict(reference.state_dict())


def test_default_td3_actor_keeps_its_state_dict_keys():
    torch.manual_seed(3)
    sac_actor = UnconstrainedActor(5, 1, (32, 16))  # its head has 2 outputs, as TD3's here
    reference = nn.Sequential(sac_actor.trunk, sac_actor.head)
    torch.manual_seed(3)
    agent = TD3(5, 2, hidden=(32, 16))
    expected, actual = reference.state_dict(), agent.actor.state_dict()
    assert list(actual) == list(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def trained_policy_mlp(learner: type, family: str) -> nn.Module:
    torch.manual_seed(0)
    agent = learner(3, 1, hidden=(32, 32), actor_lipschitz={"layer": family, "L": BOUND})
    buffer = random_batch()
    before = [p.clone() for p in agent.actor.parameters()]
    for _ in range(50):
        agent.update(buffer.sample(32))
    assert all(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(),
                                                     strict=True))
    return agent.policy().mlp.eval()


def assert_certified_and_unbroken(mlp: nn.Module) -> None:
    upper = certify(mlp).upper
    assert upper <= BOUND * (1 + 1e-6)
    data = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    attack = max(lower_bound(mlp, data, steps=30, pairs=64, seed=seed)
                 for seed in range(RESTARTS))
    assert 0 < attack <= upper * (1 + 1e-6), (attack, upper)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_sac_actor_of_every_family_is_certified_within_its_bound_after_training(family):
    assert_certified_and_unbroken(trained_policy_mlp(SAC, family))


@pytest.mark.slow
def test_td3_actor_is_certified_within_its_bound_after_training():
    assert_certified_and_unbroken(trained_policy_mlp(TD3, "soft_cap"))


@pytest.mark.parametrize("learner", [SAC, TD3])
def test_projection_family_projects_the_actor_after_each_step(learner):
    torch.manual_seed(0)
    # steps large enough to leave the unit ball unless projected back
    agent = learner(3, 1, hidden=(32, 32), actor_lr=0.05,
                    actor_lipschitz={"layer": "svd_clip", "L": BOUND})
    layers = [m for m in agent.actor.modules() if isinstance(m, LipschitzLinear)]
    assert len(layers) == 3
    buffer = random_batch()
    for _ in range(6):
        agent.update(buffer.sample(32))
        for layer in layers:
            # the raw weight itself, as the next update uses it, is inside the unit ball
            assert float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2)) <= 1 + 1e-5


@pytest.mark.parametrize(("value", "expected"), [
    ("{layer: soft_cap, L: -1}", "agent.learner.actor_lipschitz.L"),
    ("{layer: nope}", "agent.learner.actor_lipschitz.layer"),
    ("5", "agent.learner.actor_lipschitz: must be a mapping"),
])
def test_bad_actor_lipschitz_is_one_config_error_line(workdir, value, expected):
    assert expected in config_error("train", f"agent.learner.actor_lipschitz={value}",
                                    cwd=workdir)


@pytest.mark.slow
def test_train_with_a_constrained_actor_reports_a_policy_certificate_within_its_bound(workdir):
    bound = 0.5
    lipctl("train", "env=pendulum",
           f"agent.learner.actor_lipschitz={{layer: soft_cap, L: {bound}}}",
           "hydra.run.dir=run", *TINY_TRAIN, cwd=workdir, check=True)
    # Pendulum's torque is in [-2, 2]: the policy's bound is the half range times the MLP's
    policy_bound = 2 * bound * (1 + 1e-3)
    result = lipctl("robustness", "checkpoint=run/checkpoint.pt", "eps=[0.05]", "episodes=1",
                    "attack_steps=2", cwd=workdir, check=True)
    upper = float(re.search(r"certified Lipschitz upper (\S+)", result.stdout).group(1))
    assert 0 < upper <= policy_bound, result.stdout
    result = lipctl("export", "checkpoint=run/checkpoint.pt", cwd=workdir, check=True)
    upper = float(re.search(r"Lipschitz upper (\S+)", result.stdout).group(1))
    assert 0 < upper <= policy_bound, result.stdout
    assert (workdir / "run" / "checkpoint.onnx").is_file()
