"""`lipctl train` end to end: resume after SIGKILL, sweeps through Hydra launchers, eval."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lipctl.agents.checkpoint import load_checkpoint
from tests.helpers import TINY_TRAIN, lipctl


def steps(path: Path) -> list[int]:
    with path.open(newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def last_step(path: Path) -> int:
    try:
        return max(steps(path), default=0)
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_loses_and_duplicates_nothing(workdir):
    run_dir = workdir / "run"
    args = [*TINY_TRAIN, "loop.total_steps=2000", "loop.checkpoint_every=200",
            f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen([sys.executable, "-m", "lipctl", "train", *args], cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run_dir / "checkpoint.pt"
    deadline = time.monotonic() + 240
    killed_after = None
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists():
            saved = load_checkpoint(checkpoint)["step"]
            if saved >= 400 and last_step(run_dir / "train.csv") > saved:
                os.kill(process.pid, signal.SIGKILL)
                killed_after = saved
                break
        time.sleep(0.02)
    process.wait()
    assert killed_after is not None, "the run ended before it could be killed mid-way"
    state = load_checkpoint(checkpoint)
    assert state["step"] < 2000
    assert last_step(run_dir / "train.csv") > state["step"], "rows after the checkpoint exist"

    result = lipctl("train", *args, "resume=true", cwd=workdir, check=True)
    assert f"resumed from step {state['step']} ({state['step']} transitions" in result.stdout
    final = load_checkpoint(checkpoint)
    assert final["step"] == 2000 and final["buffer"]["size"] == 2000
    assert steps(run_dir / "train.csv") == list(range(50, 2001, 50))
    assert steps(run_dir / "eval.csv") == list(range(150, 2000, 150)) + [2000]
    episode_steps = steps(run_dir / "episode.csv")
    assert episode_steps == sorted(set(episode_steps))


@pytest.mark.slow
def test_eval_prints_return_and_certificates(workdir):
    run_dir = workdir / "run"
    lipctl("train", *TINY_TRAIN, "lipschitz=spectral", "lipschitz.L=20",
           f"hydra.run.dir={run_dir}", cwd=workdir, check=True)
    result = lipctl("eval", f"checkpoint={run_dir / 'checkpoint.pt'}", "episodes=2",
                    cwd=workdir, check=True)
    assert "Pendulum-v1 | step 300 | 2 episodes | return" in result.stdout
    uppers = [float(line.split("upper ")[1].split()[0]) for line in result.stdout.splitlines()
              if line.startswith("critic")]
    assert len(uppers) == 2 and all(u <= 20.0 for u in uppers)


@pytest.mark.slow
def test_mbpo_variant_trains_and_writes_its_time_breakdown(workdir):
    run_dir = workdir / "run"
    lipctl("train", "variant=single_spectral_adversarial", *TINY_TRAIN,
           "agent.updates_per_step=1", "env.mbpo.rollouts_per_retrain=100",
           "agent.dynamics.hidden=[16,16]", f"hydra.run.dir={run_dir}", cwd=workdir, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 300
    for key in ("wall_seconds", "learner_update_seconds", "model_train_seconds", "rollout_seconds"):
        assert summary[key] > 0, key
    assert summary["learner_update_seconds"] < summary["wall_seconds"]
    certificates, state = summary["certificates"], summary["critic_state_lipschitz"]
    assert set(state) == set(certificates) == {"critic0", "critic1"}
    assert all(0 < state[name] <= certificates[name]["upper"] for name in state)
    with (run_dir / "train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(row["model_holdout_mse"] for row in rows)
    assert any(row["robust_loss"] for row in rows)
    with (run_dir / "eval.csv").open(newline="") as f:
        evals = list(csv.DictReader(f))
    assert all(float(row["critic0_state_lipschitz"]) > 0 for row in evals)


@pytest.mark.slow
def test_multirun_with_the_local_parallel_launcher(workdir):
    sweep_dir = workdir / "sweep"
    lipctl("train", "-m", "seed=0,1", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
           f"hydra.sweep.dir={sweep_dir}", *TINY_TRAIN, "loop.total_steps=200",
           cwd=workdir, check=True, timeout=400)
    runs = sorted(p.name for p in sweep_dir.iterdir() if (p / "checkpoint.pt").exists())
    assert runs == ["0", "1"]
    returns = [(sweep_dir / r / "eval.csv").read_text() for r in runs]
    assert returns[0] != returns[1], "different seeds gave identical runs"


@pytest.mark.slow
def test_multirun_through_submitit(workdir):
    """The cluster launcher's code path, run on this machine by submitit's local executor."""
    sweep_dir = workdir / "sweep"
    lipctl("train", "-m", "seed=3", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
           f"hydra.sweep.dir={sweep_dir}", *TINY_TRAIN, "loop.total_steps=200",
           cwd=workdir, check=True, timeout=400)
    assert (sweep_dir / "0" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_slurm_launcher_config_composes(workdir):
    result = lipctl("train", "hydra/launcher=slurm", "--cfg", "hydra", cwd=workdir,
                    check=True)
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
    assert "cpus_per_task: 4" in result.stdout


@pytest.mark.slow
def test_training_stops_at_the_first_evaluation_reaching_the_target_return(workdir):
    """Any return reaches a target of -1e9: the run ends (checkpointed) at its first evaluation;
    an unreachable one runs the whole budget."""
    lipctl("train", *TINY_TRAIN, "loop.target_return=-1e9", "hydra.run.dir=reached",
           cwd=workdir, check=True)
    assert load_checkpoint(workdir / "reached" / "checkpoint.pt")["step"] == 150
    assert json.loads((workdir / "reached" / "summary.json").read_text())["env_steps"] == 150
    lipctl("train", *TINY_TRAIN, "loop.target_return=1e9", "hydra.run.dir=missed", cwd=workdir,
           check=True)
    assert load_checkpoint(workdir / "missed" / "checkpoint.pt")["step"] == 300
