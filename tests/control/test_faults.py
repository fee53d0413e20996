"""Each injected fault makes the runtime apply its fallback, log the cause, and finish the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipctl.control.faults import FaultyController, FaultyPlant
from lipctl.control.runtime import GymPlant, Runtime
from lipctl.envs import make_env
from lipctl.envs.cstr import ENV_ID

PERIOD = 18.0  # the CSTR's sampling period, seconds
STEPS, FAULT = 6, 3
BACKUP_ACTION = np.array([-1.0, -1e4])


class Counting:
    """Action [k, 0] on its k-th call: every action differs, so a held one is recognisable."""

    def __init__(self) -> None:
        self.calls = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.array([0.1 * self.calls, 0.0])

    def reset(self) -> None:
        self.calls = 0


class Backup:
    """A constant backup controller that remembers what it was shown."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def act(self, observation: np.ndarray) -> np.ndarray:
        self.seen.append(observation.copy())
        return BACKUP_ACTION.copy()

    def reset(self) -> None:
        self.seen = []


def _plant(**faults) -> FaultyPlant:
    return FaultyPlant(GymPlant(make_env(ENV_ID, x0=[1.5, -70.0]), PERIOD), **faults)


FAULTS = {  # name: (plant faults, controller faults, expected cause)
    "drop": ({"drop_steps": {FAULT}}, {}, "stale_measurement"),
    "delay": ({"delay_steps": {FAULT}}, {}, "stale_measurement"),
    "nan": ({"nan_steps": {FAULT}}, {}, "non_finite_measurement"),
    "spike": ({"spike_steps": {FAULT}}, {}, "out_of_range"),
    "disconnect": ({"disconnect_steps": {FAULT}}, {}, "read_error"),
    "solver_failure": ({}, {"fail_steps": {FAULT}}, "solver_failure"),
    "slow_solve": ({}, {"slow_steps": {FAULT}, "slow_s": 0.05}, "deadline_miss"),
}


@pytest.mark.parametrize("fallback", ["hold", "backup"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_gives_its_fallback_and_event(tmp_path, fault, fallback):
    plant_faults, controller_faults, cause = FAULTS[fault]
    backup = Backup()
    log = tmp_path / "steps.jsonl"
    runtime = Runtime(FaultyController(Counting(), **controller_faults), _plant(**plant_faults),
                      PERIOD, STEPS, log, initial_action=[0.0, 0.0],
                      measurement_range=([-10.0, -500.0], [10.0, 500.0]),
                      fallback="hold" if fallback == "hold" else backup, deadline_s=0.02)
    summary = runtime.run()

    assert summary["steps"] == STEPS and summary["fallbacks_by_cause"] == {cause: 1}
    assert summary["deadline_misses"] == (cause == "deadline_miss")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records == runtime.records and [r["step"] for r in records] == list(range(STEPS))
    faulty = records[FAULT]
    assert faulty["fallback"] == cause and faulty["events"][0].startswith(cause)
    assert all(r["fallback"] is None and r["events"] == [] for i, r in enumerate(records)
               if i != FAULT)
    if fallback == "hold":
        assert faulty["action"] == records[FAULT - 1]["action"]
    else:
        assert faulty["action"] == BACKUP_ACTION.tolist()
        # the backup acts on the last valid measurement: this step's only if it was valid
        valid = FAULT if cause in ("solver_failure", "deadline_miss") else FAULT - 1
        np.testing.assert_array_equal(backup.seen[-1], records[valid]["measurement"])
    # the step after the fault is the controller's again
    assert records[FAULT + 1]["action"] != faulty["action"]


def test_nan_measurement_is_logged_as_strict_json(tmp_path):
    log = tmp_path / "steps.jsonl"
    Runtime(Counting(), _plant(nan_steps={1}), PERIOD, 3, log, initial_action=[0.0, 0.0]).run()
    record = json.loads(log.read_text().splitlines()[1], parse_constant=pytest.fail)
    assert record["measurement"] == ["nan", "nan"]


def test_stale_tolerance_accepts_one_missed_update(tmp_path):
    runtime = Runtime(Counting(), _plant(drop_steps={2, 4, 5}), PERIOD, 7,
                      tmp_path / "steps.jsonl", initial_action=[0.0, 0.0],
                      stale_after_s=1.5 * PERIOD)
    assert runtime.run()["fallbacks_by_cause"] == {"stale_measurement": 1}
    assert [r["step"] for r in runtime.records if r["fallback"]] == [5]


def test_invalid_action_and_failing_backup_fall_back_to_hold(tmp_path):
    class Broken(Counting):
        def act(self, observation: np.ndarray) -> np.ndarray:
            action = super().act(observation)
            return action * np.nan if self.calls == 2 else action

    class FailingBackup(Backup):
        def act(self, observation: np.ndarray) -> np.ndarray:
            raise RuntimeError("backup down")

    runtime = Runtime(Broken(), _plant(), PERIOD, 4, tmp_path / "steps.jsonl",
                      initial_action=[0.0, 0.0], fallback=FailingBackup())
    runtime.run()
    faulty = runtime.records[1]
    assert faulty["fallback"] == "invalid_action"
    assert faulty["events"][1].startswith("backup_error")
    assert faulty["action"] == runtime.records[0]["action"]


def test_fault_before_any_action_holds_the_initial_action(tmp_path):
    runtime = Runtime(Counting(), _plant(nan_steps={0}), PERIOD, 2, tmp_path / "steps.jsonl",
                      initial_action=[0.5, 0.0])
    runtime.run()
    assert runtime.records[0]["action"] == [0.5, 0.0]


def test_drop_and_delay_need_an_earlier_reading():
    with pytest.raises(ValueError, match="read 0"):
        _plant(drop_steps={0})


def test_any_controller_exception_is_a_controller_error(tmp_path):
    class Dividing(Counting):
        def act(self, observation: np.ndarray) -> np.ndarray:
            action = super().act(observation)
            return action / 0 if self.calls == 2 else action

    with np.errstate(divide="raise"):
        runtime = Runtime(Dividing(), _plant(), PERIOD, 3, tmp_path / "steps.jsonl",
                          initial_action=[0.0, 0.0])
        summary = runtime.run()
    assert summary["fallbacks_by_cause"] == {"controller_error": 1}
    assert "FloatingPointError" in runtime.records[1]["events"][0]

