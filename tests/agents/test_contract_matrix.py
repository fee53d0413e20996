"""The loop's contract, every learner x batch source x reward source: a tiny `lipctl train` run,
then the checkpoint reloaded by `load_agent` acts in the env's units, certifies its networks,
and a second invocation resumes it to a longer budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lipctl.agents.saved import SavedAgent, load_agent
from lipctl.control import run
from tests.helpers import TINY_TRAIN, lipctl

DEMOS = Path(__file__).resolve().parents[2] / "demos" / "InvertedPendulum-v5-lqr.npz"
SOURCES = {  # (batch source, reward source) -> overrides
    ("replay", "env"): ["agent=sac", "env=inverted_pendulum"],
    ("model_rollouts", "env"): ["agent=mbpo", "env=inverted_pendulum",
                                "env.mbpo.total_steps=300", "env.mbpo.warmup_steps=100",
                                "env.mbpo.rollouts_per_retrain=100", "env.mbpo.updates_per_step=1",
                                "agent.dynamics.hidden=[32,32]"],
    ("replay", "discriminator"): ["agent=gail", "env=inverted_pendulum", f"demos={DEMOS}",
                                  "agent.demo_episodes=4"],
}
NETWORKS = {"env": set(), "discriminator": {"discriminator"}}


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["sac", "td3"])
@pytest.mark.parametrize(("batches", "rewards"), list(SOURCES))
def test_every_learner_trains_saves_reloads_and_resumes_with_every_source(
        tmp_path, learner, batches, rewards):
    overrides = [*SOURCES[(batches, rewards)], f"agent/learner={learner}", *TINY_TRAIN,
                 "hydra.run.dir=run"]
    lipctl("train", *overrides, cwd=tmp_path, check=True)
    saved = check_reloaded(tmp_path / "run", learner.upper(), NETWORKS[rewards])
    assert (saved.dynamics is not None) == (batches == "model_rollouts")
    # the same command with a longer budget resumes from the checkpoint instead of restarting
    lipctl("train", *overrides, "loop.total_steps=400", "resume=true", cwd=tmp_path, check=True)
    check_resumed(tmp_path / "run", 400)


def check_reloaded(run_dir: Path, learner: str, networks: set[str]) -> SavedAgent:
    """The run's checkpoint reloaded by `load_agent`: its learner is of class `learner`, it
    certifies its critics and `networks`, and its controller acts inside the env's box."""
    saved = load_agent(run_dir / "checkpoint.pt")
    assert type(saved.learner).__name__ == learner
    certificates = saved.certificates()
    assert {"critic0", "critic1"} | networks <= set(certificates)
    for name, certificate in certificates.items():
        assert 0 <= certificate["lower"] <= certificate["upper"], name
    env = saved.env()
    (trajectory,) = run(saved.controller(), env, episodes=1, seed=0, max_steps=5)
    env.close()
    low, high = env.action_space.low, env.action_space.high
    assert np.all((trajectory.actions >= low) & (trajectory.actions <= high))
    return saved


def check_resumed(run_dir: Path, steps: int) -> None:
    """The run's checkpoint and summary both stand at `steps` env steps."""
    assert load_agent(run_dir / "checkpoint.pt").step == steps
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == steps
