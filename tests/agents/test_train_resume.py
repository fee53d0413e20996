"""Resuming `lipctl train`: logs that never repeat a step, a config that cannot change under a
checkpoint, and a run folder that refused commands leave as it was."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lipctl.agents.buffer import ReplayBuffer
from lipctl.agents.checkpoint import load_checkpoint, save_checkpoint
from lipctl.config import ConfigError, check_overrides
from lipctl.logger import Logger
from lipctl.run_folders import check_resumable, previous_state
from tests.helpers import TINY_TRAIN, assert_user_error, lipctl

GROUPS = ("train", "eval", "episode")


def steps(path: Path) -> list[int]:
    with path.open(newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def rows(path: Path) -> int:
    """Complete data rows of a CSV being written by another process (0 while it is absent)."""
    try:
        return max(0, path.read_text().count("\n") - 1)
    except OSError:
        return 0


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder but Hydra's job log, by relative path."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "train.log"}


def compose(run_dir: Path, *overrides: str):
    """The config `lipctl train OVERRIDES hydra.run.dir=RUN_DIR` runs with, composed as the CLI
    does."""
    configs = []
    check_overrides("train", [*overrides, f"hydra.run.dir={run_dir}"], configs.append)
    return configs[0]


def test_resume_truncates_every_csv_to_the_checkpoint_step(tmp_path):
    logger = Logger(tmp_path)
    for step in (100, 200, 300):
        for group in GROUPS:
            logger.log(group, step, {"value": float(step)})
    logger.close()
    Logger(tmp_path, resume_step=200).close()
    for group in GROUPS:
        assert steps(tmp_path / f"{group}.csv") == [100, 200], group


def test_a_full_buffer_grows_with_its_rows_oldest_first():
    """A resumed run given more steps gets a larger buffer: the old rows keep their order and
    new ones follow them, so no unwritten row is ever sampled."""
    full = ReplayBuffer(4, 1, 1, "cpu")
    for value in range(6):  # wraps: rows hold 4, 5, 2, 3
        full.add(np.array([value]), np.zeros(1), 0.0, np.zeros(1), False)
    grown = ReplayBuffer(6, 1, 1, "cpu")
    grown.load_state_dict(full.state_dict())
    grown.add(np.array([6]), np.zeros(1), 0.0, np.zeros(1), False)
    assert len(grown) == 5
    assert grown.spread(5).obs.flatten().tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    same = ReplayBuffer(4, 1, 1, "cpu")  # same capacity: the ring as it was
    same.load_state_dict(full.state_dict())
    assert same.position == full.position and torch.equal(same.spread(4).obs, full.spread(4).obs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 300-step run (32x32 networks) written by the CLI."""
    workdir = tmp_path_factory.mktemp("finished")
    lipctl("train", *TINY_TRAIN, "hydra.run.dir=run", cwd=workdir, check=True)
    return workdir / "run"


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "keys", "shown"), [
    (["loop.total_steps=200"], "loop.total_steps", "loop.total_steps 300 -> 200"),
    (["agent.learner.hidden=[64,64]"], "agent.learner.hidden",
     "agent.learner.hidden [32, 32] -> [64, 64]"),
    (["agent.learner.hidden=[64,64]", "agent.learner.actor_lr=1e-3", "seed=1"],
     "agent.learner.actor_lr, agent.learner.hidden, loop.seed, seed", "seed 0 -> 1"),
    (["lipschitz=spectral"], "agent.learner.lipschitz.L", "lipschitz.L None -> 50.0"),
    # SAC's target_entropy (null) is not among them: a key one config lacks and the other
    # holds at null does not change the run
    (["agent=td3"], "agent.learner._target_, agent.learner.alpha_lr, agent.learner."
                    "exploration_noise, agent.learner.init_alpha and 4 more",
     "agent.learner._target_ 'lipctl.agents.sac.SAC' -> 'lipctl.agents.td3.TD3'"),
])
def test_resume_refuses_a_changed_config_naming_the_keys(finished_run, overrides, keys, shown):
    cfg = compose(finished_run, *TINY_TRAIN, *overrides, "resume=true")
    with pytest.raises(ConfigError) as error:
        previous_state(cfg, finished_run)
    assert error.value.key.startswith(keys) and shown in str(error.value)


