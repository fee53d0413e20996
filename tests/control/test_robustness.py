"""Closed-loop robustness: the measurement-perturbing wrapper, sphere noise, the PGD adversary,
the eps sweep, and the CLI's errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lipctl.control import run
from lipctl.control.policy import LinearFeedback, ModuleController
from lipctl.control.robustness import PGDAttack, robustness_sweep
from lipctl.envs import make_env
from lipctl.envs.experts import make_expert
from lipctl.envs.perturbation import PerturbedObservation, SphereNoise, vector_norm
from tests.helpers import assert_user_error, config_error, lipctl

ENV_ID = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def lqr() -> tuple[nn.Module, float]:
    """The LQR expert as a torch policy u = clip(-K x), and its Lipschitz constant ||K||_2."""
    env = make_env(ENV_ID)
    expert = make_expert("lqr", env)
    env.close()
    return (LinearFeedback(expert.gain, expert.low, expert.high).eval(),
            float(np.linalg.norm(expert.gain, 2)))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_wrapper_moves_only_the_measurement_and_projects_onto_the_ball(norm):
    eps = 0.01
    plain = make_env(ENV_ID)
    wrapped = PerturbedObservation(make_env(ENV_ID), lambda obs: np.full_like(obs, 1.0), eps,
                                   norm)
    clean, _ = plain.reset(seed=3)
    seen, info = wrapped.reset(seed=3)
    for step in range(20):
        delta = seen - clean
        assert vector_norm(delta, norm) == pytest.approx(eps)
        assert info["perturbation_norm"] == pytest.approx(eps)
        np.testing.assert_array_equal(info["clean_observation"], clean)
        action = np.array([0.5 * np.sin(step)])
        clean, reward, terminated, _, _ = plain.step(action)
        seen, wrapped_reward, wrapped_terminated, _, info = wrapped.step(action)
        assert (reward, terminated) == (wrapped_reward, wrapped_terminated)
    plain.close()
    wrapped.close()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_sphere_noise_lies_on_the_sphere_and_repeats_with_its_seed(norm):
    draws = [SphereNoise(0.2, norm, seed=7)(np.zeros(5)) for _ in range(2)]
    np.testing.assert_array_equal(*draws)
    noise = SphereNoise(0.2, norm, seed=8)
    deltas = np.stack([noise(np.zeros(5)) for _ in range(500)])
    norms = np.array([vector_norm(d, norm) for d in deltas])
    np.testing.assert_allclose(norms, 0.2)
    assert np.abs(deltas.mean(0)).max() < 0.03  # no preferred direction


@pytest.mark.slow
def test_adversary_with_zero_eps_changes_nothing(lqr):
    policy, _ = lqr
    assert not PGDAttack(policy, 0.0)(np.ones(4)).any()
    report = robustness_sweep(policy, ENV_ID, [0.0], episodes=1, attack_steps=3, seed=5)
    (row,) = report.rows
    assert row.attack_mean == row.noise_mean == report.nominal_mean
    assert row.attack_action_change == row.noise_action_change == 0.0
    plant = PerturbedObservation(make_env(ENV_ID), PGDAttack(policy, 0.0), 0.0)
    (attacked,) = run(ModuleController(policy), plant, seed=5)
    plant.close()
    assert all(info["perturbation_norm"] == 0 for info in attacked.infos)
    assert attacked.episode_return == report.nominal_mean


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_adversary_stays_in_the_ball_and_moves_the_action_more_than_noise(lqr, norm):
    policy, _ = lqr
    eps = 0.05
    attack, noise = PGDAttack(policy, eps, norm, steps=5), SphereNoise(eps, norm, seed=0)
    states = np.random.default_rng(0).normal(0, 0.05, (200, 4))

    def change(delta: np.ndarray, state: np.ndarray) -> float:
        with torch.no_grad():
            x = torch.as_tensor(np.stack([state, state + delta]), dtype=torch.float32)
            a, b = policy(x)
        return float((a - b).norm())

    attacked = [(attack(s), s) for s in states]
    assert max(vector_norm(d, norm) for d, _ in attacked) <= eps * (1 + 1e-5)
    attack_changes = np.array([change(d, s) for d, s in attacked])
    noise_changes = np.array([change(noise(s), s) for s in states])
    assert attack_changes.mean() > 1.5 * noise_changes.mean()
    assert (attack_changes >= noise_changes - 1e-6).mean() > 0.95


@pytest.mark.slow
def test_sweep_in_closed_loop_never_moves_an_action_more_than_the_lipschitz_bound(lqr):
    policy, gain = lqr
    report = robustness_sweep(policy, ENV_ID, [0.02], episodes=1, attack_steps=5, seed=0)
    (row,) = report.rows
    assert report.nominal_mean == 1000
    assert row.noise_action_change < row.attack_action_change <= gain * 0.02 * (1 + 1e-4)
    assert row.attack_action_change > 0.9 * gain * 0.02  # PGD finds the worst direction of -K


@pytest.mark.slow
def test_radii_in_units_of_a_state_scale_equal_raw_radii_times_it(lqr):
    """With state_scale c (every dimension), radius eps moves the state as far as radius
    c * eps in raw units: the same noise, the same returns and action changes."""
    policy, _ = lqr
    raw = robustness_sweep(policy, ENV_ID, [0.03], episodes=2, attack_steps=5, seed=3)
    scaled = robustness_sweep(policy, ENV_ID, [0.01], episodes=2, attack_steps=5, seed=3,
                              state_scale=np.full(4, 3.0))
    assert scaled.nominal_mean == raw.nominal_mean
    for mine, theirs in zip(scaled.rows, raw.rows, strict=True):
        for field in ("noise_mean", "attack_mean", "noise_action_change",
                      "attack_action_change"):
            assert getattr(mine, field) == pytest.approx(getattr(theirs, field), rel=1e-3)


@pytest.mark.slow
def test_a_state_scale_perturbs_each_dimension_in_its_own_units(lqr):
    """Only the first dimension scaled up: the attack then moves the action as far as the gain
    of that dimension allows, and never more than ||K diag(scale)|| * eps."""
    policy, _ = lqr
    scale = np.array([10.0, 1e-6, 1e-6, 1e-6])
    report = robustness_sweep(policy, ENV_ID, [0.01], episodes=1, attack_steps=5, seed=0,
                              state_scale=scale)
    gain = float(np.linalg.norm(policy.linear.weight.detach().double().numpy() * scale, 2))
    (row,) = report.rows
    assert row.attack_action_change <= gain * 0.01 * (1 + 1e-4)
    assert row.attack_action_change > 0.9 * gain * 0.01


ROBUSTNESS_ERRORS = [
    (["checkpoint=missing.pt"], "checkpoint not found: missing.pt"),
    (["checkpoint={checkpoint}", "eps=[0.1,-0.01]"], "eps.1: must be >= 0"),
    (["checkpoint={checkpoint}", "norm=l1"], "norm: must be one of l2, linf"),
    (["checkpoint={checkpoint}", "attack_steps=0"], "attack_steps: must be >= 1"),
    (["checkpoint={checkpoint}", "out=report.txt"], "out: must end in .csv or .json"),
]


@pytest.mark.parametrize("args,expected", ROBUSTNESS_ERRORS,
                         ids=[" ".join(args) for args, _ in ROBUSTNESS_ERRORS])
def test_robustness_cli_errors_are_one_line(workdir, args, expected):
    checkpoint = workdir / "policy.pt"
    checkpoint.write_bytes(b"")  # validation fails before the file is read
    args = [arg.format(checkpoint=checkpoint) for arg in args]
    assert expected in config_error("robustness", *args, cwd=workdir)


@pytest.mark.slow
def test_robustness_refuses_a_file_that_is_no_checkpoint_in_one_line(workdir):
    """Found when the checkpoint is read, at the start of the run."""
    garbage = workdir / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert_user_error(lipctl("robustness", f"checkpoint={garbage}", cwd=workdir, timeout=120),
                      "(refused: it is not plain data)")
