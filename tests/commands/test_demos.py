"""Expert demonstrations: the .npz schema, its checks, subsampling, the LQR expert and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import stable_baselines3
import torch

from lipctl.control import returns, run
from lipctl.envs import make_env
from lipctl.envs.demos import (
    SCHEMA_VERSION,
    Demos,
    DemosError,
    from_episodes,
    load_demos,
    save_demos,
)
from lipctl.envs.experts import make_expert
from tests.helpers import TINY_TRAIN, assert_user_error, config_error, lipctl

ENV_ID = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def env():
    env = make_env(ENV_ID)
    yield env
    env.close()


@pytest.fixture(scope="module")
def lqr_episodes(env):
    return run(make_expert("lqr", env), env, episodes=3, seed=0)


@pytest.fixture(scope="module")
def demos(env, lqr_episodes) -> Demos:
    return from_episodes(lqr_episodes, env, expert="lqr")


def _toy_demos(lengths: list[int]) -> Demos:
    """Demonstrations whose observation is the global transition number (easy to follow)."""
    n = sum(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ends = np.append(starts[1:], n) - 1
    obs = np.arange(n, dtype=np.float64)[:, None].repeat(4, axis=1)
    truncated = np.zeros(n, dtype=bool)
    truncated[ends] = True
    return Demos(obs, np.zeros((n, 1)), np.ones(n), obs + 1, np.zeros(n, dtype=bool), truncated,
                 starts, np.array(lengths, dtype=np.float64), ENV_ID, (4,),
                 np.full(4, -np.inf), np.full(4, np.inf), (1,), np.full(1, -3.0),
                 np.full(1, 3.0))


def test_lqr_expert_reaches_the_maximum_return(lqr_episodes):
    assert np.all(returns(lqr_episodes) == 1000.0)
    assert all(t.truncated and not t.terminated for t in lqr_episodes)


def test_lqr_expert_acts_within_the_action_bounds(env):
    expert = make_expert("lqr", env)
    action = expert.act(np.array([0.0, 1.0, 0.0, 0.0]))  # far from upright: saturates
    assert action.shape == (1,) and action.dtype == env.action_space.dtype
    assert env.action_space.contains(action) and abs(action[0]) == 3.0


def test_no_expert_for_an_env_is_a_clear_error():
    pendulum = make_env("Pendulum-v1")
    with pytest.raises(ValueError, match="no 'lqr' expert for 'Pendulum-v1'"):
        make_expert("lqr", pendulum)
    pendulum.close()


def test_round_trip_keeps_every_field(tmp_path, env, demos, lqr_episodes):
    path = tmp_path / "demos.npz"
    save_demos(path, demos)
    loaded = load_demos(path, env=env)
    assert len(loaded) == 3000 and loaded.num_episodes == 3
    for name in ("observations", "actions", "rewards", "next_observations", "terminated",
                 "truncated", "episode_starts", "episode_returns", "observation_low",
                 "observation_high", "action_low", "action_high"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(demos, name), err_msg=name)
    assert (loaded.env_id, loaded.expert) == (ENV_ID, "lqr")
    assert loaded.observation_shape == (4,) and loaded.action_shape == (1,)
    np.testing.assert_array_equal(loaded.episode_returns, returns(lqr_episodes))
    # next observation of one transition is the observation of the next, within an episode
    np.testing.assert_array_equal(loaded.next_observations[:999], loaded.observations[1:1000])
    np.testing.assert_array_equal(loaded.episode_index, np.repeat([0, 1, 2], 1000))
    assert loaded.truncated.sum() == 3 and loaded.truncated[[999, 1999, 2999]].all()
    assert load_demos(path, env=ENV_ID).env_id == ENV_ID  # an env id works as well as an env


def test_env_id_mismatch_is_a_clear_error(tmp_path, demos):
    path = tmp_path / "demos.npz"
    save_demos(path, demos)
    pendulum = make_env("Pendulum-v1")
    with pytest.raises(DemosError, match="recorded on 'InvertedPendulum-v5', not 'Pendulum-v1'"):
        load_demos(path, env=pendulum)
    pendulum.close()


def test_shape_mismatch_with_the_env_is_a_clear_error(tmp_path, env, demos):
    other = _toy_demos([5, 5])
    other.observations = other.next_observations = np.zeros((10, 3))
    other.observation_shape = (3,)
    other.observation_low, other.observation_high = np.full(3, -1.0), np.full(3, 1.0)
    save_demos(tmp_path / "three.npz", other)
    with pytest.raises(DemosError, match=r"observation shape \(3,\) differs from "
                                         r"InvertedPendulum-v5's \(4,\)"):
        load_demos(tmp_path / "three.npz", env=env)


def test_inconsistent_arrays_are_a_clear_error(tmp_path, demos):
    path = tmp_path / "demos.npz"
    save_demos(path, demos)
    with np.load(path) as record:
        arrays = dict(record)
    arrays["next_observations"] = arrays["next_observations"][:-1]
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(DemosError, match=r"next_observations has shape \(2999, 4\), "
                                         r"expected \(3000, 4\)"):
        load_demos(tmp_path / "short.npz")


def test_wrong_schema_version_is_a_clear_error(tmp_path, demos):
    path = tmp_path / "demos.npz"
    save_demos(path, demos)
    with np.load(path) as record:
        arrays = dict(record)
    arrays["schema_version"] = np.array(SCHEMA_VERSION + 1)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(DemosError, match=f"schema version {SCHEMA_VERSION + 1}, this lipctl "
                                         f"reads {SCHEMA_VERSION}"):
        load_demos(tmp_path / "future.npz")


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(DemosError, match="demonstrations file not found"):
        load_demos(tmp_path / "missing.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(DemosError, match="cannot read demonstrations"):
        load_demos(tmp_path / "garbage.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DemosError, match="not a lipctl demonstrations file"):
        load_demos(tmp_path / "other.npz")


def test_subsampling_keeps_every_kth_transition_from_an_offset(tmp_path):
    lengths = [23, 17, 30, 2]
    save_demos(tmp_path / "toy.npz", _toy_demos(lengths))
    k = 5
    offsets = set()
    for seed in range(20):
        sub = load_demos(tmp_path / "toy.npz", subsample=k, seed=seed)
        assert sub.num_episodes == len(lengths)
        np.testing.assert_array_equal(sub.episode_returns, lengths)  # whole-episode returns
        bounds = np.append(sub.episode_starts, len(sub))
        start = 0
        for episode, length in enumerate(lengths):
            kept = sub.observations[bounds[episode]:bounds[episode + 1], 0] - start
            offset = int(kept[0])
            assert 0 <= offset < min(k, length)
            np.testing.assert_array_equal(kept, np.arange(offset, length, k))
            offsets.add(offset)
            start += length
        np.testing.assert_array_equal(sub.next_observations, sub.observations + 1)
    assert len(offsets) == k  # the offset is random, and every offset in [0, k) occurs
    same = [load_demos(tmp_path / "toy.npz", subsample=k, seed=3).observations for _ in range(2)]
    np.testing.assert_array_equal(*same)
    with pytest.raises(DemosError, match="subsample must be an integer >= 1"):
        load_demos(tmp_path / "toy.npz", subsample=0)


@pytest.mark.slow
def test_cli_writes_a_loadable_file(workdir):
    result = lipctl("demos", "env=inverted_pendulum", "expert=lqr", "episodes=2",
                    "out=demos/ip.npz", cwd=workdir, check=True)
    assert "2 episodes, 2000 transitions" in result.stdout
    assert "return mean 1000.0" in result.stdout
    loaded = load_demos(workdir / "demos" / "ip.npz", env=ENV_ID, subsample=20, seed=0)
    assert loaded.num_episodes == 2 and len(loaded) == 100


BAD_DEMOS_INPUTS = [
    (["env=pendulum"], "expert: no 'lqr' expert for 'Pendulum-v1'"),
    (["expert=sac_zip"], "expert: no 'sac_zip' expert for 'InvertedPendulum-v5'"),
    (["episodes=0"], "episodes: must be >= 1"),
    (["out=demos.h5"], "out: must be a path ending in .npz"),
    (["expert=sb3"], "expert_checkpoint: expert=sb3 reads its policy from an"),
    (["expert=checkpoint", "expert_checkpoint=nope.pt"],
     "expert_checkpoint: expert=checkpoint reads its policy from an existing file"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_DEMOS_INPUTS,
                         ids=[" ".join(args) for args, _ in BAD_DEMOS_INPUTS])
def test_cli_rejects_bad_input_before_any_work(workdir, args, expected):
    assert expected in config_error("demos", *args, cwd=workdir)
    assert not (workdir / "demos.h5").exists()


def test_committed_demonstrations_load_against_their_env():
    path = Path(__file__).resolve().parents[2] / "demos" / "InvertedPendulum-v5-lqr.npz"
    loaded = load_demos(path, env=ENV_ID)
    assert loaded.num_episodes == 10 and len(loaded) == 10000 and loaded.expert == "lqr"
    np.testing.assert_array_equal(loaded.episode_returns, np.full(10, 1000.0))


@pytest.mark.slow
def test_trained_experts_are_recorded_from_their_files(workdir):
    """A lipctl agent checkpoint and a stable-baselines3 .zip both serve as experts; an expert
    made for another env is refused."""
    lipctl("train", "env=inverted_pendulum", *TINY_TRAIN, "hydra.run.dir=run", cwd=workdir,
           check=True)
    result = lipctl("demos", "env=inverted_pendulum", "expert=checkpoint", "episodes=2",
                    "expert_checkpoint=run/checkpoint.pt", cwd=workdir, check=True)
    recorded = load_demos(workdir / "demos" / f"{ENV_ID}-checkpoint.npz", env=ENV_ID)
    assert recorded.num_episodes == 2 and recorded.expert == "checkpoint", result.stdout
    assert_user_error(lipctl("demos", "env=pendulum", "expert=checkpoint",
                             "expert_checkpoint=run/checkpoint.pt", cwd=workdir),
                      "not a policy for 'Pendulum-v1'")

    sb3_env = make_env(ENV_ID)
    model = stable_baselines3.SAC("MlpPolicy", sb3_env, learning_starts=10, seed=0,
                                  policy_kwargs={"net_arch": [16, 16]})
    model.learn(20)
    model.save(workdir / "expert.zip")
    sb3_env.close()
    lipctl("demos", "env=inverted_pendulum", "expert=sb3", "expert_checkpoint=expert.zip",
           "episodes=1", "out=sb3.npz", cwd=workdir, check=True)
    recorded = load_demos(workdir / "sb3.npz", env=ENV_ID)
    with torch.no_grad():
        expected = model.predict(recorded.observations[:5].astype(np.float32),
                                 deterministic=True)[0]
    np.testing.assert_allclose(recorded.actions[:5], expected, atol=1e-6)
    assert_user_error(lipctl("demos", "env=pendulum", "expert=sb3", "expert_checkpoint=expert.zip",
                             cwd=workdir), "expert.zip observes shape (4,), Pendulum-v1 gives (3,)")
