"""The benchmarks that write one results file (and deploy's): each composes from its
conf/experiment yaml with its results where they are committed, refuses a bad setting naming its
key before any work, and runs end to end through `lipctl bench` (stacked_update, tiny)."""

from __future__ import annotations

import importlib
import json

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from lipctl.config import ConfigError
from lipctl.extras import missing_modules
from tests.helpers import config_error, lipctl

# experiment -> where its results go by default
RESULTS = {"critic_update_cost": "results/layer_cost.json",
           "layer_level": "results/layer_level.json",
           "mbpo_memory": "results/mbpo_memory.json",
           "sac_throughput": "results/sac_throughput.json",
           "stacked_update": "results/stacked_update.json",
           "deploy": "results/deploy/summary.json"}


def composed(name: str, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        return compose("bench", overrides=[f"experiment={name}", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RESULTS))
def test_the_default_results_are_the_committed_ones(name):
    cfg = composed(name)
    assert f"{cfg.out}/{cfg.experiment.output}" == RESULTS[name]
    assert str(composed(name, "out=/tmp/elsewhere").out) == "/tmp/elsewhere"


@pytest.mark.parametrize(("name", "override", "key"), [
    ("critic_update_cost", "experiment.widths=[64,0]", "widths"),
    ("critic_update_cost", "experiment.arms=[no_such_arm]", "arms"),
    ("critic_update_cost", "experiment.burn_in=-1", "burn_in"),
    ("layer_level", "experiment.steps=0", "steps"),
    ("layer_level", "experiment.arms=['free tanh']", "arms"),
    ("mbpo_memory", "experiment.rollouts=[]", "rollouts"),
    ("stacked_update", "experiment.seed_counts=[2,4]", "seed_counts"),
    ("stacked_update", "experiment.rounds=1", "rounds"),
    ("sac_throughput", "experiment.repeats=0", "repeats"),
    ("sac_throughput", "experiment.device=gpu0", "device"),
    ("deploy", "experiment.steps=20", "steps"),
    ("deploy", "experiment.model=no/such/model.pt", "model"),
])
def test_a_bad_setting_is_refused_naming_its_key(name, override, key):
    exp = composed(name, override).experiment
    if name == "sac_throughput" and missing_modules("sb3"):
        pytest.skip("lipctl[sb3] is not installed")
    module = importlib.import_module(exp.module)
    module.validate(composed(name).experiment)  # the defaults pass
    with pytest.raises(ConfigError) as error:
        module.validate(exp)
    assert error.value.key == key


@pytest.mark.slow
def test_stacked_update_runs_end_to_end_and_replots(tmp_path):
    out = tmp_path / "out"
    tiny = ["experiment=stacked_update", "experiment.widths=[8]", "experiment.seed_counts=[1,3]",
            "experiment.rounds=2", "experiment.updates=1", "experiment.burn_in=1", f"out={out}"]
    lipctl("bench", *tiny, cwd=tmp_path, check=True)
    result = json.loads((out / "stacked_update.json").read_text())
    assert {"batch", "rounds", "updates_per_round", "burn_in", "measured_seconds", "machine",
            "results"} <= set(result)
    rows = {row["seeds"]: row for row in result["results"]}
    assert set(rows) == {1, 3} and rows[1]["gain_over_one"] == 1.0
    for count, row in rows.items():
        assert row["hidden"] == [8, 8]
        assert 0 < row["p25_s"] <= row["median_s"] <= row["p75_s"]
        assert abs(row["per_seed_s"] - row["median_s"] / count) < 1e-6
    replot = lipctl("bench", *tiny, "replot=true", cwd=tmp_path, check=True)
    assert "[8, 8] S=3:" in replot.stdout
    assert f"replot: no {tmp_path / 'none' / 'stacked_update.json'} to report from" in \
        config_error("bench", "experiment=stacked_update", f"out={tmp_path / 'none'}",
                     "replot=true", cwd=tmp_path)
    assert "experiment.updates: must be >= 1" in config_error(
        "bench", *tiny, "experiment.updates=0", cwd=tmp_path)
