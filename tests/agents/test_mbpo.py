from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch

from lipctl.agents.buffer import Batch, ReplayBuffer
from lipctl.agents.checkpoint import load_checkpoint
from lipctl.agents.dynamics import DynamicsEnsemble
from lipctl.agents.mbpo import MBPOSettings, MBPOSource, ModelBuffer
from lipctl.agents.sac import SAC
from lipctl.agents.td3 import TD3
from lipctl.agents.termination import never, termination_fn
from lipctl.agents.trainer import LoopSettings, OffPolicyTrainer
from lipctl.envs import make_env
from lipctl.logger import Logger


def rows(n: int, reward: float, obs_dim: int = 3, start: float = 0.0) -> Batch:
    obs = torch.rand(n, obs_dim)
    return Batch(obs, torch.rand(n, 1) * 2 - 1, torch.full((n,), reward) + start
                 + torch.arange(n, dtype=torch.float32), obs + 0.1, torch.zeros(n))


def real_buffer(batch: Batch, seed: int = 0) -> ReplayBuffer:
    buffer = ReplayBuffer(len(batch.obs), batch.obs.shape[1], batch.action.shape[1], "cpu",
                          seed=seed)
    for row in zip(*batch, strict=True):
        buffer.add(row[0].numpy(), row[1].numpy(), float(row[2]), row[3].numpy(), bool(row[4]))
    return buffer


