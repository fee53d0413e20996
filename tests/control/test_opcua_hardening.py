"""lipctl's OPC UA plant server and client as a strict peer sees them: input writes outside the
bounds refused, analog items with range and units, browse names in the plant's namespace (index
2, secured or not), mapped tags type-checked before the loop, and reconnects counted."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from asyncua import Client, ua

from lipctl.control.opcua_plant import (
    NAMESPACE_URI,
    OpcUaPlant,
    PlantServer,
    PlantUnavailable,
    TagError,
    TagMap,
    engineering_units,
)
from lipctl.control.opcua_security import (
    SERVER_URI,
    Credentials,
    Security,
    SettingError,
)
from lipctl.control.process_mpc import process_mpc
from lipctl.control.runtime import Runtime
from lipctl.envs.cstr import CSTR, CSTREnv
from lipctl.envs.quadtank import QuadTankEnv, quadtank_process
from tests.helpers import assert_user_error, lipctl
from tests.opcua_certs import make_certificate

QUADTANK = quadtank_process()
CMT = int.from_bytes(b"CMT", "big")  # UNECE common code of the centimetre, as a UnitId
VLT = int.from_bytes(b"VLT", "big")  # ... and of the volt


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AppliedInputs(gym.Wrapper):
    """The served env, recording every input the plant's clock applies."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.applied: list[list[float]] = []

    def step(self, action: np.ndarray) -> Any:
        self.applied.append(np.asarray(action, dtype=np.float64).tolist())
        return self.env.step(action)


def _session(url: str, work: Callable[[Client], Any]) -> Any:
    """Run `work(client)` in one plain asyncua session (a client that is not lipctl's)."""
    async def run() -> Any:
        async with Client(url, timeout=10) as client:
            return await work(client)
    return asyncio.run(run())


@pytest.fixture(scope="module")
def tanks() -> Iterator[PlantServer]:
    env = AppliedInputs(QuadTankEnv(x0=[8.0, 9.0, 1.0, 1.0]))
    with PlantServer(env, port=0, step_period_s=0.05) as server:
        yield server


@pytest.mark.slow
def test_writes_outside_the_input_bounds_or_not_finite_are_refused(tanks: PlantServer):
    v1, v2 = ua.NodeId("Plant.v1", 2), ua.NodeId("Plant.v2", 2)
    double = lambda x: ua.DataValue(ua.Variant(x, ua.VariantType.Double))  # noqa: E731

    async def write(client: Client) -> tuple[list[str], list[str], list[float]]:
        ok = await client.uaclient.write_attributes([v1, v2], [double(3.0), double(2.0)],
                                                    ua.AttributeIds.Value)
        bad = [double(99.0), double(math.nan), double(math.inf), double(-0.5),
               ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure)),
               ua.DataValue(ua.Variant("5", ua.VariantType.String))]
        refused = await client.uaclient.write_attributes([v1] * len(bad), bad,
                                                         ua.AttributeIds.Value)
        mixed = await client.uaclient.write_attributes([v1, v2], [double(6.5), double(4.0)],
                                                       ua.AttributeIds.Value)
        back = await client.uaclient.read_attributes([v1, v2], ua.AttributeIds.Value)
        return ([s.name for s in ok + mixed], [s.name for s in refused],
                [b.Value.Value for b in back])

    written, refused, back = _session(tanks.url, write)
    assert written == ["Good", "Good", "BadOutOfRange", "Good"]
    assert refused == ["BadOutOfRange"] * 4 + ["BadTypeMismatch"] * 2
    assert back == [3.0, 4.0]  # the refused values left v1 as it was
    env = tanks.env
    seen = len(env.applied)
    _wait_for(lambda: len(env.applied) >= seen + 2, "two plant steps")
    assert env.applied[-1] == [3.0, 4.0]  # what reads back is what the plant applies
    assert all(0.0 <= u <= 6.0 for step in env.applied for u in step)


