from __future__ import annotations

import warnings

import casadi as ca
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy.integrate import solve_ivp
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from lipctl.envs import make_env
from lipctl.envs.cstr import (
    ACTION_HIGH,
    ACTION_LOW,
    CSTR,
    ENV_ID,
    PARAMS,
    SAMPLING_PERIOD,
    STABILITY_LEVEL,
    cstr_rhs,
    rk4_step,
)

# (state, input) pairs across the stability region and the input box, bounds included.
CASES = [
    ([1.5, -70.0], [3.5, 5e5]),
    ([-1.5, 70.0], [-3.5, -5e5]),
    ([-1.25, 50.0], [1.0, -2e5]),
    ([0.3, 20.0], [-2.0, 1e5]),
]


def test_steady_state_is_an_equilibrium():
    assert PARAMS.CAs == pytest.approx(1.9537, abs=5e-5)
    assert PARAMS.Ts == pytest.approx(401.8727, abs=5e-5)
    np.testing.assert_allclose(cstr_rhs(np.zeros(2), np.zeros(2)), 0.0, atol=1e-8)
    after = rk4_step(np.zeros(2), np.zeros(2))
    assert np.all(np.abs(after) <= 1e-6 * np.array([PARAMS.CAs, PARAMS.Ts]))


@pytest.mark.parametrize("x, u", CASES)
def test_rk4_agrees_with_solve_ivp_over_one_period(x, u):
    x, u = np.array(x), np.array(u)
    exact = solve_ivp(lambda _, z: cstr_rhs(z, u), (0.0, SAMPLING_PERIOD), x, method="DOP853",
                      rtol=1e-12, atol=1e-12).y[:, -1]
    np.testing.assert_allclose(rk4_step(x, u), exact, rtol=0, atol=1e-8)
    assert not np.allclose(exact, x, atol=1e-3)  # the period moves the state: not a vacuous test


def test_casadi_and_numpy_definitions_agree():
    xs, us = ca.SX.sym("x", 2), ca.SX.sym("u", 2)
    symbolic = ca.Function("f", [xs, us], [cstr_rhs(xs, us), rk4_step(xs, us), CSTR.lyapunov(xs),
                                           CSTR.stage_cost(xs, us)])
    for x, u in CASES:
        x, u = np.array(x), np.array(u)
        numeric = [cstr_rhs(x, u), rk4_step(x, u), CSTR.lyapunov(x), CSTR.stage_cost(x, u)]
        for sym, num in zip(symbolic(x, u), numeric, strict=True):
            np.testing.assert_allclose(np.asarray(sym).ravel(), num, rtol=1e-12)


def test_numpy_definitions_batch_over_leading_axes():
    x, u = np.array([c[0] for c in CASES]), np.array([c[1] for c in CASES])
    batched = rk4_step(x, u)
    assert batched.shape == (len(CASES), 2)
    np.testing.assert_allclose(batched[1], rk4_step(x[1], u[1]), rtol=1e-14)
    np.testing.assert_allclose(CSTR.lyapunov(x), [313.0, 313.0, 206.25, 567.4])


