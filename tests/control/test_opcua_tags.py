"""lipctl against a plant vendor's OPC UA server: the vendor's own namespace, string node ids and
folders, single-precision setpoints and a 16-bit watchdog, with a simulated quadruple tank
behind it stepped on the server's own clock."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from asyncua import Server, ua

from lipctl.control.opcua_plant import OpcUaPlant, TagError, TagMap, tag_map
from lipctl.control.opcua_security import SettingError
from lipctl.control.process_mpc import process_mpc
from lipctl.control.runtime import Runtime
from lipctl.envs.quadtank import QuadTankEnv, quadtank_process
from tests.helpers import assert_user_error, lipctl

VENDOR_URI = "urn:acme:quadtank"
LEVELS = {"h1": "QT.LT101.PV", "h2": "QT.LT102.PV", "h3": "QT.LT103.PV", "h4": "QT.LT104.PV"}
PUMPS = {"v1": "QT.P101.SP", "v2": "QT.P102.SP"}
WATCHDOG = "QT.WD.CNT"
X0 = [8.0, 9.0, 1.0, 1.0]
QUADTANK = quadtank_process()
TAGS = TagMap(  # every way of naming a node: index, namespace URI, browse path
    states={"h1": "ns=2;s=QT.LT101.PV", "h2": f"nsu={VENDOR_URI};s=QT.LT102.PV",
            "h3": "2:QuadTank/2:LT103", "h4": "ns=2;s=QT.LT104.PV"},
    inputs={"v2": "ns=2;s=QT.P102.SP", "v1": "2:QuadTank/2:P101"},  # any order
    heartbeat=f"nsu={VENDOR_URI};s={WATCHDOG}")


def _deadline_wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        time.sleep(0.02)


class VendorServer:
    """A vendor's server (plain asyncua) stepping the quadruple tank every `period_s` with the
    pump setpoints last written; `written` records every value a client wrote, per tag."""

    def __init__(self, period_s: float) -> None:
        self.period_s, self.env, self.steps = period_s, QuadTankEnv(x0=X0), 0
        self.written: dict[str, list[float]] = {tag: [] for tag in (*PUMPS.values(), WATCHDOG)}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    def run(self, coro) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> VendorServer:
        self._thread.start()
        self.run(self._start())
        return self

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()

    def value(self, tag: str) -> object:
        """The value the server holds for `tag` now."""
        async def read() -> object:
            return self.server.read_attribute_value(ua.NodeId(tag, self.ns)).Value.Value
        return self.run(read())

    async def _start(self) -> None:
        self.server = server = Server()
        await server.init()
        server.set_endpoint("opc.tcp://127.0.0.1:0/acme")
        self.ns = ns = await server.register_namespace(VENDOR_URI)
        folder = await server.nodes.objects.add_folder(ua.NodeId("QT", ns),
                                                       ua.QualifiedName("QuadTank", ns))
        for tag in LEVELS.values():
            await folder.add_variable(ua.NodeId(tag, ns), ua.QualifiedName(tag[3:8], ns), 0.0)
        writable = {tag: ua.Variant(0.0, ua.VariantType.Float) for tag in PUMPS.values()}
        writable[WATCHDOG] = ua.Variant(0, ua.VariantType.UInt16)
        for tag, initial in writable.items():
            node = await folder.add_variable(ua.NodeId(tag, ns),
                                             ua.QualifiedName(tag.split(".")[1], ns), initial)
            await node.set_writable()
            server.set_attribute_value_setter(node.nodeid, self._recorder(tag))
        await server.start()
        self.url = f"opc.tcp://127.0.0.1:{server.bserver.port}/acme"
        observation, _ = self.env.reset(seed=0)
        await self._publish(observation)
        self._clock = asyncio.create_task(self._run_clock())

    def _recorder(self, tag: str) -> Callable:
        def record(node, attr: ua.AttributeIds, value: ua.DataValue) -> None:
            self.written[tag].append(value.Value.Value)
            node.attributes[attr].value = value
        return record

    async def _publish(self, levels: np.ndarray) -> None:
        now = datetime.now(timezone.utc)
        for tag, level in zip(LEVELS.values(), levels, strict=True):
            value = ua.DataValue(ua.Variant(float(level), ua.VariantType.Double),
                                 SourceTimestamp=now)
            await self.server.write_attribute_value(ua.NodeId(tag, self.ns), value)

    async def _run_clock(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            pumps = np.array([self.value_now(tag) for tag in PUMPS.values()], dtype=np.float64)
            observation, *_ = self.env.step(pumps)
            await self._publish(observation)
            self.steps += 1

    def value_now(self, tag: str) -> object:
        return self.server.read_attribute_value(ua.NodeId(tag, self.ns)).Value.Value

    async def _stop(self) -> None:
        self._clock.cancel()
        await self.server.stop()


@pytest.fixture
def vendor() -> Iterator[VendorServer]:
    server = VendorServer(period_s=0.1).start()
    yield server
    server.stop()


def _client(url: str, tags: TagMap = TAGS, **kwargs) -> OpcUaPlant:
    return OpcUaPlant(url, QUADTANK, timeout_s=2.0, tags=tags, **kwargs)


def _settled(records: list[dict], steps: int) -> bool:
    recent = records[-steps:]
    return len(recent) == steps and all(
        r["fallback"] is None and QUADTANK.in_target(np.array(r["measurement"])) for r in recent)


@pytest.mark.slow
def test_mpc_controls_a_vendor_server_through_a_tag_map(vendor: VendorServer, tmp_path: Path):
    plant = _client(vendor.url)
    runtime = Runtime(process_mpc(QUADTANK), plant, period_s=vendor.period_s, max_steps=3000,
                      log_path=tmp_path / "steps.jsonl", initial_action=QUADTANK.steady_input,
                      stale_after_s=2.5 * vendor.period_s, realtime=True)
    stop = threading.Event()
    watcher = threading.Thread(target=lambda: (_deadline_wait(
        lambda: _settled(runtime.records, 5), 120, "never settled"), stop.set()), daemon=True)
    watcher.start()
    try:
        runtime.run(stop)
    finally:
        plant.close()
    assert _settled(runtime.records, 5)
    assert not QUADTANK.in_target(np.array(runtime.records[0]["measurement"]))
    stamps = [r["timestamp"] for r in runtime.records if r["timestamp"] is not None]
    assert stamps[-1] > stamps[0]  # the levels' SourceTimestamps advance with the vendor's clock
    beats = vendor.written[WATCHDOG]
    assert beats == list(range(1, len(beats) + 1)) and len(beats) == len(runtime.records)
    pumps = np.array([vendor.written[tag] for tag in PUMPS.values()])
    assert np.all((pumps >= 0.0) & (pumps <= 6.0))


@pytest.mark.slow
def test_inputs_outside_the_bounds_are_written_clipped_and_nan_never(vendor: VendorServer):
    with _client(vendor.url) as plant:
        plant.write(np.array([7.5, -1.0]))
        _deadline_wait(lambda: vendor.written[PUMPS["v2"]], 10, "no write arrived")
        assert [vendor.value(PUMPS["v1"]), vendor.value(PUMPS["v2"])] == [6.0, 0.0]
        assert plant.clipped_writes == 1
        plant.write(np.array([2.0, 3.0]))
        assert plant.clipped_writes == 1
        for bad in ([np.nan, 1.0], [1.0, np.inf], [1.0]):
            with pytest.raises(ValueError, match="finite numbers"):
                plant.write(np.array(bad))
    written = [v for tag in PUMPS.values() for v in vendor.written[tag]]
    assert written == [6.0, 2.0, 0.0, 3.0] and vendor.written[WATCHDOG] == [1, 2]
    assert [vendor.value(PUMPS["v1"]), vendor.value(PUMPS["v2"])] == [2.0, 3.0]


@pytest.mark.slow
def test_an_unknown_tag_is_named_at_connect(vendor: VendorServer):
    for node, problem in (("ns=2;s=QT.LT109.PV", "is not on the server (BadNodeIdUnknown)"),
                          ("2:QuadTank/2:LT109", "no such browse path"),
                          ("nsu=urn:other;s=QT.LT101.PV", "namespace urn:other is not")):
        tags = TagMap({**TAGS.states, "h3": node}, TAGS.inputs, TAGS.heartbeat)
        with _client(vendor.url, tags, reconnect_attempts=0) as plant:
            with pytest.raises(TagError) as error:
                plant.connect()
        message = str(error.value)
        assert message.startswith(f"tag states.h3 '{node}'") and problem in message


def test_a_tag_map_must_name_the_process_states_and_inputs():
    names = QUADTANK.state_names, QUADTANK.input_names
    with pytest.raises(SettingError, match="states: must map each of h1, h2, h3, h4.*missing h4"):
        tag_map({"states": {n: f"ns=2;s={n}" for n in ("h1", "h2", "h3")},
                 "inputs": dict(TAGS.inputs)}, *names)
    with pytest.raises(SettingError, match="inputs.v1: .*neither a node id"):
        tag_map({"states": dict(TAGS.states), "inputs": {"v1": "2:", "v2": "ns=2;i=5"}}, *names)


def _tags_override(tags: TagMap) -> str:
    group = lambda m: "{" + ",".join(f"{k}:'{v}'" for k, v in m.items()) + "}"  # noqa: E731
    return (f"plant.tags={{states:{group(tags.states)},inputs:{group(tags.inputs)},"
            f"heartbeat:'{tags.heartbeat}'}}")


QUADTANK_PLANT = ["plant=opcua", "env=quadtank",
                  "plant.measurement_range=null", "plant.period_s=0.1"]


@pytest.mark.slow
def test_lipctl_deploy_controls_a_vendor_server_to_the_target(vendor: VendorServer,
                                                              tmp_path: Path):
    result = lipctl("deploy", *QUADTANK_PLANT, f"plant.url={vendor.url}", _tags_override(TAGS),
                    "steps=40", "out=run", cwd=tmp_path, check=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_in_target"] and summary["clipped_writes"] == 0, result.stdout
    assert vendor.written[WATCHDOG] == list(range(1, len(vendor.written[WATCHDOG]) + 1))
    broken = TagMap({**TAGS.states, "h2": "ns=2;s=QT.LT999.PV"}, TAGS.inputs, TAGS.heartbeat)
    result = lipctl("deploy", *QUADTANK_PLANT, f"plant.url={vendor.url}",
                    _tags_override(broken), "steps=5", "out=run2", cwd=tmp_path)
    assert_user_error(result, "plant.tags: tag states.h2 'ns=2;s=QT.LT999.PV' is not on the "
                              "server (BadNodeIdUnknown)")