def pendulum_buffer(n: int, seed: int = 0) -> ReplayBuffer:
    env = make_env("Pendulum-v1", seed=seed)
    buffer = ReplayBuffer(n, 3, 1, "cpu", seed=seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        unit = env.action_space.sample() / 2.0
        next_obs, reward, terminated, truncated, _ = env.step(2.0 * unit)
        buffer.add(obs, unit, reward, next_obs, terminated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return buffer


def test_rollout_length_schedule_is_linear_in_env_steps():
    settings = MBPOSettings(rollout_schedule=[100, 300, 1, 5])
    assert settings.rollout_schedule == (100, 300, 1, 5)
    lengths = [settings.rollout_length(step) for step in (0, 100, 200, 299, 300, 10_000)]
    assert lengths == [1, 1, 3, 4, 5, 5]
    assert MBPOSettings(rollout_schedule=(0, 0, 2, 2)).rollout_length(0) == 2
    assert settings.model_buffer_capacity(3) == 100_000 * 3 * 4


@pytest.mark.parametrize("overrides, name", [
    ({"rollout_schedule": (1, 2, 3)}, "rollout_schedule"),
    ({"rollout_schedule": (300, 100, 1, 5)}, "rollout_schedule"),
    ({"rollout_schedule": (0, 100, 0, 5)}, "rollout_schedule"),
    ({"rollout_schedule": (0, 100, 6, 5)}, "rollout_schedule"),
    ({"rollout_schedule": (0, 100, 1.5, 5)}, "rollout_schedule"),
    ({"real_ratio": 1.5}, "real_ratio"),
    ({"real_ratio": -0.1}, "real_ratio"),
    ({"model_train_every": 0}, "model_train_every"),
    ({"rollouts_per_retrain": 0}, "rollouts_per_retrain"),
    ({"retain_epochs": 0}, "retain_epochs"),
    ({"model_lr": 0.0}, "model_lr"),
    ({"model_holdout_ratio": 0.0}, "model_holdout_ratio"),
    ({"model_patience": 0}, "model_patience"),
    ({"model_max_epochs": 0}, "model_max_epochs"),
])
def test_bad_settings_name_the_parameter(overrides, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        MBPOSettings(**overrides)


def test_model_buffer_writes_batches_and_resizes_keeping_the_newest():
    buffer = ModelBuffer(6, 3, 1, "cpu")
    buffer.add_batch(rows(4, 0.0))
    buffer.add_batch(rows(6, 0.0, start=4))  # rewards 0..9 written, 4..9 kept
    assert len(buffer) == 6 and sorted(buffer.sample(200).reward.unique().tolist()) == list(
        range(4, 10))
    buffer.resize(3)
    assert buffer.capacity == 3 and set(buffer.sample(100).reward.tolist()) == {7, 8, 9}
    buffer.resize(5)
    buffer.add_batch(rows(3, 0.0, start=10))  # 7, 8, 9, 10, 11 fit; 12 overwrites 7
    assert set(buffer.sample(300).reward.tolist()) == {8, 9, 10, 11, 12}


def deterministic_step_model(reward: float, delta: list[float]) -> DynamicsEnsemble:
    """A one-member model whose prediction is the constant (reward, delta)."""
    model = DynamicsEnsemble(3, 1, ensemble_size=1, elites=1, hidden=(8,), probabilistic=False)
    with torch.no_grad():
        model.net[-1].weight.zero_()
        model.net[-1].bias.zero_()
        model.target_mean.copy_(torch.tensor([reward, *delta]))
    return model


@pytest.mark.parametrize("chunk", [10_000, 7])  # all 50 rollouts at once, or 7 at a time
def test_rollouts_stop_at_the_scheduled_length_and_at_termination(chunk):
    torch.manual_seed(0)
    start = rows(64, 0.0)
    start.obs[:, 0] = 0.0  # obs[0] counts model steps taken from a real start state
    start.obs[:, 1] *= 0.8  # obs[1] climbs by 0.2 a step; the rule ends a rollout above 0.9
    model = deterministic_step_model(0.5, [1.0, 0.2, 0.0])
    settings = MBPOSettings(rollouts_per_retrain=50, rollout_schedule=(0, 0, 4, 4),
                            retain_epochs=1, rollout_chunk=chunk)
    source = MBPOSource(real_buffer(start), model, lambda o, a, n: n[:, 1] > 0.9,
                        SAC(3, 1, hidden=(16, 16)), settings)
    metrics = source.rollout(settings.rollout_length(0))
    stored = source.model_buffer.state_dict()["fields"]
    step, height, done = stored["obs"][:, 0], stored["obs"][:, 1], stored["done"]
    assert int(metrics["model_buffer_size"]) == len(step) == len(source.model_buffer)
    assert int(metrics["rollout_length"]) == 4 and float(metrics["rollout_seconds"]) > 0
    assert step.max() == 3  # never longer than the schedule
    assert (height <= 0.9).all()  # no rollout continues from a terminal state
    torch.testing.assert_close(done, (stored["next_obs"][:, 1] > 0.9).float())
    assert (done == 1).any() and (done == 0).any()
    torch.testing.assert_close(stored["reward"], torch.full_like(done, 0.5))
    counts = [int((step == t).sum()) for t in range(4)]
    alive = [int(((step == t) & (done == 0)).sum()) for t in range(3)]
    assert counts[0] == 50 and counts[1:] == alive  # every live rollout takes the next step


def mixed_source(real_ratio: float) -> MBPOSource:
    """A source whose real rows have rewards >= 1000 and whose model rows have negative ones."""
    source = MBPOSource(real_buffer(rows(32, 1000.0)), DynamicsEnsemble(3, 1, 1, 1, hidden=(8,)),
                        never, SAC(3, 1, hidden=(8, 8)), MBPOSettings(real_ratio=real_ratio))
    assert (source.sample(40).reward >= 1000).all()  # only real rows before any rollout
    source.model_buffer.add_batch(rows(32, -1000.0))
    return source


@pytest.mark.parametrize("real_ratio, batch_size, real_rows",
                         [(0.25, 100, 25), (0.05, 256, 12), (0.3, 64, 19), (0.0, 64, 0),
                          (1.0, 64, 64)])
def test_sample_mixes_real_and_model_rows_at_real_ratio(real_ratio, batch_size, real_rows):
    batch = mixed_source(real_ratio).sample(batch_size)
    assert batch.obs.shape == (batch_size, 3) and batch.done.shape == (batch_size,)
    assert int((batch.reward >= 1000).sum()) == real_rows
    assert int((batch.reward < 0).sum()) == batch_size - real_rows


def make_source(seed: int, learner: type[SAC | TD3] = SAC) -> MBPOSource:
    torch.manual_seed(seed)
    model = DynamicsEnsemble(3, 1, ensemble_size=3, elites=2, hidden=(32, 32))
    settings = MBPOSettings(model_train_every=100, min_real_steps=200, rollouts_per_retrain=64,
                            rollout_schedule=(0, 0, 2, 2), retain_epochs=2, model_max_epochs=5)
    return MBPOSource(pendulum_buffer(300), model, never, learner(3, 1, hidden=(16, 16)),
                      settings, seed=seed)


def test_rollouts_take_any_learners_exploration():
    """Rollouts ask the learner for exploratory actions, so TD3 branches them as SAC does."""
    source = make_source(0, TD3)
    metrics = source.on_env_step(200)
    assert int(metrics["model_buffer_size"]) == 128
    actions = source.model_buffer.state_dict()["fields"]["action"]
    assert actions.abs().max() <= 1.0 and actions.std() > 0


def test_on_env_step_trains_then_rolls_out_and_state_dict_round_trips():
    source = make_source(0)
    assert source.on_env_step(100) == {} and source.on_env_step(250) == {}
    metrics = source.on_env_step(200)
    assert set(metrics) == {"model_holdout_mse", "model_epochs", "model_train_seconds",
                            "rollout_length", "model_buffer_size", "rollout_seconds"}
    assert source.seconds["model_train"] == float(metrics["model_train_seconds"]) > 0
    assert source.seconds["rollout"] == float(metrics["rollout_seconds"]) > 0
    assert all(isinstance(v, torch.Tensor) for v in metrics.values())
    assert int(metrics["model_buffer_size"]) == 128 and int(metrics["rollout_length"]) == 2

    saved = io.BytesIO()
    torch.save(source.state_dict(), saved)
    saved.seek(0)
    other = make_source(1)
    other.load_state_dict(torch.load(saved, weights_only=True))
    other.policy.load_state_dict(source.policy.state_dict())  # the learner's part
    for a, b in ((source.model.state_dict(), other.model.state_dict()),
                 (source.model_buffer.state_dict()["fields"],
                  other.model_buffer.state_dict()["fields"])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # with the same real data, learner (its random streams too) and global RNG, both
    # continue identically
    other.real.load_state_dict(source.real.state_dict())
    results = []
    for s in (source, other):
        torch.manual_seed(7)
        s.on_env_step(300)
        results.append(s.model_buffer.state_dict()["fields"]["next_obs"])
    assert len(results[0]) == 256 and torch.equal(results[0], results[1])


def mbpo_trainer(tmp_path, loop: LoopSettings, mbpo: MBPOSettings, hidden=(64, 64),
                 model_hidden=(64, 64, 64, 64)) -> OffPolicyTrainer:
    torch.manual_seed(loop.seed)
    env, eval_env = make_env("Pendulum-v1", seed=loop.seed), make_env("Pendulum-v1")
    agent = SAC(3, 1, hidden=hidden)
    buffer = ReplayBuffer(loop.total_steps, 3, 1, "cpu", seed=loop.seed)
    model = DynamicsEnsemble(3, 1, ensemble_size=1, elites=1, hidden=model_hidden)
    source = MBPOSource(buffer, model, termination_fn("Pendulum-v1"), agent, mbpo,
                        seed=loop.seed)
    return OffPolicyTrainer(agent, env, eval_env, buffer, loop, Logger(tmp_path),
                            checkpoint_path=tmp_path / "checkpoint.pt", batch_source=source,
                            progress=False)


@pytest.mark.slow
def test_trainer_checkpoint_holds_the_mbpo_state(tmp_path):
    loop = LoopSettings(total_steps=200, warmup_steps=100, batch_size=32, eval_every=200,
                        eval_episodes=1, checkpoint_every=200, log_every=100)
    mbpo = MBPOSettings(model_train_every=100, min_real_steps=100, rollouts_per_retrain=32,
                        model_max_epochs=3)
    trainer = mbpo_trainer(tmp_path / "a", loop, mbpo, hidden=(16, 16), model_hidden=(16, 16))
    trainer.train()
    state = load_checkpoint(tmp_path / "a" / "checkpoint.pt")  # weights_only=True
    resumed = mbpo_trainer(tmp_path / "b", loop, mbpo, hidden=(16, 16), model_hidden=(16, 16))
    resumed.load_state_dict(state)
    source, loaded = trainer.batch_source, resumed.batch_source
    assert len(loaded.model_buffer) == len(source.model_buffer) == 64
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name


@pytest.mark.slow
def test_mbpo_single_model_learns_pendulum_within_4k_steps(tmp_path):
    loop = LoopSettings(total_steps=4000, warmup_steps=250, batch_size=256, updates_per_step=5,
                        eval_every=1000, eval_episodes=10, checkpoint_every=4000,
                        log_every=500, seed=0, target_return=-300)  # stop once it is reached
    mbpo = MBPOSettings(model_train_every=250, min_real_steps=250, rollouts_per_retrain=2000,
                        rollout_schedule=(0, 0, 1, 1), retain_epochs=4, real_ratio=0.1)
    trainer = mbpo_trainer(tmp_path, loop, mbpo)
    start = time.perf_counter()
    final = trainer.train()
    seconds = time.perf_counter() - start
    print(f"MBPO (1 probabilistic model) Pendulum-v1: eval return {final:.1f} after "
          f"{trainer.step} steps in {seconds:.0f} s")
    assert np.isfinite(final) and final >= -300, (
        f"mean deterministic eval return {final:.1f} after {trainer.step} steps ({seconds:.0f} s)")
