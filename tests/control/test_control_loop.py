from __future__ import annotations

import numpy as np
import pytest

from lipctl.control import Controller, returns, run
from lipctl.envs import UnknownEnvError, make_env


class ZeroController:
    def __init__(self):
        self.resets = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    def reset(self) -> None:
        self.resets += 1


def test_run_records_whole_episodes_and_resets_the_controller():
    controller = ZeroController()
    assert isinstance(controller, Controller)
    env = make_env("Pendulum-v1")
    trajectories = run(controller, env, episodes=2, seed=5)
    assert controller.resets == 2
    for trajectory in trajectories:
        assert len(trajectory) == 200 and trajectory.truncated and not trajectory.terminated
        assert trajectory.observations.shape == (201, 3)
    assert returns(trajectories).shape == (2,)
    again = run(ZeroController(), env, episodes=2, seed=5)
    np.testing.assert_allclose(returns(again), returns(trajectories))


def test_run_stops_at_termination_and_max_steps():
    env = make_env("InvertedPendulum-v5")
    (falling,) = run(ZeroController(), env, seed=0)
    assert falling.terminated and len(falling) < 1000
    (short,) = run(ZeroController(), make_env("Pendulum-v1"), seed=0, max_steps=7)
    assert len(short) == 7 and short.truncated


def test_bad_env_and_episode_count():
    with pytest.raises(UnknownEnvError, match="did you mean"):
        make_env("Pendulum-v0")
    with pytest.raises(ValueError, match="episodes"):
        run(ZeroController(), make_env("Pendulum-v1"), episodes=0)
