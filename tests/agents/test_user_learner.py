"""A learner of a user's own, kept outside lipctl (tests/agents/user_learner: one module and
conf/agent/learner/ddpg.yaml on Hydra's search path), goes through the loop's contract with no
code of lipctl's changed: it trains, saves, reloads with `load_agent` and resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.agents.test_contract_matrix import check_reloaded, check_resumed
from tests.helpers import TINY_TRAIN, lipctl_with_user_code

USER = Path(__file__).resolve().parent / "user_learner"


@pytest.mark.slow
def test_a_learner_of_the_users_own_trains_reloads_and_resumes_by_config_alone(
        tmp_path, monkeypatch):
    shutil.copytree(USER, tmp_path, dirs_exist_ok=True)
    overrides = ["env=pendulum", "agent/learner=ddpg", *TINY_TRAIN, "hydra.run.dir=run"]
    trained = lipctl_with_user_code(tmp_path, "train", *overrides)
    assert trained.returncode == 0, trained.stderr
    monkeypatch.syspath_prepend(str(tmp_path))  # where the config's _target_ (ddpg.DDPG) lives
    saved = check_reloaded(tmp_path / "run", "DDPG", set())
    assert saved.step == 300
    resumed = lipctl_with_user_code(tmp_path, "train", *overrides, "loop.total_steps=400",
                                    "resume=true")
    assert resumed.returncode == 0, resumed.stderr
    check_resumed(tmp_path / "run", 400)
