from __future__ import annotations

import numpy as np
import pytest
import torch

from lipctl.agents.buffer import Batch, ReplayBuffer
from lipctl.agents.checkpoint import load_checkpoint
from lipctl.agents.sac import SAC
from lipctl.agents.td3 import TD3
from lipctl.agents.trainer import LoopSettings, OffPolicyTrainer
from lipctl.envs import make_env
from lipctl.lipschitz import adversarial_perturbation, upper_bound
from lipctl.logger import Logger


def random_batch(buffer_rows: int = 64, obs_dim: int = 3, act_dim: int = 1) -> ReplayBuffer:
    buffer = ReplayBuffer(buffer_rows, obs_dim, act_dim, "cpu")
    rng = np.random.default_rng(0)
    for _ in range(buffer_rows):
        buffer.add(rng.normal(size=obs_dim), rng.uniform(-1, 1, act_dim), rng.normal(),
                   rng.normal(size=obs_dim), False)
    return buffer


def test_twin_critics_are_one_batched_module_with_distinct_members():
    agent = SAC(3, 1, hidden=(32, 32))
    weights = agent.critic.net[0].weight
    assert weights.shape == (2, 32, 4)
    assert not torch.allclose(weights[0], weights[1])
    q = agent.critic(torch.zeros(5, 3), torch.zeros(5, 1))
    assert q.shape == (2, 5) and not torch.allclose(q[0], q[1])


def test_update_changes_every_network_and_returns_tensor_metrics():
    torch.manual_seed(0)
    agent = SAC(3, 1, hidden=(32, 32))
    before = {name: p.clone() for name, p in agent.critic.named_parameters()}
    actor_before = [p.clone() for p in agent.actor.parameters()]
    target_before = [p.clone() for p in agent.critic_target.parameters()]
    metrics = agent.update(random_batch().sample(32))
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in metrics.values())
    assert all(not torch.equal(before[n], p) for n, p in agent.critic.named_parameters())
    for before_list, module in ((actor_before, agent.actor), (target_before, agent.critic_target)):
        assert all(not torch.equal(a, b)
                   for a, b in zip(before_list, module.parameters(), strict=True))
    assert float(metrics["alpha"]) == pytest.approx(1.0)
    assert float(agent.log_alpha.detach().exp()) != pytest.approx(1.0)


@pytest.mark.parametrize("learner", [SAC, TD3])
def test_spectral_critics_are_certified_below_their_bound_after_training(learner):
    torch.manual_seed(0)
    agent = learner(3, 1, hidden=(32, 32), lipschitz={"L": 5.0, "robust_weight": 1.0,
                                                      "robust_eps": 0.05, "robust_steps": 2})
    buffer = random_batch()
    for _ in range(30):
        metrics = agent.update(buffer.sample(32))
    assert "robust_loss" in metrics
    agent.critic.eval()  # certified as evaluated: exact singular values, not power iteration
    for member in range(2):
        assert upper_bound(agent.critic.net, member=member) <= 5.0
    inputs = torch.cat([buffer.sample(64).obs, buffer.sample(64).action], -1)
    for name, certificate in agent.critic_certificates(inputs).items():
        assert certificate.lower <= certificate.upper <= 5.0, name
    states = agent.critic_state_lipschitz(inputs[:, :3], inputs[:, 3:])
    assert set(states) == {"critic0", "critic1"} and all(v > 0 for v in states.values())


def test_state_dict_round_trip_gives_the_same_policy():
    agent, other = SAC(3, 1, hidden=(16, 16)), SAC(3, 1, hidden=(16, 16))
    agent.update(random_batch().sample(16))
    other.load_state_dict(agent.state_dict())
    obs = np.array([0.1, -0.3, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True),
                                  other.act(obs, deterministic=True))
    controller = other.controller(np.array([-2.0]), np.array([2.0]))
    np.testing.assert_allclose(controller.act(obs), 2.0 * agent.act(obs, deterministic=True))


SMALL_LOOP = dict(total_steps=600, warmup_steps=100, batch_size=64, eval_every=200,
                  eval_episodes=1, checkpoint_every=200, log_every=100, seed=0)


def make_trainer(tmp_path, hidden=(32, 32), **loop) -> OffPolicyTrainer:
    settings = LoopSettings(**{**SMALL_LOOP, **loop})
    torch.manual_seed(settings.seed)
    env, eval_env = make_env("Pendulum-v1", seed=settings.seed), make_env("Pendulum-v1")
    agent = SAC(3, 1, hidden=hidden)
    buffer = ReplayBuffer(settings.total_steps, 3, 1, "cpu", seed=settings.seed)
    return OffPolicyTrainer(agent, env, eval_env, buffer, settings, Logger(tmp_path),
                            checkpoint_path=tmp_path / "checkpoint.pt", progress=False)


@pytest.mark.slow
def test_same_seed_same_run_and_resume_is_deterministic(tmp_path):
    first = make_trainer(tmp_path / "a")
    first_return = first.train()
    assert make_trainer(tmp_path / "b").train() == first_return
    state = first.state_dict()
    assert state["step"] == 600 and len(state["buffer"]["fields"]["obs"]) == 600
    assert set(state["certificates"]) == {"critic0", "critic1"}

    # two trainers resumed from the same mid-run checkpoint continue identically
    mid = make_trainer(tmp_path / "c", total_steps=400)
    mid.train()
    results = []
    for name in ("d", "e"):
        resumed = make_trainer(tmp_path / name, total_steps=900)
        resumed.load_state_dict(load_checkpoint(tmp_path / "c" / "checkpoint.pt"))
        assert resumed.step == 400
        results.append(resumed.train())
    assert results[0] == results[1]


@pytest.mark.slow
def test_sac_learns_pendulum_within_10k_steps(tmp_path):
    """The run stops at the first evaluation that reaches the level (at most 10k steps)."""
    trainer = make_trainer(tmp_path, hidden=(128, 128), total_steps=10_000, warmup_steps=1000,
                           batch_size=128, eval_every=2000, eval_episodes=10,
                           checkpoint_every=10_000, log_every=1000, target_return=-250)
    final = trainer.train()
    assert final >= -250, f"mean deterministic eval return {final:.1f} after {trainer.step} steps"


def critic_sensitivity_after_training(robust_weight: float) -> float:
    """Mean |Q(s + delta) - Q(s)| under an l2 PGD attack (eps 0.1) on held-out states, after 300
    SAC updates (32x32 nets) on a fixed toy batch whose rewards oscillate fast along the state."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(256, 3, generator=generator)
    batch = Batch(obs, torch.rand(256, 1, generator=generator) * 2 - 1,
                  10 * torch.sin(6 * obs[:, 0]), obs + 0.05, torch.zeros(256))
    agent = SAC(3, 1, hidden=(32, 32), lipschitz={"robust_weight": robust_weight,
                                                 "robust_eps": 0.1, "robust_steps": 3})
    for _ in range(300):
        agent.update(batch)
    held_out = torch.randn(512, 3, generator=generator)
    action = torch.rand(512, 1, generator=generator) * 2 - 1
    q = lambda s: agent.critic(s, action)  # noqa: E731
    delta = adversarial_perturbation(q, held_out, eps=0.1, steps=10)
    with torch.no_grad():
        return float((q(held_out + delta) - q(held_out)).abs().mean())


@pytest.mark.slow
def test_adversarial_loss_makes_the_critic_change_less_under_pgd():
    plain = critic_sensitivity_after_training(0.0)
    robust = critic_sensitivity_after_training(50.0)
    assert robust < 0.75 * plain, (plain, robust)
