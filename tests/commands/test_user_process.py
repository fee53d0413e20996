"""A user's own process, kept outside lipctl (tests/commands/user_process: one module, an env and
controller and benchmark yamls on Hydra's search path; the env's process is the plant, named
once): data -> fit -> mpc -> deploy, deploy with the user's own `_target_` controller, and the
process-MPC benchmark on it, with no code of lipctl's changed."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from lipctl.envs.files import read_csv
from tests.helpers import lipctl_with_user_code

USER = Path(__file__).resolve().parent / "user_process"


def user_lipctl(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`lipctl ARGS` as the user runs it in `folder`; it must succeed."""
    result = lipctl_with_user_code(folder, *args)
    assert result.returncode == 0, f"lipctl {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def last_step(result: subprocess.CompletedProcess, folder: Path) -> dict:
    """The last record of the step log `lipctl deploy` names on its first line."""
    log = result.stdout.split("step log ", 1)[1].split()[0]
    return json.loads((folder / log).read_text().splitlines()[-1])


@pytest.mark.slow
def test_a_users_process_goes_through_data_fit_mpc_and_deploy(tmp_path):
    shutil.copytree(USER, tmp_path, dirs_exist_ok=True)
    data = user_lipctl(tmp_path, "data", "env=toy_tank")
    assert data.stdout.startswith("data/toy_tank.npz: 112 samples")
    fit = user_lipctl(tmp_path, "fit", "env=toy_tank", "model=iclrnn", "epochs=3")
    model = "models/toy_tank-iclrnn-noise0.0.pt"
    assert fit.stdout.startswith(f"{model}: iclrnn of toy_tank") and "Lipschitz upper" in fit.stdout
    for name in ("iclrnn", "first_principles"):
        mpc = user_lipctl(tmp_path, "mpc", "env=toy_tank", f"model={name}")
        assert mpc.stdout.startswith(f"toy_tank: {name} MPC"), mpc.stdout
        assert "input-bound violations 0" in mpc.stdout
    deploy = user_lipctl(tmp_path, "deploy", "controller=model_mpc", f"checkpoint={model}",
                         "env=toy_tank", "controller.horizon=3", "controller.setpoint=high",
                         "steps=5")
    assert "5 steps of 0.2 s" in deploy.stdout and "deadline misses 0" in deploy.stdout
    assert 0.0 <= last_step(deploy, tmp_path)["action"][0] <= 3.0
    # the user's own controller: full inflow from h = 0.6 fills toward 3 with time constant 2 h
    own = user_lipctl(tmp_path, "deploy", "controller=constant_inflow", "env=toy_tank",
                      "steps=20")
    step = last_step(own, tmp_path)
    assert step["action"] == [3.0] and step["fallback"] is None
    expected = 3.0 - 2.4 * math.exp(-step["time"] / 2.0)  # the measurement at the last step
    assert step["measurement"][0] == pytest.approx(expected, rel=1e-3)
    # the process-MPC benchmark on the user's plant, from a yaml of the user's own
    user_lipctl(tmp_path, "bench", "experiment=toy_tank_mpc", "out=results/toy")
    loops = read_csv(tmp_path / "results" / "toy" / "closed_loop.csv")
    assert [(r["controller"], r["measurement_noise"]) for r in loops] == [
        (c, noisy) for c in ("first_principles", "iclrnn") for noisy in ("False", "True")]
    exact = loops[0]  # MPC on the ODE settles at "high" within the 8 steps after the change
    assert exact["change_4"] == "high" and exact["change_4_settled"] == "1"
    fits = read_csv(tmp_path / "results" / "toy" / "models.csv")
    assert [(r["setting"], r["model"], r["noise_sigma"]) for r in fits] == [
        ("nominal", "iclrnn", "0.0"), ("nominal", "iclrnn", "0.2")]
