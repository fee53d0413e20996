"""Every Lipschitz layer family in the behaviour-cloning policy and the GAIL discriminator:
policies that learn inside their certified bound, discriminators that stay certified while they
learn (projections applied after each step), and BC checkpoints written before the policy took a
`lipschitz` spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lipctl.agents.absorbing import with_indicator
from lipctl.agents.bc import BCPolicy, BCSettings, fit_bc
from lipctl.agents.buffer import Batch, ReplayBuffer
from lipctl.agents.checkpoint import save_checkpoint
from lipctl.agents.discriminator import Discriminator
from lipctl.agents.gail import GAILReward, GAILSettings
from lipctl.agents.saved import load_exportable
from lipctl.lipschitz import FAMILIES, LipschitzLinear, certify, lower_bound
from tests.helpers import config_error

DEMOS = Path(__file__).parents[2] / "demos" / "InvertedPendulum-v5-lqr.npz"
RESTARTS = 20  # random restarts (pairs) of the attack on each certified network


def count_post_steps(monkeypatch: pytest.MonkeyPatch, family: str) -> list[LipschitzLinear]:
    """The layers of `family` whose post-step runs from now on, one entry per call."""
    calls: list[LipschitzLinear] = []
    original = FAMILIES[family].post_step

    def post_step(layer: LipschitzLinear) -> None:
        calls.append(layer)
        original(layer)

    monkeypatch.setattr(FAMILIES[family], "post_step", post_step)
    return calls


def linear_expert(rows: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """States [rows, 4], the actions [rows, 2] of a fixed linear expert of gain 1 (spectral
    norm) on them, and episode indices of 50 rows each."""
    rng = np.random.default_rng(seed)
    gain, _ = np.linalg.qr(rng.normal(size=(4, 2)))  # orthonormal columns: spectral norm 1
    states = rng.normal(size=(rows, 4)).astype(np.float32)
    return states, (states @ gain).astype(np.float32), np.arange(rows) // 50


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bc_policy_of_every_family_learns_inside_its_certified_bound(monkeypatch, family):
    states, actions, episodes = linear_expert()
    post_steps = count_post_steps(monkeypatch, family)
    torch.manual_seed(0)
    policy = BCPolicy(4, 2, [-10.0, -10.0], [10.0, 10.0], hidden=(32, 32),
                      lipschitz={"layer": family, "L": 2.0})
    assert {type(m) for m in policy.net if isinstance(m, LipschitzLinear)} == {FAMILIES[family]}
    fit = fit_bc(policy, states, actions, episodes,
                 BCSettings(epochs=15, batch_size=64, lr=3e-3, patience=15), seed=0)
    assert fit.holdout_mse < 0.05 * float(actions.var(0).sum()), fit  # it learned the expert
    layers = [m for m in policy.net if isinstance(m, LipschitzLinear)]
    assert len(post_steps) >= len(layers) * fit.epochs  # every layer, after every step
    assert set(post_steps) == set(layers)
    probe = torch.as_tensor(states[:256])
    certificate = policy.certificate(probe)
    assert certificate.lower <= certificate.upper <= 2.0
    scaled = (probe - policy.obs_center) / policy.scale  # the MLP's inputs
    attack = lower_bound(policy.net.eval(), scaled, pairs=RESTARTS)
    assert attack <= certificate.upper


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_discriminator_of_every_family_stays_certified_while_it_learns(monkeypatch, family):
    post_steps = count_post_steps(monkeypatch, family)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = 400
    obs = with_indicator(torch.randn(rows, 3))
    expert = Batch(obs, torch.tanh(obs[:, :2]), torch.zeros(rows), obs.roll(-1, 0),
                   torch.zeros(rows))
    buffer = ReplayBuffer(rows, 4, 2, "cpu", seed=0)
    for i in range(rows):  # the learner's states are shifted and its actions random
        buffer.add(np.append(rng.normal(size=3) + 1.0, 0.0), rng.uniform(-1, 1, 2), 0.0,
                   np.append(rng.normal(size=3) + 1.0, 0.0), i % 50 == 49)
    discriminator = Discriminator(4, 2, hidden=(32, 32), bound=1.0, layer=family)
    gail = GAILReward(expert, buffer, discriminator, GAILSettings(batch_size=64), seed=0)
    first = None
    updates = 40
    for step in range(1, updates + 1):
        metrics = gail.on_env_step(step)
        first = first if first is not None else float(metrics["disc_loss"])
    assert float(metrics["disc_loss"]) < first  # it learned to tell the two apart
    layers = [m for m in discriminator.net if isinstance(m, LipschitzLinear)]
    assert {type(m) for m in layers} == {FAMILIES[family]}
    assert post_steps == layers * updates  # every layer, after every discriminator step
    data = gail.expert_inputs[:256]
    certificate = certify(discriminator.net, data)
    assert certificate.upper <= 1.0
    assert lower_bound(discriminator.net.eval(), data, pairs=RESTARTS) <= certificate.upper


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_discriminator_head_bound_uses_the_same_family(family):
    torch.manual_seed(0)
    discriminator = Discriminator(4, 1, hidden=(32, 32), hidden_bound=1.0, head_bound=0.5,
                                  layer=family)
    assert type(discriminator.net[-1]) is FAMILIES[family]
    with torch.no_grad():
        discriminator.net[-1].weight.fill_(1.0)  # a raw head of spectral norm sqrt(32)
    certificate = certify(discriminator.net, torch.randn(256, 5))
    assert certificate.lower <= certificate.upper <= 0.5


def test_a_bc_checkpoint_with_the_old_policy_bound_and_mode_still_rebuilds(tmp_path):
    """Its policy had spectral layers with the bound split evenly over them (no output level):
    the rebuilt policy is the same function with the same certificate."""
    torch.manual_seed(0)
    old = BCPolicy(3, 1, [-2.0], [2.0], hidden=(16, 16),
                   lipschitz={"L": 2.0, "mode": "normalize", "level": False})
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.3 * torch.randn_like(p))
    old.obs_center.fill_(0.1)
    old.scale.fill_(0.8)
    config = {"env": {"id": "Pendulum-v1"}, "lipschitz": {"L": 2.0, "mode": "normalize"},
              "agent": {"kind": "behaviour_cloning", "policy": {
                  "_target_": "lipctl.agents.bc.BCPolicy", "hidden": [16, 16],
                  "activation": "relu", "bound": 2.0, "mode": "normalize"}}}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"config": OmegaConf.to_container(OmegaConf.create(config)),
                           "policy": old.state_dict()})
    network = load_exportable(path)
    states = torch.randn(64, 3)
    with torch.no_grad():
        assert torch.allclose(network.module(states), old.eval()(states), atol=1e-5)
    assert network.certificate.upper == pytest.approx(certify(old.net).upper, rel=1e-5)
    assert network.certificate.upper <= 2.0


def test_an_unknown_discriminator_layer_is_one_error_line(workdir):
    assert "agent.discriminator.layer: must be one of" in config_error(
        "train", "agent=gail", "env=inverted_pendulum", f"demos={DEMOS}",
        "agent.discriminator.layer=nope", cwd=workdir)
    assert not (workdir / "runs").exists(), "work started before the config was checked"
