"""`lipctl plan` on a small MBPO checkpoint, and its one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from lipctl.agents.checkpoint import CheckpointError
from lipctl.agents.saved import LearnedModel, load_agent
from lipctl.control import NoisyMeasurements, run
from lipctl.control.planner import sampling_planner
from lipctl.envs import make_env
from tests.helpers import (
    REPS,
    TINY_TRAIN,
    assert_user_error,
    config_error,
    lipctl,
    lipctl_with_user_code,
)

MBPO_TINY = ["agent=mbpo", "env=pendulum", *TINY_TRAIN, "env.mbpo.total_steps=300",
             "env.mbpo.warmup_steps=100", "env.mbpo.rollouts_per_retrain=100",
             "agent.dynamics.hidden=[32,32]", "env.mbpo.updates_per_step=1"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny MBPO run (one model) and a tiny model-free SAC run on Pendulum-v1."""
    root = tmp_path_factory.mktemp("plan")
    lipctl("train", *MBPO_TINY, "hydra.run.dir=mbpo", cwd=root, check=True)
    lipctl("train", "env=pendulum", *TINY_TRAIN, "hydra.run.dir=sac", cwd=root, check=True)
    return {"mbpo": root / "mbpo" / "checkpoint.pt", "sac": root / "sac" / "checkpoint.pt"}


@pytest.mark.slow
def test_plan_prints_return_planning_time_and_the_critic_certificate(checkpoints, tmp_path):
    result = lipctl("plan", f"checkpoint={checkpoints['mbpo']}", "episodes=1",
                    "planner.samples=64", "planner.horizon=2", "obs_noise=0.1", cwd=tmp_path,
                    check=True)
    line, *certificates = result.stdout.strip().splitlines()
    assert line.startswith("Pendulum-v1 | mppi H=2 samples=64 | terminal value on | 1 episodes")
    assert "ms per step" in line
    assert certificates[0].startswith("critic0: Lipschitz upper ")


USER_PLANNER = Path(__file__).parent / "user_planner"


@pytest.mark.slow
def test_a_planner_of_the_users_own_plans_by_config_alone(checkpoints, tmp_path):
    """A planner module and conf/planner/<name>.yaml outside lipctl: `lipctl plan` completes
    its factory with the checkpoint's model, value and termination."""
    folder = tmp_path / "user"
    shutil.copytree(USER_PLANNER, folder)
    result = lipctl_with_user_code(folder, "plan", f"checkpoint={checkpoints['mbpo']}",
                                   "planner=greedy", "planner.candidates=5", "episodes=1")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[0]
    assert line.startswith("Pendulum-v1 | GreedyPlanner | terminal value on | 1 episodes"), line


@pytest.mark.slow
def test_a_bad_setting_of_the_users_own_planner_is_refused_by_the_config_check(
        checkpoints, tmp_path, monkeypatch):
    """The user's planner settings are checked before any work, their module and configs found
    as `lipctl` run in their folder finds them."""
    folder = tmp_path / "user"
    shutil.copytree(USER_PLANNER, folder)
    monkeypatch.syspath_prepend(str(folder))  # as lipctl_with_user_code's PYTHONPATH
    try:
        assert "planner.candidates: must be >= 2, got 1" in config_error(
            "plan", f"checkpoint={checkpoints['mbpo']}", "planner=greedy", "planner.candidates=1",
            f"hydra.searchpath=[file://{folder / 'conf'}]", cwd=folder)
    finally:
        sys.modules.pop("greedy", None)  # the user's module, imported in this process


def test_the_learned_model_rolls_each_row_with_one_elite_member(checkpoints):
    saved = load_agent(checkpoints["mbpo"])
    model = LearnedModel(saved.dynamics, saved.action_low, saved.action_high)
    states, actions = torch.randn(7, 3), torch.rand(7, 1) * 4 - 2
    next_states, rewards = model(states, actions)
    unit = actions / 2.0  # Pendulum's torque range is [-2, 2]
    mean, _ = saved.dynamics.predict(torch.cat([states, unit], -1))
    assert torch.allclose(next_states, states + mean[0, :, 1:], atol=1e-5)
    assert torch.allclose(rewards, mean[0, :, 0], atol=1e-5)


def test_planning_with_noisy_measurements_keeps_the_true_rewards(checkpoints):
    saved = load_agent(checkpoints["mbpo"])
    planner = saved.planner(partial(sampling_planner, horizon=1, samples=16, proposal_samples=4))
    env = make_env(saved.env_id)
    seen = []

    class Recording:
        def act(self, observation):
            seen.append(observation)
            return planner.act(observation)

        def reset(self):
            planner.reset()

    (trajectory,) = run(NoisyMeasurements(Recording(), saved.observation_std, seed=1), env,
                        episodes=1, seed=0, max_steps=5)
    assert len(trajectory) == 5
    assert not np.allclose(np.stack(seen), trajectory.observations[:5])
    assert np.all(np.abs(trajectory.actions) <= 2.0)


@pytest.mark.parametrize(("override", "message"), [
    ("planner.horizon=0", "planner.horizon: must be an integer >= 1, got 0"),
    ("planner.samples=0", "planner.samples: must be an integer >= 1, got 0"),
    ("obs_noise=-1", "obs_noise"),
])
def test_bad_planner_settings_are_one_line(override, message, checkpoints, tmp_path):
    assert message in config_error("plan", f"checkpoint={checkpoints['mbpo']}", override,
                                   cwd=tmp_path)


