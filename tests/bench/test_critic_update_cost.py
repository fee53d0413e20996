"""The update-cost benchmark: a tiny run writes one arm per layer family at every width."""

import json

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from lipctl.bench.critic_update_cost import ARMS, run_benchmark
from lipctl.lipschitz import FAMILIES


def experiment(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        return compose("bench", overrides=["experiment=critic_update_cost", *overrides]).experiment


@pytest.mark.slow
def test_tiny_run_writes_every_family_arm(tmp_path):
    exp = experiment("experiment.widths=[8,16]", "experiment.rounds=2", "experiment.updates=1",
                     "experiment.burn_in=1")
    run_benchmark(exp, tmp_path, tmp_path / "work")
    result = json.loads((tmp_path / "layer_cost.json").read_text())
    rows = {(tuple(row["hidden"]), row["arm"]): row for row in result["results"]}
    assert set(rows) == {((w, w), arm) for w in (8, 16) for arm in ARMS}
    specs = [row["options"].get("lipschitz", {}) for row in rows.values()]
    assert {spec["layer"] for spec in specs if "L" in spec} == set(FAMILIES)
    assert {spec["mode"] for spec in specs if spec.get("layer") == "spectral"} == {"normalize",
                                                                                   "cap"}
    assert rows[((8, 8), "optimizer=muon")]["options"] == {"optimizer": "muon"}
    for (hidden, _), row in rows.items():
        assert row["rounds"] == 2
        assert 0 < row["p25_s"] <= row["median_s"] <= row["p75_s"]
        plain = rows[(hidden, "plain")]["median_s"]
        assert abs(row["ratio_to_plain"] - row["median_s"] / plain) < 1e-3  # both rounded
    assert rows[((8, 8), "plain")]["ratio_to_plain"] == 1.0
    machine = result["machine"]
    assert machine["torch_threads"] == 1 and machine["cpus"] >= 1 and machine["processor"]


def test_selected_arms_always_include_plain(tmp_path):
    exp = experiment("experiment.widths=[8]", "experiment.arms=['layer=hammer']",
                     "experiment.rounds=1", "experiment.updates=1", "experiment.burn_in=0")
    run_benchmark(exp, tmp_path, tmp_path / "work")
    rows = json.loads((tmp_path / "layer_cost.json").read_text())["results"]
    assert [row["arm"] for row in rows] == ["plain", "layer=hammer"]
    assert rows[0]["p25_s"] == rows[0]["median_s"] == rows[0]["p75_s"]