@pytest.mark.slow
def test_resume_accepts_keys_that_do_not_change_the_run(finished_run):
    cfg = compose(finished_run, *TINY_TRAIN, "resume=true", "progress=true", "logger=tensorboard",
                  "device=cpu", "torch_threads=2", "loop.total_steps=400")
    assert previous_state(cfg, finished_run)["step"] == 300


@pytest.mark.slow
def test_refused_train_commands_leave_the_run_as_it_was(finished_run):
    before = snapshot(finished_run)
    assert ".hydra/config.yaml" in before
    workdir = finished_run.parent
    assert_user_error(lipctl("train", *TINY_TRAIN, "loop.total_steps=200", "resume=true",
                             "hydra.run.dir=run", cwd=workdir),
                      "loop.total_steps: resume=true cannot change the config of the run")
    assert_user_error(lipctl("train", *TINY_TRAIN, "agent.learner.hidden=[64,64]", "resume=true",
                             "hydra.run.dir=run", cwd=workdir),
                      "agent.learner.hidden: resume=true cannot change the config of the run")
    assert_user_error(lipctl("train", *TINY_TRAIN, "loop.total_steps=200", "hydra.run.dir=run",
                             cwd=workdir), "resume: ")
    assert snapshot(finished_run) == before


@pytest.mark.slow
def test_resume_extends_a_finished_run(finished_run, tmp_path):
    """... and carries on the times of a checkpoint that names them as earlier versions did."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    first = state["buffer"]["fields"]["obs"]
    earlier = state["seconds"].pop("learner_update")
    state["seconds"]["sac_update"] = earlier
    save_checkpoint(run_dir / "checkpoint.pt", state)
    lipctl("train", *TINY_TRAIN, "loop.total_steps=400", "resume=true", "hydra.run.dir=run",
           cwd=tmp_path, check=True)
    resumed = load_checkpoint(run_dir / "checkpoint.pt")
    assert set(resumed["seconds"]) == {"wall", "learner_update"}
    assert resumed["seconds"]["learner_update"] > earlier
    buffer = resumed["buffer"]
    assert buffer["size"] == 400
    assert torch.equal(buffer["fields"]["obs"][:300], first)
    assert (buffer["fields"]["obs"].abs().sum(-1) > 0).all(), "an unwritten row was kept"
    assert steps(run_dir / "train.csv") == list(range(50, 401, 50))
    assert "total_steps: 400" in (run_dir / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow
def test_kill_before_the_first_checkpoint_then_resume_sets_the_old_logs_aside(workdir):
    """A run killed before its first checkpoint leaves logs but nothing to resume: the resumed
    command starts clean, with the killed attempt's files moved to previous-1/."""
    run_dir = workdir / "run"
    args = [*TINY_TRAIN, "loop.total_steps=600", "loop.checkpoint_every=3000",
            "hydra.run.dir=run"]
    process = subprocess.Popen([sys.executable, "-m", "lipctl", "train", *args], cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if rows(run_dir / "eval.csv") >= 1 and rows(run_dir / "train.csv") >= 4:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "checkpoint.pt").exists()
    killed = snapshot(run_dir)

    result = lipctl("train", *args, "resume=true", cwd=workdir, check=True)
    assert f"moved them to {run_dir / 'previous-1'}" in result.stdout
    assert snapshot(run_dir / "previous-1") == killed, "the killed attempt's files, intact"
    for group in GROUPS:
        logged = steps(run_dir / f"{group}.csv")
        assert logged and logged == sorted(set(logged)), group
    assert steps(run_dir / "train.csv") == list(range(50, 601, 50))
    assert steps(run_dir / "eval.csv") == [150, 300, 450, 600]
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 600


def test_a_setting_added_since_at_its_null_default_does_not_block_a_resume(tmp_path):
    """A checkpoint written before `seeds` existed resumes; a new key set to a value does not."""
    saved = {"seed": 0, "loop": {"total_steps": 100}}
    check_resumable(saved, {**saved, "seeds": None}, tmp_path)
    with pytest.raises(ConfigError, match="seeds"):
        check_resumable(saved, {**saved, "seeds": [0, 1]}, tmp_path)
