"""Lipschitz behaviour cloning on linear systems: exact expert costs, the critical L, the
whole-sequence attack, the certified action change, and the benchmark end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from lipctl.agents.bc import BCPolicy, BCSettings, fit_bc
from lipctl.bench import lipschitz_bc
from lipctl.config import ConfigError
from lipctl.control.lti_robustness import LTILoop, sequence_attack, sphere_deltas
from lipctl.control.policy import LinearFeedback
from lipctl.envs.lti import (
    LTISystem,
    demonstrations,
    double_integrator,
    inverted_pendulum_linear,
    least_stabilising_gain,
    spectral_radius,
)
from tests.helpers import REPS, lipctl

UNBOUNDED = ([-np.inf], [np.inf])


def _expert(system: LTISystem) -> LinearFeedback:
    return LinearFeedback(system.lqr_gain(), *UNBOUNDED)


@pytest.mark.parametrize("make", [double_integrator, inverted_pendulum_linear])
def test_expert_cost_is_the_quadratic_form_of_its_closed_loop(make):
    system = make()
    x0 = system.initial_states(np.random.default_rng(0), 8)
    cost = LTILoop(_expert(system), system).cost(torch.as_tensor(x0)).numpy()
    finite = np.einsum("ni,ij,nj->n", x0, system.cost_matrix(system.lqr_gain()), x0)
    np.testing.assert_allclose(cost, finite, rtol=1e-5)  # the expert's weights are float32
    infinite = np.einsum("ni,ij,nj->n", x0, system.riccati(), x0)
    long = np.einsum("ni,ij,nj->n", x0, system.cost_matrix(system.lqr_gain(), 5000), x0)
    np.testing.assert_allclose(long, infinite, rtol=1e-5)
    assert np.all(finite <= infinite * (1 + 1e-9))


@pytest.mark.parametrize("a,b", [(1.5, 2.0), (-3.0, 0.5), (1.01, -1.0)])
def test_critical_gain_of_a_scalar_system_is_closed_form(a, b):
    norm, gain = least_stabilising_gain(np.array([[a]]), np.array([[b]]))
    assert norm == pytest.approx((abs(a) - 1) / abs(b), rel=1e-6)
    assert spectral_radius(np.array([[a]]) - np.array([[b]]) @ gain) < 1


@pytest.mark.slow
def test_critical_gain_is_zero_for_a_stable_system_and_stabilises_the_pendulum():
    assert least_stabilising_gain(np.diag([0.5, -0.9]), np.ones((2, 1)))[0] == 0.0
    integrator = double_integrator()  # both eigenvalues at 1: any small gain can stabilise it
    assert least_stabilising_gain(integrator.a, integrator.b)[0] == 0.0
    system = inverted_pendulum_linear()
    norm, gain = least_stabilising_gain(system.a, system.b)
    expert = np.linalg.norm(system.lqr_gain(), 2)
    assert 0 < norm < expert and spectral_radius(system.a - system.b @ gain) < 1
    assert spectral_radius(system.a - 0.9 * system.b @ gain) > 1  # on the boundary


@pytest.mark.slow
def test_sequence_attack_raises_the_cost_more_than_noise_of_the_same_radius():
    system = double_integrator()
    loop = LTILoop(_expert(system), system)
    x0 = torch.as_tensor(system.initial_states(np.random.default_rng(1), 16))
    scale, eps = torch.tensor([0.3, 0.4], dtype=torch.float64), 0.5
    generator = torch.Generator().manual_seed(0)
    attack = sequence_attack(loop, x0, eps, scale, steps=30, generator=generator)
    noise = sphere_deltas(attack.shape, eps, scale, generator)
    assert torch.all(torch.linalg.vector_norm(attack / scale, dim=-1) <= eps * (1 + 1e-9))
    nominal, attacked, noisy = loop.cost(x0), loop.cost(x0, attack), loop.cost(x0, noise)
    assert torch.all(attacked > noisy) and torch.all(attacked > nominal)
    assert (attacked - nominal).mean() > 1.5 * (noisy - nominal).mean()


def test_demonstrations_cover_the_noise_radius_with_expert_labels():
    system = double_integrator()
    gain = system.lqr_gain()
    states, actions, episodes, coverage = demonstrations(system, gain, 4, 1.0,
                                                         np.random.default_rng(0))
    assert states.shape == (4 * 2 * system.horizon, 2) and len(np.unique(episodes)) == 4
    np.testing.assert_allclose(actions, -states @ gain.T)
    clean, noisy = states.reshape(4, 2, system.horizon, 2).transpose(1, 0, 2, 3)
    radius = np.linalg.norm((noisy - clean) / np.array(coverage["scale"]), axis=-1)
    assert radius.max() <= 1.0 + 1e-9 and radius.max() > 0.9
    np.testing.assert_allclose(coverage["std"], states.std(0))


@pytest.mark.slow
def test_a_clones_action_change_never_exceeds_its_certified_bound_times_the_perturbation():
    system = double_integrator()
    rng = np.random.default_rng(0)
    states, actions, episodes, coverage = demonstrations(system, system.lqr_gain(), 6, 1.0, rng)
    clone = BCPolicy(2, 1, *UNBOUNDED, hidden=[32, 32], lipschitz={"L": 2.0})
    fit_bc(clone, states, actions, episodes, BCSettings(epochs=5, patience=5), seed=0)
    upper = clone.certificate(torch.as_tensor(states[:256], dtype=torch.float32)).upper
    assert upper <= 2.0 + 1e-6
    loop = LTILoop(clone, system)
    x0 = torch.as_tensor(system.initial_states(rng, 8))
    attack = sequence_attack(loop, x0, 1.0, torch.as_tensor(coverage["scale"]), steps=10)
    with torch.no_grad():
        _, seen, applied = loop.rollout(x0, attack)
        change = torch.linalg.vector_norm(applied - loop.policy(seen), dim=-1)
    assert torch.all(change <= upper * torch.linalg.vector_norm(attack, dim=-1) + 1e-9)
    assert change.max() > 0


@pytest.mark.slow
def test_bench_lipschitz_bc_writes_runs_and_rebuilds_its_report(workdir):
    out = workdir / "out"
    tiny = ["experiment.seeds=[0,1]", "experiment.initial_states=4", "experiment.eps=[0.5]",
            "experiment.demos.episodes=4", "experiment.fit.epochs=3", "experiment.attack_steps=5",
            "experiment.policy.hidden=[16,16]", "experiment.jobs=1",
            "~experiment.systems.double_integrator",
            "experiment.systems.inverted_pendulum_linear.expert_multiples=[1.0]",
            "experiment.systems.inverted_pendulum_linear.critical_multiples=[]"]
    lipctl("bench", "experiment=lipschitz_bc", REPS, f"out={out}", *tiny, cwd=workdir, check=True,
           timeout=600)
    with (out / "runs" / "inverted_pendulum_linear.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert {r["policy"] for r in runs} == {"expert", "L=1x K", "unconstrained"}
    assert len(runs) == 3 * 2  # policies x seeds, one eps
    for row in runs:
        if row["L"]:
            assert float(row["lipschitz_upper"]) <= float(row["L"]) * (1 + 1e-6)
        assert float(row["lipschitz_lower"]) <= float(row["lipschitz_upper"]) * (1 + 1e-6)
    expert = [r for r in runs if r["policy"] == "expert"]
    assert all(float(r["regret"]) == 0 for r in expert)
    # the regret bound holds for every policy; the deterioration bound where the policy is
    # linear (the expert: no linearisation error)
    assert all(float(r["regret"]) <= float(r["regret_bound"]) for r in runs)
    for row in expert:
        assert float(row["linearity_residual"]) < 1e-6
        assert float(row["attack_deterioration"]) <= float(row["attack_deterioration_bound"])
    info = json.loads((out / "summary.json").read_text())
    assert info["constants"]["inverted_pendulum_linear"]["critical_L"] > 0
    (out / "summary.csv").unlink()
    (out / "tradeoff_inverted_pendulum_linear.png").unlink()
    lipctl("bench", "experiment=lipschitz_bc", REPS, f"out={out}", "replot=true", cwd=workdir,
           check=True)
    assert (out / "summary.csv").is_file() and (out / "tradeoff_inverted_pendulum_linear.png")\
        .is_file()


@pytest.mark.slow
def test_bench_lipschitz_bc_clones_every_family_at_the_same_bounds(workdir):
    out = workdir / "out"
    lipctl("bench", "experiment=lipschitz_bc", REPS, f"out={out}", "experiment.seeds=[0]",
           "experiment.initial_states=4", "experiment.eps=[0.5]", "experiment.demos.episodes=4",
           "experiment.fit.epochs=3", "experiment.attack_steps=5",
           "experiment.policy.hidden=[16,16]", "experiment.jobs=1",
           "~experiment.systems.inverted_pendulum_linear",
           "experiment.systems.double_integrator.expert_multiples=[0.5,1.0]",
           "+experiment.families.soft_cap={layer: soft_cap, activation: maxmin}",
           cwd=workdir, check=True, timeout=600)
    with (out / "runs" / "double_integrator.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert sorted((r["family"], r["policy"]) for r in runs) == [
        ("", "expert"), ("", "unconstrained"), ("soft_cap", "L=0.5x K"), ("soft_cap", "L=1x K"),
        ("spectral", "L=0.5x K"), ("spectral", "L=1x K")]
    for row in runs:
        if row["family"]:
            assert float(row["lipschitz_upper"]) <= float(row["L"]) * (1 + 1e-6)
    for family in ("spectral", "soft_cap"):
        assert (out / f"tradeoff_double_integrator_{family}.png").is_file()


@pytest.mark.parametrize(("override", "key"), [
    ("experiment.families=null", "experiment.families"),
    ("+experiment.families.bad={layer: no_such_family}", "experiment.families.bad"),
])
def test_bench_lipschitz_bc_refuses_a_bad_family(override, key):
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        exp = compose("bench", overrides=["experiment=lipschitz_bc", override]).experiment
    with pytest.raises(ConfigError, match=key):
        lipschitz_bc.validate(exp)
