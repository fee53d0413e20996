"""`lipctl train` checks its learner settings and env before any work: one line naming the key,
exit code 2, and no run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipctl.commands.train import validate
from lipctl.config import ConfigError, check_overrides
from lipctl.envs import UnknownEnvError
from tests.helpers import assert_user_error, lipctl

BAD_LEARNER = [
    (["agent.learner.actor_lr=-1"], "agent.learner.actor_lr: must be > 0, got -1"),
    (["agent.learner.critic_lr=0"], "agent.learner.critic_lr: must be > 0, got 0"),
    (["agent.learner.alpha_lr=abc"], "agent.learner.alpha_lr: must be a number, got 'abc'"),
    (["agent.learner.init_alpha=0"], "agent.learner.init_alpha: must be > 0"),
    (["agent.learner.target_entropy=abc"], "agent.learner.target_entropy: must be a number"),
    (["agent.learner.gamma=1.5"], "agent.learner.gamma: must be < 1, got 1.5"),
    (["agent.learner.gamma=1"], "agent.learner.gamma: must be < 1, got 1"),
    (["agent.learner.gamma=-0.1"], "agent.learner.gamma: must be >= 0"),
    (["agent.learner.tau=0"], "agent.learner.tau: must be > 0"),
    (["agent.learner.tau=1.5"], "agent.learner.tau: must be <= 1, got 1.5"),
    (["agent.learner.hidden=[0]"], "agent.learner.hidden: must be a non-empty list of positive "
                                   "layer widths such as [256, 256], got [0]"),
    (["agent.learner.hidden=abc"], "agent.learner.hidden: must be a non-empty list of positive "
                                   "layer widths such as [256, 256], got 'abc'"),
    (["agent.learner.hidden=[]"], "agent.learner.hidden: must be a non-empty list"),
    (["agent.learner.hidden=64"], "agent.learner.hidden: must be a non-empty list"),
    (["agent.learner.hidden=[64,1.5]"], "agent.learner.hidden: must be a non-empty list"),
    (["agent.learner.hidden=[64,true]"], "agent.learner.hidden: must be a non-empty list"),
    (["agent.batch_size=0"], "loop.batch_size: must be >= 1"),
    (["agent=td3", "agent.learner.actor_lr=-1"], "agent.learner.actor_lr: must be > 0"),
    (["agent=td3", "agent.learner.gamma=1.5"], "agent.learner.gamma: must be < 1"),
    (["agent=td3", "agent.learner.hidden=[0]"], "agent.learner.hidden: must be a non-empty"),
    (["agent=td3", "agent.learner.policy_delay=0"], "agent.learner.policy_delay: must be >= 1"),
    (["agent=td3", "agent.learner.noise_clip=-1"], "agent.learner.noise_clip: must be >= 0"),
    (["agent=mbpo", "agent.dynamics.hidden=[0]"], "agent.dynamics.hidden: must be a non-empty"),
]


def check(run_dir: Path, *overrides: str) -> None:
    """The CLI's check of `lipctl train OVERRIDES`, in this process."""
    check_overrides("train", [*overrides, f"hydra.run.dir={run_dir}"], validate)


@pytest.mark.parametrize(("overrides", "expected"), BAD_LEARNER,
                         ids=[" ".join(o) for o, _ in BAD_LEARNER])
def test_bad_learner_settings_name_their_key(tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as error:
        check(tmp_path / "run", *overrides)
    assert str(error.value).startswith(expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides", [
    [], ["agent=td3"], ["agent.learner.gamma=0", "agent.learner.tau=1"],
    ["agent.learner.hidden=[8]", "agent.learner.target_entropy=-0.5"],
])
def test_valid_learner_settings_pass(tmp_path, overrides):
    check(tmp_path / "run", *overrides)  # a refused setting raises ConfigError
    assert not (tmp_path / "run").exists()  # and checking makes no run folder


def test_a_discrete_action_env_is_refused_before_the_run(tmp_path):
    with pytest.raises(UnknownEnvError, match="'CartPole-v1' has no continuous"):
        check(tmp_path / "run", "env.id=CartPole-v1")


@pytest.mark.slow
def test_refused_train_exits_2_in_one_line_and_leaves_no_run_folder(workdir):
    for override, expected in [
        ("agent.learner.hidden=abc", "agent.learner.hidden: must be a non-empty list"),
        ("env.id=CartPole-v1", "environment 'CartPole-v1' has no continuous (Box) action space"),
    ]:
        assert_user_error(lipctl("train", override, "hydra.run.dir=run", cwd=workdir), expected)
        assert not (workdir / "run").exists(), override
