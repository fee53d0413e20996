"""The benchmark seam: a benchmark is a module and a conf/experiment yaml naming it; `lipctl bench`
needs no edit to run a new one, and refuses a module that is missing or lacks the protocol."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from lipctl.commands import bench
from lipctl.config import ConfigError
from tests.helpers import config_error, lipctl_with_user_code

TOY_MODULE = '''"""A toy benchmark: one run file per number, and their mean."""
import json

from lipctl.config import ConfigError, require_number


def validate(exp):
    if not exp.numbers:
        raise ConfigError("numbers", "needs at least one number")
    for i in range(len(exp.numbers)):
        require_number(exp, f"numbers.{i}")


def run_benchmark(exp, out, work):
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(exp.numbers):
        (out / "runs" / f"{i}.json").write_text(json.dumps({"x": x}))
    report(exp, out)


def report(exp, out):
    xs = [json.loads(p.read_text())["x"] for p in sorted((out / "runs").glob("*.json"))]
    (out / "mean.txt").write_text(f"{sum(xs) / len(xs)}\\n")
'''

TOY_CONFIG = """name: toy
module: toy_bench
numbers: [1.0, 2.0, 3.0]
"""


def toy_bench(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`lipctl bench experiment=toy` with the toy's module and yaml in `folder` only."""
    return lipctl_with_user_code(folder, "bench", "experiment=toy", *overrides)


@pytest.mark.slow
def test_a_new_benchmark_is_one_module_and_one_yaml(tmp_path):
    (tmp_path / "toy_bench.py").write_text(TOY_MODULE)
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "toy.yaml").write_text(TOY_CONFIG)
    result = toy_bench(tmp_path)
    assert result.returncode == 0, result.stderr
    mean = tmp_path / "results" / "toy" / "mean.txt"
    assert mean.read_text() == "2.0\n"
    mean.unlink()  # replot rebuilds it from runs/ alone
    assert toy_bench(tmp_path, "replot=true", "experiment.numbers=[9.0]").returncode == 0
    assert mean.read_text() == "2.0\n"


@pytest.mark.parametrize(("numbers", "expected"), [
    ("[]", "experiment.numbers: needs at least one number"),
    ("[1.0,oops]", "experiment.numbers.1: must be a number"),
])
def test_a_new_benchmarks_errors_name_their_keys_as_the_user_writes_them(
        tmp_path, monkeypatch, numbers, expected):
    """Found by the config check, with the toy's module and yaml found as `toy_bench` finds
    them: the module importable, its conf/ on Hydra's search path."""
    (tmp_path / "toy_bench.py").write_text(TOY_MODULE)
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "toy.yaml").write_text(TOY_CONFIG)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert expected in config_error("bench", "experiment=toy", f"experiment.numbers={numbers}",
                                        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                                        cwd=tmp_path)
    finally:
        sys.modules.pop("toy_bench", None)  # the toy's module, imported in this process


@pytest.mark.parametrize(("module", "expected"), [
    (None, "experiment.module: must name the benchmark's module"),
    ("lipctl.no_such_bench", "experiment.module: cannot import lipctl.no_such_bench"),
    ("lipctl.bench.report", "experiment.module: lipctl.bench.report lacks validate, "
                            "run_benchmark, report"),
])
def test_an_experiment_must_name_a_module_with_the_protocol(module, expected):
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        cfg = compose("bench", overrides=["experiment=lipschitz_bc"])
    cfg.experiment.module = module
    with pytest.raises(ConfigError, match=expected):
        bench.validate(cfg)


@pytest.mark.slow
def test_every_shipped_experiment_names_a_module_with_the_protocol():
    experiments = sorted(p.name.removesuffix(".yaml") for p in resources.files(
        "lipctl.conf").joinpath("experiment").iterdir() if p.name.endswith(".yaml"))
    assert "cstr_mpc" in experiments and "gail_lipschitz" in experiments
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        for name in experiments:
            exp = compose("bench", overrides=[f"experiment={name}"]).experiment
            module = bench.benchmark_module(exp)
            assert module.__name__.startswith("lipctl.bench."), name


@pytest.mark.parametrize("value", ["0", "2.5"])
def test_bootstrap_reps_must_be_a_whole_number_of_at_least_ten(tmp_path, value):
    assert "bootstrap_reps: must be" in config_error(
        "bench", "experiment=lipschitz_bc", f"bootstrap_reps={value}", cwd=tmp_path)