def test_states_and_inputs_are_analog_items_with_range_and_units(tanks: PlantServer):
    async def properties(client: Client) -> dict[str, tuple]:
        found = {}
        for name in ("h1", "h3", "v2"):
            node = await client.nodes.objects.get_child(["2:Plant", f"2:{name}"])
            eu_range = await (await node.get_child("0:EURange")).read_value()
            units = await (await node.get_child("0:EngineeringUnits")).read_value()
            found[name] = (eu_range, units, await node.read_type_definition())
        return found

    found = _session(tanks.url, properties)
    analog = ua.NodeId(ua.ObjectIds.AnalogItemType)
    assert found["h1"][0] == ua.Range(4.0, 20.0) and found["h3"][0] == ua.Range(0.0, 8.0)
    assert found["v2"][0] == ua.Range(0.0, 6.0)
    assert found["h1"][1].UnitId == CMT and found["h1"][1].DisplayName.Text == "cm"
    assert found["v2"][1].UnitId == VLT and found["v2"][1].DisplayName.Text == "V"
    assert all(f[2] == analog for f in found.values())
    unknown = engineering_units("kmol/m3")  # no UNECE code known: UnitId -1, the name kept
    assert unknown.UnitId == -1 and unknown.DisplayName.Text == "kmol/m3"


PATHS = TagMap({name: f"2:Plant/2:{name}" for name in CSTR.state_names},
               {name: f"2:Plant/2:{name}" for name in CSTR.input_names},
               timestamp="2:Plant/2:Timestamp")


@pytest.mark.slow
def test_browse_paths_resolve_in_namespace_2_with_and_without_security(tmp_path: Path):
    client_uri = "urn:test:lipctl-client"
    server_cert = make_certificate(tmp_path, "server", SERVER_URI, server=True)
    client_cert = make_certificate(tmp_path, "client", client_uri, server=False)
    credentials = Credentials("operator", "pa55-word")
    secured = Security("Basic256Sha256", "SignAndEncrypt", server_cert.certificate,
                       server_cert.private_key, (client_cert.certificate,), SERVER_URI,
                       credentials)
    client = Security("Basic256Sha256", "SignAndEncrypt", client_cert.certificate,
                      client_cert.private_key, (server_cert.certificate,), client_uri,
                      credentials)
    for server_security, client_security in ((None, None), (secured, client)):
        extra = {} if server_security is None else {"security": server_security}
        with PlantServer(CSTREnv(), port=0, step_period_s=0.05, x0=[1.5, -70.0], **extra) \
                as server:
            with OpcUaPlant(server.url, CSTR, timeout_s=10.0, tags=PATHS,
                            **({} if client_security is None else
                               {"security": client_security})) as plant:
                plant.write(np.array([1.0, 2.0]))
                measurement, stamp = plant.read()
            assert np.all(np.isfinite(measurement)) and math.isfinite(stamp)
            if server_security is None:
                names = _session(server.url, lambda c: c.get_namespace_array())
                assert names.index(NAMESPACE_URI) == 2
    with pytest.raises(SettingError, match="application_uri: must differ from the plant's"):
        PlantServer(CSTREnv(), port=0, security=Security(
            "Basic256Sha256", "Sign", server_cert.certificate, server_cert.private_key,
            (client_cert.certificate,), NAMESPACE_URI, credentials))


@pytest.fixture(scope="module")
def reactor() -> Iterator[PlantServer]:
    with PlantServer(CSTREnv(), port=0, step_period_s=0.05, x0=[1.5, -70.0]) as server:
        yield server


PRODUCT_NAME = "i=2261"  # Server_ServerStatus_BuildInfo_ProductName: a String every server has


@pytest.mark.parametrize("tags, message", [
    (TagMap({**PATHS.states, "T": PRODUCT_NAME}, PATHS.inputs),
     f"tag states.T '{PRODUCT_NAME}' has data type String, not a number"),
    (TagMap(PATHS.states, PATHS.inputs, timestamp=PRODUCT_NAME),
     f"tag timestamp '{PRODUCT_NAME}' has data type String, not a number or a DateTime"),
    (TagMap(PATHS.states, PATHS.inputs, heartbeat=PRODUCT_NAME),
     f"tag heartbeat '{PRODUCT_NAME}' has data type String, not a number"),
])
def test_a_tag_that_is_no_number_is_refused_at_connect(reactor: PlantServer, tags: TagMap,
                                                       message: str):
    with OpcUaPlant(reactor.url, CSTR, timeout_s=5.0, tags=tags) as plant:
        with pytest.raises(TagError, match=message):
            plant.connect()


