"""The controller runtime: Lipschitz gate, GymPlant, MPC in the loop, pacing, crash-safe log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lipctl.control import reached_step
from lipctl.control.faults import FaultyController
from lipctl.control.mpc import MPC
from lipctl.control.process_mpc import process_mpc
from lipctl.control.runtime import DeploymentRefused, GymPlant, Plant, Runtime, lipschitz_gate
from lipctl.envs import make_env
from lipctl.envs.cstr import CSTR, ENV_ID, PUBLISHED_STARTS, SAMPLING_PERIOD
from lipctl.lipschitz.certificates import Certificate

PERIOD = SAMPLING_PERIOD * 3600  # seconds
REPO = Path(__file__).resolve().parents[2]


class Zero:
    def act(self, observation: np.ndarray) -> np.ndarray:
        return np.zeros(2)

    def reset(self) -> None:
        pass


def _cstr(start=PUBLISHED_STARTS[0]) -> GymPlant:
    return GymPlant(make_env(ENV_ID, x0=list(start)), PERIOD)


def _runtime(tmp_path: Path, **kwargs) -> Runtime:
    return Runtime(Zero(), _cstr(), PERIOD, 3, tmp_path / "steps.jsonl",
                   initial_action=[0.0, 0.0], **kwargs)


def test_gym_plant_is_a_plant_with_its_own_clock():
    plant = _cstr()
    assert isinstance(plant, Plant)
    plant.reset()
    x0, t0 = plant.read()
    plant.write(np.zeros(2))
    x1, t1 = plant.read()
    assert (t0, t1) == (0.0, PERIOD)
    np.testing.assert_array_equal(x0, PUBLISHED_STARTS[0])
    np.testing.assert_array_equal(x1, plant.info["state"])
    plant.close()


CERTIFICATE = Certificate(upper=3.2, lower=2.1, method="eclipse", seconds=0.1)


@pytest.mark.parametrize("certificate", [CERTIFICATE, CERTIFICATE.to_dict()])
def test_deployment_refused_above_the_lipschitz_maximum(tmp_path, certificate):
    with pytest.raises(DeploymentRefused) as refused:
        _runtime(tmp_path, lipschitz_max=3.0, certificate=certificate)
    message = str(refused.value)
    assert "\n" not in message and "3.2" in message and "lipschitz_max=3" in message
    assert not (tmp_path / "steps.jsonl").exists()


@pytest.mark.parametrize("certificate", [CERTIFICATE, CERTIFICATE.to_dict()])
def test_deployment_accepted_at_or_below_the_maximum(tmp_path, certificate):
    runtime = _runtime(tmp_path, lipschitz_max=3.2, certificate=certificate)
    assert runtime.certificate == CERTIFICATE
    assert runtime.run()["steps"] == 3


def test_deployment_refused_without_a_certificate():
    with pytest.raises(DeploymentRefused, match="no Lipschitz certificate"):
        lipschitz_gate(None, 1.0)


def test_first_principles_mpc_through_the_runtime_reaches_the_target(tmp_path):
    plant = _cstr(PUBLISHED_STARTS[1])
    runtime = Runtime(process_mpc(CSTR), plant, PERIOD, 20, tmp_path / "steps.jsonl",
                      initial_action=[0.0, 0.0],
                      measurement_range=([-5.0, -200.0], [5.0, 200.0]))
    summary = runtime.run()
    states = [r["measurement"] for r in runtime.records] + [plant.info["state"].tolist()]
    reached = reached_step(CSTR, np.asarray(states))
    assert reached is not None and reached <= 16
    assert summary["steps"] == 20 and summary["fallbacks"] == 0
    assert summary["deadline_misses"] == 0
    solve = summary["solve_time"]
    assert 0 < solve["p50"] <= solve["p95"] <= solve["max"] < PERIOD
    plant.close()


def test_realtime_pacing_holds_the_period(tmp_path):
    period = 0.02
    runtime = Runtime(Zero(), _cstr(), period, 6, tmp_path / "steps.jsonl",
                      initial_action=[0.0, 0.0], realtime=True)
    start = time.monotonic()
    summary = runtime.run()
    assert time.monotonic() - start >= 5 * period
    assert summary["period"]["p50"] == pytest.approx(period, abs=0.01)
    times = [r["time"] for r in runtime.records]
    assert np.all(np.diff(times) > 0.5 * period)


def test_failed_solves_of_a_strict_mpc_are_solver_failures(tmp_path):
    mpc = MPC(CSTR.step, CSTR, ipopt_options={"max_iter": 0}, strict=True)  # IPOPT never succeeds
    runtime = Runtime(mpc, _cstr(), PERIOD, 3, tmp_path / "steps.jsonl",
                      initial_action=[0.5, 0.0])
    assert runtime.run()["fallbacks_by_cause"] == {"solver_failure": 3}
    assert runtime.records[0]["events"] == ["solver_failure: Maximum_Iterations_Exceeded"]
    assert all(r["action"] == [0.5, 0.0] for r in runtime.records)


def test_a_late_step_shifts_the_schedule_without_catch_up_steps(tmp_path):
    period = 0.05
    slow = FaultyController(Zero(), slow_steps={1}, slow_s=3 * period)
    runtime = Runtime(slow, _cstr(), period, 5, tmp_path / "steps.jsonl",
                      initial_action=[0.0, 0.0], realtime=True)
    summary = runtime.run()
    assert summary["deadline_misses"] == 1
    gaps = np.diff([r["time"] for r in runtime.records])
    assert gaps[1] >= 2.5 * period  # the slow step ...
    assert np.all(gaps[2:] > 0.5 * period)  # ... is followed by paced steps, not a burst


def test_a_set_stop_event_ends_the_run_after_the_step_in_progress(tmp_path):
    runtime = Runtime(Zero(), _cstr(), 0.05, 10**6, tmp_path / "steps.jsonl",
                      initial_action=[0.0, 0.0], realtime=True)
    stop, seen = threading.Event(), []

    def stop_after_three_steps() -> None:
        deadline = time.monotonic() + 60
        while len(runtime.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        seen.append(len(runtime.records))
        stop.set()

    threading.Thread(target=stop_after_three_steps, daemon=True).start()
    summary = runtime.run(stop)
    assert 3 <= seen[0] <= summary["steps"] <= seen[0] + 1  # only the step in progress follows
    assert len(runtime.log_path.read_text().splitlines()) == summary["steps"]


def test_log_is_appended_across_runs(tmp_path):
    runtime = _runtime(tmp_path)
    runtime.run()
    runtime.run()
    steps = [json.loads(line)["step"] for line in runtime.log_path.read_text().splitlines()]
    assert steps == [0, 1, 2, 0, 1, 2]


KILLED_RUN = """
import numpy as np
from lipctl.control.faults import FaultyController
from lipctl.control.runtime import GymPlant, Runtime
from lipctl.envs import make_env
from lipctl.envs.cstr import ENV_ID

class Zero:
    def act(self, observation):
        return np.zeros(2)

    def reset(self):
        pass

slow = FaultyController(Zero(), slow_steps=range(10**9), slow_s=0.02)
plant = GymPlant(make_env(ENV_ID, x0=[1.5, -70.0]), period_s=18.0)
Runtime(slow, plant, 18.0, 10**6, {log!r}, initial_action=[0.0, 0.0]).run()
"""


@pytest.mark.slow
def test_killed_runtime_leaves_a_readable_log_of_every_step(tmp_path):
    log = tmp_path / "steps.jsonl"
    script = textwrap.dedent(KILLED_RUN).format(log=str(log))
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text().count("\n") >= 10):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the runtime wrote no log in time"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    text = log.read_text()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["step"] for r in records] == list(range(len(records)))
    assert len(records) >= 10 and all(r["action"] == [0.0, 0.0] for r in records)