@pytest.mark.slow
def test_a_checkpoint_without_a_dynamics_model_is_one_line(checkpoints, tmp_path):
    assert_user_error(lipctl("plan", f"checkpoint={checkpoints['sac']}", cwd=tmp_path),
                      "holds no dynamics model")


@pytest.mark.slow
def test_deploy_runs_the_planner_against_a_gym_plant(checkpoints, tmp_path):
    lipctl("deploy", "controller=planner", "plant=gym", f"checkpoint={checkpoints['mbpo']}",
           "steps=5", "deadline_s=60", "controller.planner.samples=64", f"out={tmp_path}",
           cwd=tmp_path, check=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["controller"] == "planner" and summary["steps"] == 5
    assert summary["fallbacks"] == 0 and summary["certificate"] is None


@pytest.mark.slow
def test_deploying_a_planner_on_another_env_is_one_line(checkpoints, tmp_path):
    assert_user_error(lipctl("deploy", "controller=planner", "plant=gym",
                             "plant.id=InvertedPendulum-v5", f"checkpoint={checkpoints['mbpo']}",
                             cwd=tmp_path),
                      "plant: the MBPO agent checkpoint was made for Pendulum-v1")


@pytest.mark.slow
def test_planning_benchmark_runs_and_replots_from_its_run_files(checkpoints, tmp_path):
    for variant in ("single", "single_soft_cap"):
        target = tmp_path / "checkpoints" / "pendulum" / variant / "seed0"
        target.mkdir(parents=True)
        shutil.copy(checkpoints["mbpo"], target / "checkpoint.pt")
    settings = [f"experiment.checkpoints={tmp_path / 'checkpoints'}", "experiment.seeds=[0]",
                "~experiment.episodes", "+experiment.episodes={pendulum:1}",
                "experiment.horizons=[1,2]", "experiment.obs_noise=[0.0,0.1]",
                "experiment.planner.samples=64", "experiment.speed_samples=[64]",
                "experiment.jobs=1"]
    out = tmp_path / "out"
    lipctl("bench", "experiment=planning", REPS, f"out={out}", *settings, cwd=tmp_path, check=True,
           timeout=600)
    with (out / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # 2 variants x (policy + 2 controllers x 2 horizons) x 2 noise levels
    assert len(rows) == 2 * 5 * 2
    policy = [r for r in rows if r["controller"] == "policy"]
    assert all(r["gain_over_policy_iqm"] == "0.0" and r["ms_per_step"] == "" for r in policy)
    planned = [r for r in rows if r["controller"] != "policy"]
    assert all(float(r["ms_per_step"]) > 0 for r in planned)
    with (out / "speed.csv").open(newline="") as f:
        (speed,) = csv.DictReader(f)
    assert speed["samples"] == "64" and speed["horizon"] == "2" and float(speed["ms_median"]) > 0
    assert json.loads((out / "bench_pendulum.json").read_text())["settings"]["seeds"] == [0]
    before = (out / "summary.csv").read_text()
    (out / "summary.csv").unlink()
    (out / "planning.png").unlink()
    lipctl("bench", "experiment=planning", REPS, f"out={out}", "replot=true", cwd=tmp_path,
           check=True)
    assert (out / "summary.csv").read_text() == before and (out / "planning.png").exists()


def test_planning_benchmark_refuses_missing_checkpoints(tmp_path):
    assert "experiment.checkpoints: 10 checkpoint(s) missing" in config_error(
        "bench", "experiment=planning", f"out={tmp_path / 'out'}",
        f"experiment.checkpoints={tmp_path}", cwd=tmp_path)


@pytest.mark.slow
def test_mbpo_trains_and_plans_with_a_td3_learner(tmp_path):
    """The model rollouts and the planner ask the learner (explore, value), not SAC's parts."""
    lipctl("train", *MBPO_TINY, "agent/learner=td3", "hydra.run.dir=run", cwd=tmp_path,
           check=True)
    saved = load_agent(tmp_path / "run" / "checkpoint.pt")
    assert type(saved.learner).__name__ == "TD3" and saved.dynamics is not None
    planner = saved.planner(partial(sampling_planner, horizon=2, samples=16, proposal_samples=4))
    action = planner.act(np.array([1.0, 0.0, 0.0], dtype=np.float32))
    assert action.shape == (1,) and abs(float(action[0])) <= 2.0
    state = torch.zeros(4, 3)
    values = saved.learner.value(state, saved.learner.policy()(state))
    assert values.shape == (4,) and torch.isfinite(values).all()


def test_a_reloaded_sac_agent_acts_in_the_env_units_and_keeps_its_certificates(checkpoints):
    saved = load_agent(checkpoints["sac"])
    assert saved.bc is None and saved.dynamics is None and saved.step is not None
    assert saved.current and saved.certificates() == saved.stored_certificates
    env = saved.env()
    (trajectory,) = run(saved.controller(), env, episodes=1, seed=0, max_steps=5)
    env.close()
    assert np.all(np.abs(trajectory.actions) <= 2.0)
    with pytest.raises(CheckpointError, match="holds no dynamics model"):
        saved.planner(partial(sampling_planner, horizon=1, samples=16, proposal_samples=4))
