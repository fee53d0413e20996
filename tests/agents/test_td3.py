from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from lipctl.agents.buffer import ReplayBuffer
from lipctl.agents.checkpoint import load_checkpoint
from lipctl.agents.saved import load_exportable
from lipctl.agents.td3 import TD3
from lipctl.agents.trainer import LoopSettings, OffPolicyTrainer
from lipctl.envs import make_env
from lipctl.envs.demos import load_demos
from lipctl.lipschitz import certify
from lipctl.logger import Logger
from tests.agents.test_sac import random_batch
from tests.helpers import TINY_TRAIN, config_error, lipctl

ENV_ID = "InvertedPendulum-v5"
DEMOS = Path(__file__).resolve().parents[2] / "demos" / f"{ENV_ID}-lqr.npz"


def parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def unchanged(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_target_smoothing_noise_is_clipped():
    torch.manual_seed(0)
    agent = TD3(3, 1, hidden=(16, 16), target_noise=10.0, noise_clip=0.3)
    obs = torch.randn(2000, 3)
    with torch.no_grad():
        plain = agent.policy()(obs)  # the target starts as a copy of the actor
        smoothed = agent.smoothed_target_action(obs)
    gap = (smoothed - plain).abs()
    assert float(gap.max()) <= 0.3 + 1e-6
    assert float(gap.max()) > 0.29  # the noise is there, and reaches the clip
    assert torch.all(smoothed.abs() <= 1.0)


def test_actor_and_targets_change_only_every_policy_delay_updates():
    torch.manual_seed(0)
    agent = TD3(3, 1, hidden=(16, 16), policy_delay=2)
    buffer = random_batch()
    for update in range(1, 5):
        critic = parameters(agent.critic)
        frozen = {"actor": parameters(agent.actor), "actor_target": parameters(agent.actor_target),
                  "critic_target": parameters(agent.critic_target)}
        metrics = agent.update(buffer.sample(32))
        assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in metrics.values())
        assert changed(critic, agent.critic)
        for name, before in frozen.items():
            module = getattr(agent, name)
            if update % 2 == 0:
                assert changed(before, module), (update, name)
            else:
                assert unchanged(before, module), (update, name)
        assert ("actor_loss" in metrics) == (update % 2 == 0)


def test_exploration_noise_stays_in_bounds():
    torch.manual_seed(0)
    agent = TD3(3, 2, hidden=(16, 16), exploration_noise=5.0)
    obs = np.array([0.1, -0.3, 0.5], dtype=np.float32)
    actions = np.stack([agent.act(obs) for _ in range(200)])
    assert np.all(np.abs(actions) <= 1.0)
    assert actions.std(0).min() > 0.5  # noisy, and clipped rather than squashed to the mean
    mean = agent.act(obs, deterministic=True)
    np.testing.assert_array_equal(mean, agent.act(obs, deterministic=True))


def test_state_dict_round_trip_gives_identical_actions_and_updates(tmp_path):
    torch.manual_seed(0)
    agent, other = TD3(3, 1, hidden=(16, 16)), TD3(3, 1, hidden=(16, 16))
    buffer = random_batch()
    for _ in range(3):
        agent.update(buffer.sample(16))
    torch.save(agent.state_dict(), tmp_path / "agent.pt")
    other.load_state_dict(torch.load(tmp_path / "agent.pt", weights_only=True))  # plain data
    obs = np.array([0.1, -0.3, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True),
                                  other.act(obs, deterministic=True))
    batch = buffer.sample(16)  # the third update was the odd one: the next moves the actor
    torch.manual_seed(1)
    agent.update(batch)
    torch.manual_seed(1)
    other.update(batch)
    for a, b in zip(agent.actor_target.parameters(), other.actor_target.parameters(),
                    strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True),
                                  other.act(obs, deterministic=True))


