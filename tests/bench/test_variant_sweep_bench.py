"""Variant-sweep benchmarks (`mbpo_vs_ensemble`, `gail_lipschitz`): aggregation, presets, and a
tiny run end to end."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from lipctl.bench.variant_sweep import (
    arm_settings,
    run_overrides,
    seed_chunks,
    seed_groups,
    seeds_of,
    summarize,
    sweep_command,
    variant_of,
)
from lipctl.commands import bench
from lipctl.envs.files import read_csv
from lipctl.training import read_summary
from tests.helpers import REPS, config_error, lipctl


def fake_run(seed: int, final: float, wall: float, upper: float) -> dict:
    return {"seed": seed, "steps": np.array([500, 1000]), "returns": np.array([-900.0, final]),
            "env_steps": 1000, "wall_seconds": wall, "model_train_seconds": wall / 10,
            "rollout_seconds": 1.0, "learner_update_seconds": wall / 2, "peak_rss_mb": 300.0,
            "model_holdout_mse": 0.01, "state_lipschitz": np.array([2.0 * upper, upper]),
            "certificates": {"critic0": {"upper": upper, "lower": 1.0},
                             "critic1": {"upper": upper + 1, "lower": 2.0}}}


@pytest.mark.slow
def test_summary_has_one_row_per_env_and_variant_with_time_ratio():
    runs = {("pendulum", "ensemble"): [fake_run(s, -200.0 - s, 40.0, 100.0) for s in range(3)],
            ("pendulum", "single"): [fake_run(s, -150.0 - s, 20.0, 50.0) for s in range(3)]}
    exp = OmegaConf.create({"baseline": "ensemble", "last_train_metrics": ["model_holdout_mse"],
                            "overrides": [], "envs": {"pendulum": []},
                            "medians": ["wall_seconds", "model_train_seconds",
                                        "learner_update_seconds", "peak_rss_mb"]})
    rows = {row["variant"]: row for row in summarize(runs, exp)}
    assert rows["ensemble"]["final_return_mean"] == -201.0
    assert rows["single"]["final_return_iqm"] == -151.0
    assert rows["single"]["ci_low"] <= -151.0 <= rows["single"]["ci_high"]
    assert rows["ensemble"]["seconds_per_1k_steps"] == 40.0
    assert rows["single"]["time_vs_ensemble"] == 0.5
    assert rows["single"]["critic_lipschitz_upper"] == 51.0
    assert rows["single"]["critic_lipschitz_lower"] == 2.0
    assert rows["single"]["model_train_seconds_per_1k_steps"] == 2.0
    assert rows["single"]["learner_update_seconds_per_1k_steps"] == 10.0
    assert "expert_return" not in rows["single"]
    assert rows["single"]["p_improvement_vs_ensemble"] == 1.0  # every seed beats every seed
    assert rows["ensemble"]["p_improvement_vs_ensemble"] is None
    assert rows["single"]["critic_state_lipschitz_final"] == 50.0
    assert rows["single"]["critic_state_lipschitz_mean"] == 75.0
    assert rows["single"]["critic_state_lipschitz_final_vs_ensemble"] == 0.5
    assert rows["single"]["critic_lipschitz_upper_vs_ensemble_sampled"] == 0.51
    assert rows["single"]["seeds"] == 3 and rows["single"]["env_steps"] == 1000


def test_a_run_summary_of_an_earlier_version_reads_with_todays_time_names(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"wall_seconds": 9.0, "sac_update_seconds": 4.0, "env_steps": 10}))
    assert read_summary(path) == {"wall_seconds": 9.0, "learner_update_seconds": 4.0,
                                  "env_steps": 10}


def test_variants_with_their_own_seeds_sweep_apart_from_the_rest():
    exp = OmegaConf.create({"variants": ["ensemble", "single", "single_spectral"],
                            "seeds": [0, 1, 2], "variant_seeds": {"ensemble": [0, 1, 2, 3, 4]}})
    assert seed_groups(exp) == [(["ensemble"], [0, 1, 2, 3, 4]),
                                (["single", "single_spectral"], [0, 1, 2])]


@pytest.mark.parametrize(("override", "message"), [
    ("+experiment.variant_seeds.nosuch=[0]", "experiment.variant_seeds: unknown variant(s) "
                                             "['nosuch']"),
    ("+experiment.variant_seeds.ensemble=[]", "experiment.variant_seeds.ensemble: must be a "
                                             "non-empty list of integers >= 0, got []"),
    ("+experiment.variant_seeds.ensemble=[-1]", "experiment.variant_seeds.ensemble: must be a "
                                               "non-empty list of integers >= 0, got [-1]"),
])
def test_bad_variant_seeds_are_one_line(override, message, workdir):
    assert message in config_error("bench", "experiment=mbpo_vs_ensemble",
                                   f"out={workdir / 'out'}", "experiment.variants=[ensemble]",
                                   override, cwd=workdir)


def test_env_overrides_replace_the_common_ones_with_the_same_key():
    exp = OmegaConf.create({"overrides": ["loop.eval_every=500", "lipschitz.L=10"],
                            "envs": {"hopper": ["loop.eval_every=100", "env.mbpo.total_steps=9"]}})
    assert run_overrides(exp, "hopper") == ["loop.eval_every=100", "lipschitz.L=10",
                                            "env.mbpo.total_steps=9"]


ARMS = {"capped": {"variant": "single_spectral", "overrides": ["lipschitz.L=7"],
                   "env_overrides": {"hopper": ["lipschitz.L=9", "loop.eval_every=50"]}}}


def test_an_arm_runs_its_variant_with_its_own_overrides_in_its_own_folder():
    exp = OmegaConf.create({"variants": ["single", "capped", "ensemble"], "seeds": [0, 1],
                            "jobs": 2, "arms": ARMS, "overrides": ["loop.eval_every=500"],
                            "envs": {"hopper": ["lipschitz.L=1"], "pendulum": []}})
    assert run_overrides(exp, "hopper", "capped") == ["loop.eval_every=50", "lipschitz.L=9"]
    assert run_overrides(exp, "pendulum", "capped") == ["loop.eval_every=500", "lipschitz.L=7"]
    assert run_overrides(exp, "hopper", "single") == run_overrides(exp, "hopper")
    assert seed_groups(exp) == [(["single", "ensemble"], [0, 1]), (["capped"], [0, 1])]
    command = sweep_command("hopper", exp, Path("w"), ["capped"], [0, 1], stacked=False)
    assert "variant=single_spectral" in command and "lipschitz.L=9" in command
    assert "hydra.sweep.subdir=capped/seed${seed}" in command
    plain = sweep_command("hopper", exp, Path("w"), ["single", "ensemble"], [0], stacked=False)
    assert "variant=single,ensemble" in plain
    assert "hydra.sweep.subdir=${variant}/seed${seed}" in plain


def test_an_arm_bound_as_a_fraction_of_the_baseline_critic_runs_after_the_baseline(tmp_path):
    exp = OmegaConf.create({"variants": ["level", "ensemble"], "seeds": [0, 1, 2], "jobs": 2,
                            "baseline": "ensemble", "overrides": [], "envs": {"pendulum": []},
                            "arms": {"level": {"variant": "single_soft_cap",
                                               "bound_fraction": 0.5}}})
    assert seed_groups(exp) == [(["ensemble"], [0, 1, 2]), (["level"], [0, 1, 2])]
    for seed, final in enumerate((100.0, 300.0, 40.0)):  # the larger critic's, per run
        run = tmp_path / "ensemble" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "eval.csv").write_text("step,return_mean,critic0_state_lipschitz,"
                                      f"critic1_state_lipschitz\n500,-900,1e4,1e4\n"
                                      f"1000,-200,{final},{final / 2}\n")
    command = sweep_command("pendulum", exp, tmp_path, ["level"], [0], stacked=False)
    assert command[-1] == "lipschitz.L=50.000"  # half the median of 100, 300 and 40


@pytest.mark.parametrize(("override", "message"), [
    ("+experiment.arms={capped:{variant:nosuch}}", "experiment.arms.capped: needs `variant:`"),
    ("+experiment.arms={capped:{variant:single_soft_cap,bound_fraction:0}}",
     "experiment.arms.capped.bound_fraction: must be a finite number > 0, got 0"),
    ("+experiment.arms={capped:{variant:single,env_overrides:{hopper:[]}}}",
     "experiment.arms.capped.env_overrides: env(s) ['hopper'] are not in experiment.envs"),
    ("+experiment.arms={capped:{variant:single,overrides:[lipschitz.L=-1]}}",
     "lipschitz.L"),
])
def test_bad_arms_are_one_line(override, message, workdir):
    assert message in config_error("bench", "experiment=mbpo_vs_ensemble",
                                   f"out={workdir / 'out'}",
                                   "experiment.variants=[ensemble,capped]", override, cwd=workdir)


@pytest.mark.parametrize(("override", "message"), [
    ("+experiment.solved.hopper=1000", "experiment.solved: env 'hopper' is not in "
                                        "experiment.envs"),
    ("experiment.solved.pendulum=high", "experiment.solved.pendulum: must be a number"),
])
def test_bad_solved_levels_are_one_line(override, message, workdir):
    assert message in config_error("bench", "experiment=mbpo_vs_ensemble",
                                   f"out={workdir / 'out'}", override, cwd=workdir)


@pytest.mark.slow
def test_runs_are_timed_to_the_solved_level_of_their_env():
    exp = OmegaConf.create({"baseline": "single", "medians": ["wall_seconds"],
                            "last_train_metrics": [], "overrides": [], "solved": {"pendulum": -200},
                            "envs": {"pendulum": []}})
    runs = {("pendulum", "single"): [fake_run(s, -150.0 - 100 * s, 40.0, 3.0) for s in range(3)]}
    (row,) = summarize(runs, exp)
    assert row["solved_return"] == -200 and row["runs_reaching_solved"] == 1
    assert row["steps_to_solved_median"] == 1000


@pytest.mark.slow
def test_tiny_benchmark_runs_every_variant_through_the_launcher(workdir):
    out = workdir / "out"
    lipctl("bench", "experiment=mbpo_vs_ensemble", REPS, f"out={out}", f"work={workdir / 'work'}",
           "experiment.seeds=[0,1]", "experiment.variants=[ensemble,single_soft_cap]",
           "+experiment.variant_seeds.single_soft_cap=[1]", "~experiment.envs",
           "+experiment.envs={pendulum:['env.mbpo.total_steps=300','env.mbpo.warmup_steps=200',"
           "'agent.learner.hidden=[16,16]','env.mbpo.rollouts_per_retrain=200',"
           "'loop.eval_every=100','loop.eval_episodes=1','loop.log_every=100']}",
           cwd=workdir, check=True, timeout=600)
    with (out / "summary.csv").open(newline="") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"ensemble", "single_soft_cap"}
    assert rows["ensemble"]["seeds"] == "2" and rows["single_soft_cap"]["seeds"] == "1"
    for row in rows.values():
        assert row["env"] == "pendulum" and row["env_steps"] == "300"
        assert float(row["model_train_seconds_per_1k_steps"]) > 0
        assert float(row["learner_update_seconds_per_1k_steps"]) > 0
        assert 0 < float(row["critic_state_lipschitz_final"]) <= float(
            row["critic_lipschitz_upper"])
    assert float(rows["single_soft_cap"]["p_improvement_ci_low"]) >= 0
    finals = [float(read_csv(workdir / "work" / "pendulum" / "ensemble" / f"seed{seed}" /
                             "eval.csv")[-1][f"critic{i}_state_lipschitz"])
              for seed in (0, 1) for i in (0, 1)]
    reference = np.median([max(finals[:2]), max(finals[2:])])  # the baseline's, per run
    capped = OmegaConf.load(workdir / "work" / "pendulum" / "single_soft_cap" / "seed1" /
                            ".hydra" / "config.yaml")
    fraction = OmegaConf.load(Path(__file__).parents[2] / "conf" / "experiment" /
                              "mbpo_vs_ensemble.yaml").arms.single_soft_cap.bound_fraction
    assert capped.lipschitz.L == pytest.approx(fraction * reference, abs=1e-3)
    assert float(rows["single_soft_cap"]["critic_lipschitz_upper"]) <= capped.lipschitz.L + 1e-3
    assert (out / "curves.png").stat().st_size > 0 and (out / "lipschitz.png").stat().st_size > 0
    run = out / "runs" / "pendulum" / "ensemble" / "seed1"
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 300
    assert (run / "eval.csv").exists() and (run / "train.csv").exists()
    before = (out / "summary.csv").read_text()
    for made in ("summary.csv", "curves.png", "lipschitz.png"):
        (out / made).unlink()
    shutil.rmtree(workdir / "work")  # the report needs out/runs only
    lipctl("bench", "experiment=mbpo_vs_ensemble", REPS, f"out={out}", "replot=true",
           "experiment.seeds=[0,1]", "experiment.variants=[ensemble,single_soft_cap]",
           "+experiment.variant_seeds.single_soft_cap=[1]",
           "~experiment.envs", "+experiment.envs={pendulum:[]}", cwd=workdir, check=True)
    assert (out / "summary.csv").read_text() == before and (out / "lipschitz.png").exists()


def preset_runs(preset: str) -> Iterator[tuple[str, str, DictConfig]]:
    """(env, variant or arm, composed train config) of every run of a benchmark preset (an arm
    bound by the baseline's critic at a stand-in bound)."""
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        exp = compose("bench", overrides=[f"experiment={preset}"]).experiment
        for env in exp.envs:
            for name in exp.variants:
                bound = (["lipschitz.L=1.0"] if arm_settings(exp, name).get("bound_fraction")
                         is not None else [])
                yield env, name, compose("train", overrides=[
                    f"env={env}", f"variant={variant_of(exp, name)}",
                    *run_overrides(exp, env, name), *bound])


MBPO_PRESETS = ["mbpo_vs_ensemble", "mbpo_vs_ensemble_paper", "mbpo_gap_pilot",
                "mbpo_gap_pilot_long", "mbpo_strength_pilot"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", MBPO_PRESETS)
def test_each_variant_keeps_its_own_regularisers_under_the_preset_overrides(preset):
    """Overrides shared by every run must not turn the baselines into regularised critics; a
    bounded critic is held at the Lipschitz level (unit layers, output scale L)."""
    for env, name, cfg in preset_runs(preset):
        bounded = "spectral" in name or "soft_cap" in name
        robust = "adversarial" in name or "robust" in name
        assert (cfg.lipschitz.L is not None) == bounded, (env, name)
        assert cfg.lipschitz.layer_cap is None and cfg.lipschitz.level, (env, name)
        if bounded:
            layer = "soft_cap" if "soft_cap" in name else "spectral"
            assert cfg.lipschitz.layer == layer and cfg.lipschitz.mode == "normalize", name
        assert cfg.lipschitz.robust_eps_units == "std", (env, name)
        assert (cfg.lipschitz.robust_weight > 0) == robust, (env, name)
        assert cfg.agent.dynamics.ensemble_size == (7 if name == "ensemble" else 1)
        assert cfg.agent.dynamics.probabilistic == (name != "single_deterministic")


@pytest.mark.slow
def test_imitation_returns_are_normalised_by_the_expert_return():
    demos = Path(__file__).resolve().parents[2] / "demos" / "InvertedPendulum-v5-lqr.npz"
    exp = OmegaConf.create({"baseline": "gail_no_penalty", "medians": ["wall_seconds"],
                            "last_train_metrics": [], "overrides": [],
                            "envs": {"inverted_pendulum": [f"demos={demos}"]}})
    runs = {("inverted_pendulum", "gail_no_penalty"): [fake_run(s, 500.0 + 100 * s, 40.0, 3.0)
                                                       for s in range(3)]}
    (row,) = summarize(runs, exp)
    assert row["expert_return"] == 1000.0
    assert row["final_normalized_mean"] == 0.6 and row["best_normalized_mean"] == 0.6
    for name in ("final", "best"):
        low, high = row[f"{name}_normalized_ci_low"], row[f"{name}_normalized_ci_high"]
        assert row[f"{name}_normalized_iqm"] == 0.6 and 0.5 <= low <= 0.6 <= high <= 0.7
    assert row["auc_normalized_iqm"] == pytest.approx((0.6 - 0.9) / 2)  # evals -900 and 600
    assert row["runs_reaching_solved"] == 0 and np.isnan(row["steps_to_solved_median"])
    runs[("inverted_pendulum", "gail_no_penalty")][2]["returns"] = np.array([950.0, 700.0])
    (row,) = summarize(runs, exp)
    assert row["runs_reaching_solved"] == 1 and row["steps_to_solved_median"] == 500
    assert row["time_vs_gail_no_penalty"] == 1.0


PENALTY_POINTS = {"gail_no_penalty": "none", "gail_spectral_hidden": "none",
                  "gail_gp_expert": "expert", "gail_gp_policy": "policy"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gail_lipschitz", "gail_lipschitz_paper"])
def test_gail_variants_keep_their_own_discriminator_settings(preset):
    """Every run has the reference discriminator recipe (and, in the paper preset, TD3);
    variants differ only in what keeps D Lipschitz."""
    learner = {"gail_lipschitz": "SAC", "gail_lipschitz_paper": "TD3"}[preset]
    for _, variant, cfg in preset_runs(preset):
        assert cfg.agent.name == "gail" and cfg.demos is not None
        assert cfg.agent.learner._target_.endswith(f".{learner}"), variant
        assert cfg.agent.gail.entropy_weight > 0 and cfg.agent.gail.expert_label_min < 1
        gail, discriminator = cfg.agent.gail, cfg.agent.discriminator
        assert gail.penalty == PENALTY_POINTS.get(variant, "interpolate"), variant
        assert discriminator.bound is None and discriminator.head_bound is None
        assert (discriminator.hidden_bound == 1.0) == ("spectral_hidden" in variant), variant
        assert gail.preconditioning == ("pessimistic" in variant), variant
        assert gail.penalty_one_sided == (variant != "gail_gp_two_sided"), variant


@pytest.mark.slow
def test_gail_paper_preset_passes_the_benchmark_validation(tmp_path):
    """Every run of the paper preset composes and passes `lipctl train`'s checks, given
    demonstrations of each env (here short ones of a zero-action policy)."""
    from lipctl.control import run
    from lipctl.envs import make_env
    from lipctl.envs.demos import from_episodes, save_demos

    class Zero:
        def __init__(self, size: int):
            self.size = size

        def act(self, observation: np.ndarray) -> np.ndarray:
            return np.zeros(self.size, dtype=np.float32)

        def reset(self) -> None:
            pass

    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        cfg = compose("bench", overrides=["experiment=gail_lipschitz_paper"])
        envs = {env: compose("train", overrides=[f"env={env}"]).env.id
                for env in cfg.experiment.envs}
    assert set(envs.values()) == {"Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"}
    for env, env_id in envs.items():
        plant = make_env(env_id)
        path = tmp_path / f"{env_id}.npz"
        episodes = run(Zero(plant.action_space.shape[0]), plant, 4, seed=0, max_steps=50)
        save_demos(path, from_episodes(episodes, plant, "zero"))
        cfg.experiment.envs[env] = [f"demos={path}"]
    bench.validate(cfg)
    experiment = cfg.experiment
    assert all(seeds_of(experiment, v) == [0, 1, 2, 3, 4] for v in experiment.variants)
    assert "loop.total_steps=1000000" in experiment.overrides


@pytest.mark.slow
@pytest.mark.parametrize("preset", MBPO_PRESETS)
def test_mbpo_presets_pass_the_benchmark_validation(preset):
    """Every run of the preset composes and passes `lipctl train`'s checks before any work."""
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        cfg = compose("bench", overrides=[f"experiment={preset}"])
    bench.validate(cfg)
    runs = {(env, variant): cfg for env, variant, cfg in preset_runs(preset)}
    experiment = cfg.experiment
    if preset == "mbpo_vs_ensemble_paper":
        assert {env for env, _ in runs} == {"inverted_pendulum", "hopper", "walker2d",
                                            "halfcheetah", "ant", "humanoid"}
        assert all(cfg.agent.updates_per_step == 20 for cfg in runs.values())
    if preset.startswith("mbpo_vs_ensemble"):  # the comparisons: fresh seeds, >= 5 per arm
        assert all(seeds_of(experiment, v) == [0, 1, 2, 3, 4] for v in experiment.variants)
    else:  # the pilots: seeds the comparisons never report
        assert all(min(seeds_of(experiment, v)) >= 100 for v in experiment.variants)


def test_the_paper_preset_carries_the_cpu_presets_critic_levels_and_strengths():
    """The GPU preset runs the arms the cpu preset's pilots chose: the same bounds (as fractions
    of the ensemble critic's constant) and robust-loss weights."""
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        cpu, paper = (compose("bench", overrides=[f"experiment={name}"]).experiment
                      for name in ("mbpo_vs_ensemble", "mbpo_vs_ensemble_paper"))
    assert list(paper.variants) == list(cpu.variants)

    def strengths(exp: DictConfig) -> dict:
        return {name: (arm.variant, arm.get("bound_fraction"),
                       [o for o in arm.get("overrides", []) if "robust_weight" in o])
                for name, arm in exp.arms.items()}
    assert strengths(paper) == strengths(cpu) and strengths(cpu)


@pytest.mark.parametrize("seeds, variants, jobs, stacks", [
    ([0, 1, 2, 3, 4], 1, 2, [[0, 1, 2], [3, 4]]),  # one arm: its seeds split over both cores
    ([0, 1, 2, 3, 4], 5, 2, [[0, 1, 2, 3, 4]]),  # enough arms to keep the cores busy
    ([0, 1], 1, 4, [[0], [1]]),
])
def test_stacked_seeds_split_only_to_keep_the_jobs_busy(seeds, variants, jobs, stacks):
    assert seed_chunks(seeds, variants, jobs) == stacks


@pytest.mark.slow
def test_a_sweep_stacks_the_seeds_of_a_variant_that_stacks(workdir):
    """SAC's seeds train in one process (`seeds=[0,1]`), MBPO's one per process, into the same
    run folders; both reach the report."""
    out = workdir / "out"
    lipctl("bench", "experiment=mbpo_vs_ensemble", REPS, f"out={out}", f"work={workdir / 'work'}",
           "experiment.seeds=[0,1]", "experiment.variants=[single,sac]", "experiment.jobs=1",
           "~experiment.envs",
           "+experiment.envs={pendulum:['loop.total_steps=300','loop.warmup_steps=100',"
           "'env.mbpo.warmup_steps=200','agent.learner.hidden=[16,16]',"
           "'env.mbpo.rollouts_per_retrain=200','loop.eval_every=100','loop.eval_episodes=1',"
           "'loop.log_every=100']}",
           cwd=workdir, check=True, timeout=600)
    for variant, stacked in (("sac", True), ("single", False)):
        for seed in (0, 1):
            run = workdir / "work" / "pendulum" / variant / f"seed{seed}"
            assert json.loads((run / "summary.json").read_text())["env_steps"] == 300
            overrides = (run / ".hydra" / "overrides.yaml").read_text()
            assert ("seeds=[0,1]" in overrides) == stacked, overrides
            assert (out / "runs" / "pendulum" / variant / f"seed{seed}" / "eval.csv").exists()
    with (out / "summary.csv").open(newline="") as f:
        assert {row["variant"] for row in csv.DictReader(f)} == {"single", "sac"}