def test_target_level_set_lies_in_the_target_ellipse():
    level = CSTR.target_lyapunov_level()
    angles = np.linspace(0, 2 * np.pi, 721)
    boundary = np.stack([0.1 * np.cos(angles), 3.0 * np.sin(angles)], axis=-1)
    assert CSTR.lyapunov(boundary).min() == pytest.approx(level, rel=1e-4)
    assert CSTR.in_target(np.array([[0.0, 0.0], [0.09, 0.0], [0.0, 2.9]])).all()
    assert not CSTR.in_target(np.array([[0.08, 2.0], [0.11, 0.0]])).any()


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized", "ignore:.*infinity")
def _warnings_of(checker, env: gym.Env) -> set[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checker(env)
    return {str(w.message) for w in caught}


def test_env_is_registered_and_passes_both_env_checkers_with_only_the_documented_warnings():
    """The CSTR keeps physical units and float64 (README, "The CSTR as a gymnasium env"): the
    checkers pass, and warn about exactly that and nothing else."""
    assert ENV_ID in gym.registry
    env = make_env(ENV_ID)
    gym_warnings = _warnings_of(check_env, env.unwrapped)
    assert len(gym_warnings) == 3, gym_warnings
    assert sum("symmetric and normalized space" in w for w in gym_warnings) == 1
    assert sum("observation space m" in w and "infinity" in w for w in gym_warnings) == 2
    sb3_warnings = _warnings_of(sb3_check_env, env.unwrapped)
    assert len(sb3_warnings) == 2, sb3_warnings
    assert sum("normalized Box action space" in w for w in sb3_warnings) == 1
    assert sum("dtype float64" in w for w in sb3_warnings) == 1
    assert env.spec.max_episode_steps == 100
    np.testing.assert_array_equal(env.action_space.low, ACTION_LOW)
    np.testing.assert_array_equal(env.action_space.high, ACTION_HIGH)


def test_initial_states_come_from_options_or_the_stability_region():
    env = make_env(ENV_ID)
    starts = np.array([env.reset(seed=seed)[0] for seed in range(200)])
    assert np.all(CSTR.lyapunov(starts) <= STABILITY_LEVEL)
    assert CSTR.lyapunov(starts).max() > 0.8 * STABILITY_LEVEL  # spread over the region
    observation, info = env.reset(options={"x0": [1.5, -70.0]})
    np.testing.assert_array_equal(observation, [1.5, -70.0])
    fixed = make_env(ENV_ID, x0=[-1.25, 50.0])
    np.testing.assert_array_equal(fixed.reset(seed=3)[0], [-1.25, 50.0])
    with pytest.raises(ValueError, match="x0"):
        env.reset(options={"x0": [1.0]})


def _rollout(seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Observations and true states of 10 steps of a fixed input from a fixed start."""
    env = make_env(ENV_ID, x0=[0.5, -20.0], **kwargs)
    observation, info = env.reset(seed=seed)
    observations, states = [observation], [info["state"]]
    for _ in range(10):
        observation, _, _, _, info = env.step(np.array([0.5, 1e5]))
        observations.append(observation)
        states.append(info["state"])
    return np.array(observations), np.array(states)


def test_measurement_noise_is_applied_to_observations_only_and_seeded():
    clean_obs, clean_states = _rollout(seed=1)
    np.testing.assert_array_equal(clean_obs, clean_states)
    noisy_obs, noisy_states = _rollout(seed=1, obs_noise_std=(0.01, 0.5))
    np.testing.assert_array_equal(noisy_states, clean_states)
    residual = noisy_obs - clean_states
    assert np.all(residual != 0)
    assert 0.2 < residual[:, 1].std() < 1.0 and residual[:, 0].std() < 0.03
    np.testing.assert_array_equal(_rollout(seed=1, obs_noise_std=(0.01, 0.5))[0], noisy_obs)
    assert not np.array_equal(_rollout(seed=2, obs_noise_std=(0.01, 0.5))[0], noisy_obs)


def test_process_disturbance_moves_the_true_state_and_is_seeded():
    _, clean = _rollout(seed=1)
    _, disturbed = _rollout(seed=1, disturbance_std=(1.0, 100.0))
    np.testing.assert_array_equal(disturbed[0], clean[0])
    assert np.all(disturbed[1:] != clean[1:])
    np.testing.assert_array_equal(_rollout(seed=1, disturbance_std=(1.0, 100.0))[1], disturbed)


def test_actions_are_clipped_flagged_and_counted():
    env = make_env(ENV_ID, x0=[0.5, -20.0])
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.array([10.0, -2e6]))
    assert info["clipped"] and info["clip_count"] == 1
    np.testing.assert_array_equal(info["action"], [3.5, -5e5])
    assert reward == pytest.approx(-CSTR.stage_cost(np.array([0.5, -20.0]), np.array([3.5, -5e5])))
    np.testing.assert_allclose(info["state"], rk4_step(np.array([0.5, -20.0]), info["action"]))
    _, _, _, _, info = env.step(np.array([1.0, 0.0]))
    assert not info["clipped"] and info["clip_count"] == 1
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="obs_noise_std"):
        make_env(ENV_ID, obs_noise_std=(-1.0, 0.0))
    with pytest.raises(ValueError, match="substeps"):
        make_env(ENV_ID, substeps=0)
