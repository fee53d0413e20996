"""`lipctl bench experiment=lipschitz_layers`: its arms, its config checks, and a tiny run end to
end (every constrained arm certified at its configured bound, the report rebuilt from runs/)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from lipctl.bench import lipschitz_layers
from lipctl.commands import bench
from lipctl.config import ConfigError
from tests.helpers import REPS, lipctl


def preset(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        return compose("bench", overrides=["experiment=lipschitz_layers", *overrides])


def test_the_preset_has_every_family_at_every_fraction_and_the_optimiser_arms():
    exp = preset().experiment
    critics, actors = (lipschitz_layers.arms(exp, network) for network in ("critic", "actor"))
    assert critics["unconstrained"]["family"] is None
    for network, arms, section in (("critic", critics, exp), ("actor", actors, exp.policies)):
        assert len(section.families) >= 4 and len(section.fractions) >= 2
        for family in section.families:
            for fraction in section.fractions:
                name = lipschitz_layers.arm_name(family, fraction, network=network)
                assert arms[name] == {"network": network, "family": family,
                                      "fraction": fraction, "optimizer": "adam"}
    assert critics["soft_cap_0.3x_muon"]["optimizer"] == "muon"
    assert actors["actor_soft_cap_0.3x_muon"]["optimizer"] == "muon"
    assert len(exp.seeds) >= 5
    overrides = lipschitz_layers.arm_overrides(exp, "pendulum", critics["aol_0.1x"])
    assert overrides == ["lipschitz=aol", f"lipschitz.L={0.1 * exp.critic_lipschitz.pendulum}",
                         "agent.learner.optimizer=adam"]
    # Pendulum's torque is in [-2, 2]: the actor's [-1, 1] output gets half the bound
    overrides = lipschitz_layers.arm_overrides(exp, "pendulum", actors["actor_aol_0.3x"])
    assert overrides[-1] == ("agent.learner.actor_lipschitz={layer: aol, L: "
                             f"{0.3 * exp.policies.policy_lipschitz.pendulum / 2:g}, "
                             "activation: relu}")


@pytest.mark.slow
def test_the_preset_composes_a_valid_train_config_for_every_arm():
    cfg = preset()
    bench.validate(cfg)  # composes and checks every arm's train config on every env
    exp = cfg.experiment
    critics = 1 + len(exp.families) * len(exp.fractions) + len(exp.optimizer_arms)
    policies = (len(exp.policies.families) * len(exp.policies.fractions)
                + len(exp.policies.optimizer_arms))
    assert {env: len(lipschitz_layers.env_arms(exp, env)) for env in exp.envs} == {
        "inverted_pendulum": critics, "pendulum": critics + policies}


@pytest.mark.slow
@pytest.mark.parametrize(("override", "key"), [
    ("~experiment.critic_lipschitz.pendulum", "experiment.critic_lipschitz"),
    ("experiment.fractions=[0.3,0]", "fractions.1"),
    ("experiment.seeds=[0,-1]", "experiment.seeds"),
    ("experiment.families=[spectral,no_such_family]", "lipschitz"),
    ("experiment.policies.envs=[hopper]", "experiment.policies.envs"),
    ("experiment.policies.attack.state_std.pendulum=[0.4,0]", "state_std"),
    ("experiment.policies.attack.eps=[0]", "policies.attack.eps.0"),
])
def test_a_bad_preset_is_refused_before_training(override, key):
    with pytest.raises(ConfigError, match=key):
        lipschitz_layers.validate(preset(override).experiment)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_tiny_benchmark_certifies_every_arm_at_its_bound_and_replots(workdir):
    out = workdir / "out"
    args = ["bench", "experiment=lipschitz_layers", f"out={out}", f"work={workdir / 'work'}",
            "experiment.families=[spectral,soft_cap]", "experiment.fractions=[0.5]",
            "experiment.optimizer_arms=[{family: soft_cap, optimizer: muon, fraction: 0.5}]",
            "experiment.policies.families=[spectral]", "experiment.policies.fractions=[0.5]",
            "experiment.policies.optimizer_arms=[]", "experiment.policies.attack.eps=[0.1]",
            "experiment.policies.attack.episodes=1", "experiment.policies.attack.steps=2",
            "experiment.bc_families=[aol]", "experiment.bc.seeds=[0]",
            "experiment.bc.initial_states=4", "experiment.bc.eps=[0.5]",
            "experiment.bc.demos.episodes=4", "experiment.bc.fit.epochs=3",
            "experiment.bc.attack_steps=5", "experiment.bc.policy.hidden=[16,16]",
            "~experiment.bc.systems.inverted_pendulum_linear",
            "experiment.bc.systems.double_integrator.expert_multiples=[1.0]",
            "experiment.seeds=[0,1]", "experiment.stack=2", "experiment.jobs=2",
            "~experiment.envs.inverted_pendulum",
            "experiment.envs.pendulum=['loop.total_steps=300','loop.warmup_steps=100',"
            "'agent.learner.hidden=[16,16]','loop.eval_every=100','loop.eval_episodes=1',"
            "'loop.log_every=100']", REPS]
    lipctl(*args, cwd=workdir, check=True, timeout=900)
    rows = read_rows(out / "summary.csv")
    assert {row["arm"] for row in rows} == {"unconstrained", "spectral_0.5x", "soft_cap_0.5x",
                                            "soft_cap_0.5x_muon"}
    (base,) = [row for row in rows if row["arm"] == "unconstrained"]
    for row in rows:
        assert row["seeds"] == "2" and row["env_steps"] == "300"
        for column in ("final_return_iqm", "auc_return_iqm"):  # per seed <= its best
            assert float(row[column]) <= float(row["best_return_iqm"]) + 0.1
        assert float(row["certified_over_reference"]) == pytest.approx(
            float(row["critic_lipschitz_upper"]) / 340.0, abs=1e-3)
        assert row["keeps_baseline_return"] == str(
            float(row["final_return_iqm"]) >= float(base["ci_low"]))
        if row["family"] != "unconstrained":
            assert float(row["bound"]) == 0.5 * 340.0
            assert 0 < float(row["critic_lipschitz_upper"]) <= float(row["bound"]) * (1 + 1e-6)
        for seed in (0, 1):
            run = out / "runs" / "pendulum" / row["arm"] / f"seed{seed}"
            assert json.loads((run / "summary.json").read_text())["env_steps"] == 300
            overrides = (workdir / "work" / "pendulum" / row["arm"] / f"seed{seed}" / ".hydra"
                         / "overrides.yaml").read_text()
            assert "seeds=[0,1]" in overrides
    (policy,) = [row for row in read_rows(out / "policies.csv")
                 if row["arm"] == "actor_spectral_0.5x"]
    assert float(policy["bound"]) == 0.5 * 36.8
    assert 0 < float(policy["policy_lipschitz_lower"]) <= float(policy["policy_lipschitz_upper"])
    assert float(policy["policy_lipschitz_upper"]) <= float(policy["bound"]) * (1 + 1e-6)
    for column in ("attack_nominal_return_iqm", "noise_return_eps0.1_iqm",
                   "attack_return_eps0.1_iqm"):
        assert float(policy[column]) < 0  # Pendulum's returns
    report = json.loads((out / "runs" / "pendulum" / "actor_spectral_0.5x" / "seed1"
                         / "robustness.json").read_text())
    assert report["episodes"] == 1 and report["rows"][0]["eps"] == 0.1
    clones = read_rows(out / "bc" / "runs" / "double_integrator.csv")
    assert sorted((row["family"], row["policy"]) for row in clones) == [
        ("", "expert"), ("", "unconstrained"), ("aol", "L=1x K")]
    for figure in ("pareto.png", "policies.png", "bc/tradeoff_double_integrator.png"):
        assert (out / figure).stat().st_size > 0
    tables = {name: (out / name).read_text()
              for name in ("summary.csv", "policies.csv", "bc/summary.csv")}
    for name in tables:
        (out / name).unlink()
    lipctl(*args[:4], "replot=true", *args[4:], cwd=workdir, check=True)
    assert {name: (out / name).read_text() for name in tables} == tables