def test_policy_matches_the_controller_and_its_mlp_certifies_it():
    torch.manual_seed(0)
    agent = TD3(3, 2, hidden=(32, 32))
    buffer = random_batch(act_dim=2)
    for _ in range(20):
        agent.update(buffer.sample(32))
    policy = agent.policy()
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 5.0])
    controller = agent.controller(low, high)
    obs = torch.randn(8, 3)
    with torch.no_grad():
        unit = policy(obs).numpy()
    scaled = (high + low) / 2 + (high - low) / 2 * unit
    for row, action in zip(obs.numpy(), scaled, strict=True):
        np.testing.assert_allclose(controller.act(row), action, rtol=1e-6, atol=1e-6)
    bound = certify(policy.mlp).upper
    x1, x2 = 3 * torch.randn(4096, 3), 3 * torch.randn(4096, 3)
    near = x1 + 0.01 * torch.randn(4096, 3)
    with torch.no_grad():
        ratios = torch.cat([(policy(x1) - policy(x)).norm(dim=1) / (x1 - x).norm(dim=1)
                            for x in (x2, near)])
    assert 0 < float(ratios.max()) <= bound


def test_invalid_td3_options_are_refused(workdir):
    with pytest.raises(ValueError, match="policy_delay must be >= 1"):
        TD3(3, 1, policy_delay=0)
    with pytest.raises(ValueError, match="noise_clip must be >= 0"):
        TD3(3, 1, noise_clip=-0.1)
    assert "agent.learner.policy_delay: must be >= 1, got 0" in config_error(
        "train", "agent=td3", "agent.learner.policy_delay=0", cwd=workdir)


@pytest.mark.slow
def test_learner_group_selects_td3_without_sac_keys(tmp_path):
    variant = tmp_path / "variant" / "gail_td3_check.yaml"
    variant.parent.mkdir()
    variant.write_text("# @package _global_\ndefaults:\n  - override /agent: gail\n"
                       "  - override /agent/learner: td3\nvariant: gail_td3_check\n")
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        td3 = compose("train", overrides=["agent=td3"]).agent
        gail = compose("train", overrides=["agent=gail", "agent/learner=td3"]).agent
        variant = compose("train", overrides=[f"hydra.searchpath=[file://{tmp_path}]",
                                              "variant=gail_td3_check"]).agent
        sac = compose("train").agent
        mbpo = compose("train", overrides=["agent=mbpo"]).agent
    assert td3.name == "td3" and gail.name == variant.name == "gail"
    for agent in (td3, gail, variant):
        assert agent.learner._target_ == "lipctl.agents.td3.TD3"
        assert "init_alpha" not in agent.learner and "alpha_lr" not in agent.learner
    assert {k: v for k, v in td3.items() if k not in ("learner", "name")} == {
        k: v for k, v in sac.items() if k not in ("learner", "name")}
    assert sac.learner._target_ == mbpo.learner._target_ == "lipctl.agents.sac.SAC"


@pytest.mark.slow
def test_td3_learns_pendulum_within_10k_steps(tmp_path):
    settings = LoopSettings(total_steps=10_000, warmup_steps=1000, batch_size=256,
                            eval_every=1000, eval_episodes=10, checkpoint_every=10_000,
                            log_every=1000, seed=0, target_return=-250)
    torch.manual_seed(settings.seed)
    env, eval_env = make_env("Pendulum-v1", seed=settings.seed), make_env("Pendulum-v1")
    agent = TD3(3, 1, hidden=(64, 64), actor_lr=1e-3, critic_lr=1e-3)
    buffer = ReplayBuffer(settings.total_steps, 3, 1, "cpu", seed=settings.seed)
    trainer = OffPolicyTrainer(agent, env, eval_env, buffer, settings, Logger(tmp_path),
                               progress=False)
    start = time.perf_counter()
    final = trainer.train()
    seconds = time.perf_counter() - start
    assert final >= -250, (f"mean deterministic eval return {final:.1f} after {trainer.step} "
                           f"steps ({seconds:.0f} s)")


@pytest.fixture(scope="module")
def td3_run(tmp_path_factory) -> Path:
    """A folder holding run/checkpoint.pt of a short agent=td3 run on InvertedPendulum-v5."""
    folder = tmp_path_factory.mktemp("td3")
    lipctl("train", "agent=td3", "env=inverted_pendulum", *TINY_TRAIN, "hydra.run.dir=run",
           cwd=folder, check=True)
    return folder


