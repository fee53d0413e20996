from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from lipctl.agents.termination import TERMINATIONS, termination_fn

# envs whose random-action episodes end by termination within a few hundred steps
TERMINATING = {"Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5", "InvertedPendulum-v5",
               "InvertedDoublePendulum-v5"}


@pytest.mark.parametrize("env_id", sorted(TERMINATIONS))
def test_termination_agrees_with_the_real_env(env_id):
    env = gym.make(env_id)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    rows, terminated = [], []
    for _ in range(500):
        action = env.action_space.sample()
        next_obs, _, term, trunc, _ = env.step(action)
        rows.append((obs, action, next_obs))
        terminated.append(term)
        obs = env.reset()[0] if term or trunc else next_obs
    env.close()
    obs, action, next_obs = (torch.as_tensor(np.array(column))
                             for column in zip(*rows, strict=True))
    done = termination_fn(env_id)(obs, action, next_obs)
    assert done.dtype == torch.bool and done.shape == (500,)
    assert done.tolist() == terminated
    assert any(terminated) == (env_id in TERMINATING)


def test_unknown_env_is_a_clear_error():
    with pytest.raises(ValueError, match="no termination function for env 'Hopper-v4'"):
        termination_fn("Hopper-v4")


@pytest.mark.parametrize("env_id", sorted(TERMINATING))
def test_non_finite_states_terminate(env_id):
    nan = torch.full((1, 30), float("nan"))
    assert termination_fn(env_id)(nan, nan[:, :1], nan).all()
