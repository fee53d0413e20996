"""The CSTR served over OPC UA on localhost: host guard, client I/O, and a closed loop that
survives a restart of the plant server process."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lipctl.bench.deploy import PlantProcess
from lipctl.control.opcua_plant import (
    OpcUaPlant,
    PlantServer,
    PlantUnavailable,
    TagError,
    is_loopback,
)
from lipctl.control.process_mpc import process_mpc
from lipctl.control.runtime import Runtime
from lipctl.envs.cstr import CSTR, CSTREnv, rk4_step

X0 = np.array([1.5, -70.0])
PUSH = np.array([3.5, 5e5])  # the largest feed and heat inputs


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_server_refuses_non_loopback_host(host: str):
    with pytest.raises(ValueError, match="non-loopback"):
        PlantServer(CSTREnv(), host=host)
    PlantServer(CSTREnv(), host=host, allow_remote=True)  # explicit opt-in; not started


def test_loopback_hosts_are_recognised():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.5", "::1", "localhost"))


def test_client_without_server_raises_plant_unavailable_in_bounded_time():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with OpcUaPlant(f"opc.tcp://127.0.0.1:{port}", CSTR, timeout_s=0.5, reconnect_attempts=2,
                    reconnect_delay_s=0.05) as plant:
        start = time.monotonic()
        with pytest.raises(PlantUnavailable, match="3 tries"):
            plant.read()
        with pytest.raises(PlantUnavailable):
            plant.write(np.zeros(2))
        assert time.monotonic() - start < 5.0


@pytest.fixture(scope="module")
def served() -> Iterator[PlantServer]:
    """An in-process server stepping slowly enough to reason about single steps."""
    with PlantServer(CSTREnv(), port=0, step_period_s=0.25, x0=X0) as server:
        yield server


def _next_measurement(plant: OpcUaPlant, after: float) -> tuple[np.ndarray, float]:
    """Poll until the plant's timestamp moves past `after` (bounded)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        measurement, timestamp = plant.read()
        if timestamp > after:
            return measurement, timestamp
        time.sleep(0.01)
    raise AssertionError("the plant server did not step within 5 s")


@pytest.mark.slow
def test_client_reads_initial_state_and_written_input_changes_evolution(served: PlantServer):
    with OpcUaPlant(served.url, CSTR, timeout_s=2.0) as plant:
        plant.reset()
        assert plant.period_s() == served.step_period_s
        measurement, start = plant.read()
        np.testing.assert_allclose(measurement, X0)
        plant.write(PUSH)
        measurement, stamp = _next_measurement(plant, start)
    steps = max(1, round((stamp - start) / served.step_period_s))
    pushed, idle = X0, X0
    for _ in range(steps):
        pushed, idle = rk4_step(pushed, PUSH), rk4_step(idle, np.zeros(2))
    np.testing.assert_allclose(measurement, pushed, rtol=1e-9)
    assert abs(measurement[1] - idle[1]) > 10.0  # the heat input moved T by many kelvin


def test_measured_states_are_read_only(served: PlantServer):
    with OpcUaPlant(served.url, dataclasses.replace(CSTR, input_names=("CA", "T")),
                    timeout_s=2.0) as plant:
        with pytest.raises(TagError, match="inputs.CA .* not writable"):
            plant.write(np.zeros(2))


def _settled(records: list[dict], steps: int) -> bool:
    """The last `steps` records are valid measurements inside the target region."""
    recent = records[-steps:]
    return len(recent) == steps and all(
        r["fallback"] is None and CSTR.in_target(np.array(r["measurement"])) for r in recent)


@pytest.mark.slow
def test_closed_loop_over_opcua_survives_a_server_restart(tmp_path: Path):
    """Runs until the loop has come back to the restarted server and settled in the target, so
    a slow restart (a loaded machine) lengthens the outage but cannot fail the test."""
    period, restart_at, limit_s = 0.1, 4, 240.0
    server = PlantProcess(period, tmp_path / "server.log")
    restart: dict[str, np.ndarray] = {}
    stop = threading.Event()
    try:
        url = server.start(X0)
        plant = OpcUaPlant(url, CSTR, timeout_s=0.5, reconnect_attempts=0)
        runtime = Runtime(process_mpc(CSTR), plant, period_s=period,
                          max_steps=round(limit_s / period), log_path=tmp_path / "steps.jsonl",
                          initial_action=np.zeros(2),
                          stale_after_s=2.5 * period, realtime=True)

        def restart_then_wait_for_recovery() -> None:
            deadline = time.monotonic() + limit_s
            while len(runtime.records) < restart_at and time.monotonic() < deadline:
                time.sleep(0.01)
            restart["state"] = server.stop()
            server.start(restart["state"])
            while not (plant.reconnects == 1 and _settled(runtime.records, 5)) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()

        watcher = threading.Thread(target=restart_then_wait_for_recovery, daemon=True)
        watcher.start()
        summary = runtime.run(stop)
        watcher.join(timeout=30)
        plant.close()
    finally:
        server.kill()
    assert not watcher.is_alive()
    assert not CSTR.in_target(restart["state"])  # restarted mid-way, before reaching the target
    causes = summary["fallbacks_by_cause"]
    assert causes.get("read_error", 0) >= 1  # the outage was seen ...
    assert plant.reconnects == 1  # ... and the client came back to the new server
    assert _settled(runtime.records, 5), summary  # ... and the loop settled in the target
    assert summary["steps"] < runtime.max_steps and causes.get("deadline_miss", 0) == 0