@pytest.mark.slow
def test_td3_checkpoint_evaluates(td3_run):
    agent = load_checkpoint(td3_run / "run" / "checkpoint.pt")["agent"]
    assert agent["updates"] == 251 and "actor_target" in agent  # steps 50 to 300 update
    result = lipctl("eval", "checkpoint=run/checkpoint.pt", "episodes=2", cwd=td3_run,
                    check=True)
    assert f"{ENV_ID} | step 300 | 2 episodes | return" in result.stdout
    assert sum(line.startswith("critic") for line in result.stdout.splitlines()) == 2


@pytest.mark.slow
def test_td3_checkpoint_exports(td3_run):
    lipctl("export", "checkpoint=run/checkpoint.pt", "format=onnx", cwd=td3_run, check=True)
    described = json.loads((td3_run / "run" / "checkpoint.onnx.json").read_text())
    assert described["input"]["shape"] == [1, 4] and described["output"]["shape"] == [1, 1]
    assert described["parity_max_abs_diff"] < 1e-5
    certificate = described["certificate"]
    assert 0 < certificate["lower"] <= certificate["upper"]


@pytest.mark.slow
def test_td3_checkpoint_records_demonstrations_of_its_policy(td3_run):
    lipctl("demos", "env=inverted_pendulum", "expert=checkpoint", "episodes=2",
           "expert_checkpoint=run/checkpoint.pt", "out=td3.npz", cwd=td3_run, check=True)
    recorded = load_demos(td3_run / "td3.npz", env=ENV_ID)
    assert recorded.num_episodes == 2 and recorded.expert == "checkpoint"
    policy = load_exportable(td3_run / "run" / "checkpoint.pt").module
    with torch.no_grad():
        expected = policy(torch.as_tensor(recorded.observations[:20], dtype=torch.float32))
    np.testing.assert_allclose(recorded.actions[:20], expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_td3_checkpoint_robustness_report(td3_run):
    lipctl("robustness", "checkpoint=run/checkpoint.pt", "eps=[0.05]", "episodes=1",
           "attack_steps=2", "out=report.json", cwd=td3_run, check=True)
    report = json.loads((td3_run / "report.json").read_text())
    network = load_exportable(td3_run / "run" / "checkpoint.pt")
    assert report["lipschitz_upper"] == pytest.approx(network.certificate.upper)
    assert len(report["rows"]) == 1


@pytest.mark.slow
def test_gail_trains_with_td3_as_its_learner(workdir):
    lipctl("train", "agent=gail", "agent/learner=td3", "env=inverted_pendulum",
           f"demos={DEMOS}", *TINY_TRAIN, "hydra.run.dir=run", cwd=workdir, check=True)
    state = load_checkpoint(workdir / "run" / "checkpoint.pt")
    assert state["config"]["agent"]["learner"]["_target_"] == "lipctl.agents.td3.TD3"
    assert state["step"] == 300 and state["agent"]["updates"] == 251
    assert "discriminator" in state["certificates"]
    network = load_exportable(workdir / "run" / "checkpoint.pt")  # without the absorbing indicator
    assert network.example.shape == (1, 4)
    assert 0 < network.certificate.lower <= network.certificate.upper


@pytest.mark.parametrize("learner", ["sac", "td3"])
def test_value_is_the_smaller_twin_read_in_eval_mode(learner):
    """What planners take as terminal value, asked of the learner rather than its critics."""
    from lipctl.agents.sac import SAC

    agent = (SAC if learner == "sac" else TD3)(3, 1, hidden=(16, 16),
                                                lipschitz={"name": "spectral", "L": 5.0})
    obs, action = torch.randn(32, 3), torch.rand(32, 1) * 2 - 1
    agent.critic.eval()
    with torch.no_grad():
        expected = agent.critic(obs, action).min(0).values
    agent.critic.train()
    before = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    with torch.no_grad():
        value = agent.value(obs, action)
    torch.testing.assert_close(value, expected)
    assert agent.critic.training
    after = agent.critic.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no power-iteration step