@pytest.mark.slow
def test_deploy_refuses_a_string_state_tag_before_the_loop(reactor: PlantServer, tmp_path: Path):
    override = ("plant.tags={states:{CA:'2:Plant/2:CA',T:'" + PRODUCT_NAME + "'},"
                "inputs:{CA0:'2:Plant/2:CA0',Q:'2:Plant/2:Q'}}")
    result = lipctl("deploy", "plant=opcua", f"plant.url={reactor.url}", "plant.period_s=0.05",
                    override, "steps=5", "out=run", cwd=tmp_path, timeout=120)
    assert_user_error(result, f"lipctl deploy: error: plant.tags: tag states.T '{PRODUCT_NAME}' "
                              "has data type String, not a number")
    assert not (tmp_path / "run" / "steps.jsonl").exists()


class RestartingPlant:
    """lipctl's OPC UA client whose server goes down after the write of step `down` and comes
    back, on the same port, after the write of step `up`."""

    def __init__(self, plant: OpcUaPlant, server: PlantServer, down: int, up: int) -> None:
        self.plant, self.server, self.down, self.up, self.writes = plant, server, down, up, 0

    def read(self) -> tuple[np.ndarray, float]:
        return self.plant.read()

    def write(self, action: np.ndarray) -> None:
        step, self.writes = self.writes, self.writes + 1
        try:
            self.plant.write(action)
        finally:
            if step == self.down:
                self.server.stop()
            elif step == self.up:
                self.server.start()

    def reset(self) -> None:
        self.plant.reset()

    def close(self) -> None:
        self.plant.close()


@pytest.mark.slow
def test_failed_reads_writes_and_the_reconnect_are_counted(tmp_path: Path):
    server = PlantServer(CSTREnv(), port=_free_port(), step_period_s=0.05, x0=[1.5, -70.0])
    server.start()
    client = OpcUaPlant(server.url, CSTR, timeout_s=5.0, reconnect_attempts=0)
    plant = RestartingPlant(client, server, down=2, up=4)
    try:
        runtime = Runtime(process_mpc(CSTR), plant, period_s=0.05, max_steps=8,
                          log_path=tmp_path / "steps.jsonl", initial_action=np.zeros(2),
                          stale_after_s=10.0, deadline_s=60.0)
        summary = runtime.run()
        with pytest.raises(PlantUnavailable):  # a request that finds no server is not a reconnect
            server.stop()
            client.read()
    finally:
        client.close()
        server.stop()
    assert summary["failed_reads"] == 2 and summary["failed_writes"] == 2  # steps 3 and 4
    assert client.reconnects == 1
    assert [r["fallback"] for r in runtime.records] == [None] * 3 + ["read_error"] * 2 \
        + [None] * 3


@pytest.mark.slow
def test_deploy_summary_counts_the_reconnect_after_a_server_restart(tmp_path: Path):
    port = _free_port()
    server = PlantServer(CSTREnv(), port=port, step_period_s=0.1, x0=[1.5, -70.0]).start()
    command = [sys.executable, "-m", "lipctl", "deploy", "plant=opcua", f"plant.url={server.url}",
               "steps=100000", "out=run"]
    run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "steps.jsonl"

    def records() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []

    try:
        _wait_for(lambda: len(records()) >= 3 or run.poll() is not None, "3 steps", 120)
        server.stop()
        _wait_for(lambda: any(r["fallback"] == "read_error" for r in records()), "an outage")
        server.start()
        outage = len(records())
        _wait_for(lambda: any(r["fallback"] is None for r in records()[outage:]), "recovery")
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
        server.stop()
    assert run.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reconnects"] == 1 and summary["failed_reads"] >= 1, summary
    assert summary["failed_writes"] >= 1 and "reconnects 1" in out
