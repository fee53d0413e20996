"""A simulated gymnasium plant served over OPC UA, and the OPC UA client that controls any plant.

Server (`PlantServer`): an asyncua server running in a background thread with its own event
loop, so synchronous code starts and stops it. Namespace 1 is the server's application URI and
namespace 2 the plant's (NAMESPACE_URI), with and without security, so `2:Plant/2:CA` is a
browse path to a state. Under the object `Plant` it exposes the measured states of the env's
process (`env.unwrapped.process`) as read-only Double variables named like the process's
states (CA, T for the CSTR), `Step` (steps since the last reset), `Timestamp` (Unix seconds at
which the measurement was produced) and `Period` (wall seconds per plant step), and the inputs
as writable Double variables named like its inputs (CA0, Q). States and inputs are analog
items: an `EURange` property (the process's state box, or its input bounds) and an
`EngineeringUnits` property (the process's unit). A write to an input that is not a finite
number within the input bounds is refused (BadOutOfRange; BadTypeMismatch for no number) and
leaves the input as it was, so an input reads back as what the plant applies. Its own clock
steps the env every `step_period_s` seconds of wall time with the inputs last written, whether
or not a client keeps up. A method `Reset` restarts the episode and zeroes the inputs (clipped
into the bounds). It binds to loopback only unless `allow_remote=True`. Without `security` it
offers no security (no encryption, anonymous users); with it, the policy's endpoint only,
trusted client certificates only and, given credentials, that user only (see opcua_security).

Client (`OpcUaPlant`): the Plant protocol (`read`, `write`, `reset`, `close`) over asyncua's
async client, driven from a private event-loop thread. It talks to lipctl's own server, or to
any server through a `TagMap` (a node id or browse path per state and input, optional
heartbeat and timestamp tags), resolved and type-checked once per connection. Writes are
clipped into the input bounds and never carry a non-finite value. A request that fails for
lack of a server drops the connection and reconnects, up to `reconnect_attempts` times; when
all fail it raises `PlantUnavailable` rather than returning a stale measurement (the caller,
e.g. the runtime's fallback, decides what to apply). The next call tries afresh, so the client
recovers by itself once the server is back. A server that refuses the connection (user,
certificate, policy) is `PlantRefused`, a tag that cannot be used is `TagError`: neither is an
outage.

`lipctl plant serve env=NAME` serves a simulated process with a PlantServer until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from asyncua import Client, Node, Server, ua
from asyncua.crypto.permission_rules import User
from asyncua.server.address_space import AddressSpace, AttributeService

from lipctl.control.opcua_security import (
    INSECURE,
    Security,
    SettingError,
    refusal,
    secure_client,
    secure_server,
)
from lipctl.envs.process import Process

NAMESPACE_URI = "urn:lipctl:plant:nodes"  # the plant's nodes; namespace 1 is the application's
OBJECT_NAME = "Plant"
STEP, TIMESTAMP, PERIOD, RESET = "Step", "Timestamp", "Period", "Reset"
DEFAULT_PORT = 4840
UNITS_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
UNECE_CODES = {"K": "KEL", "cm": "CMT", "V": "VLT"}  # common codes of the processes' units

T = TypeVar("T")


class PlantUnavailable(ConnectionError):
    """The OPC UA plant server cannot be reached (after the configured reconnect attempts)."""


def is_loopback(host: str) -> bool:
    """Whether `host` is "localhost" or a literal loopback address (names are never resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _node_id(name: str, namespace: int) -> ua.NodeId:
    return ua.NodeId(f"{OBJECT_NAME}.{name}", namespace)


def engineering_units(unit: str) -> ua.EUInformation:
    """OPC UA's EUInformation for a unit as a process writes it ("cm", "kmol/m3"): the UNECE
    common code's UnitId where lipctl knows it, else -1 (none), and the unit as its name."""
    code = UNECE_CODES.get(unit)
    unit_id = -1 if code is None else int.from_bytes(code.encode("ascii"), "big")
    return ua.EUInformation(UNITS_URI, unit_id, ua.LocalizedText(unit), ua.LocalizedText(unit))


class _InputGuard(AttributeService):
    """The server's attribute service, refusing a client's write to an input that is not a
    finite number within the input's bounds: BadOutOfRange (BadTypeMismatch for no number),
    the input unchanged; every other write goes through as asyncua would do it."""

    def __init__(self, aspace: AddressSpace, bounds: Mapping[ua.NodeId, tuple[float, float]]
                 ) -> None:
        super().__init__(aspace)
        self._bounds = bounds

    def _refusal(self, item: ua.WriteValue) -> ua.StatusCode | None:
        bounds = self._bounds.get(item.NodeId)
        if bounds is None or item.AttributeId != ua.AttributeIds.Value:
            return None
        data = item.Value
        value = None if data is None or data.Value is None else data.Value.Value
        if ((data is not None and data.StatusCode is not None and not data.StatusCode.is_good())
                or not isinstance(value, (int, float)) or isinstance(value, bool)):
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        if not (math.isfinite(value) and bounds[0] <= value <= bounds[1]):
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        return None

    async def write(self, params: ua.WriteParameters, user: User) -> list[ua.StatusCode]:
        """Per node: the refusal, or asyncua's own result for the writes that pass."""
        refused = [self._refusal(item) for item in params.NodesToWrite]
        passed = [item for item, no in zip(params.NodesToWrite, refused, strict=True) if not no]
        results = iter(await super().write(ua.WriteParameters(passed), user) if passed else [])
        return [no or next(results) for no in refused]


class _LoopThread:
    """An asyncio event loop running in a daemon thread, fed coroutines from synchronous code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the loop and wait for it; TimeoutError (coroutine cancelled) after
        `timeout` seconds."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def close(self) -> None:
        """Stop the loop, join the thread and close the loop."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@dataclass(frozen=True)
class Snapshot:
    """What the server publishes, replaced whole so every read sees one consistent step."""

    measurement: np.ndarray
    step: int
    timestamp: float


class PlantServer:
    """Serves a gymnasium env as an OPC UA plant with its own clock; see the module docstring.

    `port=0` picks a free port (`url` then tells which). `x0`, if given, is passed to the env's
    reset as options["x0"]. `security`: see the module docstring (default: none); a secured
    server's application URI (namespace 1) that is NAMESPACE_URI is a SettingError. `snapshot`
    is what clients read now. Use as a context manager, or call `start` and `stop`.
    """

    def __init__(self, env: gym.Env, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 step_period_s: float = 0.05, x0: Sequence[float] | None = None,
                 allow_remote: bool = False, seed: int | None = None,
                 security: Security = INSECURE) -> None:
        if not (allow_remote or is_loopback(host)):
            raise ValueError(f"refusing to serve the plant on non-loopback host '{host}' "
                             "(pass allow_remote=True to expose it beyond this machine)")
        if not step_period_s > 0:
            raise ValueError(f"step_period_s must be > 0, got {step_period_s}")
        self.env, self.host, self.port = env, host, port
        if security.secure and security.application_uri == NAMESPACE_URI:
            raise SettingError("application_uri", "must differ from the plant's namespace URI "
                                                  f"{NAMESPACE_URI} (namespace 1 is the "
                                                  "application's, the plant's is 2)")
        self.step_period_s = step_period_s
        process = getattr(env.unwrapped, "process", None)
        if not isinstance(process, Process):
            raise ValueError("PlantServer serves a process plant (a ProcessEnv), got "
                             f"{type(env.unwrapped).__name__}")
        self.process = process
        self.state_names, self.input_names = process.state_names, process.input_names
        self._rest = np.clip(0.0, process.input_low, process.input_high)  # the inputs at reset
        self._options = None if x0 is None else {"x0": list(x0)}
        self._seed = seed
        self.security = security
        self._server: Server | None = None
        self._loop: _LoopThread | None = None
        self._clock: asyncio.Task | None = None
        self._namespace = 0
        self.snapshot = Snapshot(np.zeros(len(self.state_names)), 0, time.time())

    @property
    def url(self) -> str:
        """The endpoint clients connect to."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"opc.tcp://{host}:{self.port}/lipctl/plant"

    def start(self, timeout_s: float = 30.0) -> PlantServer:
        """Reset the env, start serving and start the clock; returns self."""
        if self._loop is not None:
            raise RuntimeError("the plant server is already running")
        self._loop = _LoopThread("opcua-plant-server")
        try:
            self._loop.run(self._start(), timeout_s)
        except BaseException:
            self._loop.close()
            self._loop = None
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the clock and the server, and release the port (no-op when not running)."""
        if self._loop is None:
            return
        try:
            self._loop.run(self._stop(), timeout_s)
        finally:
            self._loop.close()
            self._loop = None

    def __enter__(self) -> PlantServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("lipctl plant")
        await secure_server(server, self.security)
        server.allow_remote_admin(False)
        # index 2, secured or not: after OPC UA's (0) and the application's (1; see __init__)
        self._namespace = ns = await server.register_namespace(NAMESPACE_URI)
        plant = await server.nodes.objects.add_object(ua.NodeId(OBJECT_NAME, ns),
                                                    ua.QualifiedName(OBJECT_NAME, ns))
        process, double, int64 = self.process, ua.VariantType.Double, ua.VariantType.Int64
        for name, low, high, unit in zip(self.state_names, process.state_low, process.state_high,
                                         process.state_units, strict=True):
            await self._add_analog(plant, name, (low, high), unit)
            server.set_attribute_value_callback(_node_id(name, ns), self._reader(name, double))
        for name, initial in ((STEP, ua.Variant(0, int64)), (TIMESTAMP, ua.Variant(0.0, double))):
            await plant.add_variable(_node_id(name, ns), ua.QualifiedName(name, ns), initial)
            server.set_attribute_value_callback(_node_id(name, ns),
                                                self._reader(name, initial.VariantType))
        await plant.add_variable(_node_id(PERIOD, ns), ua.QualifiedName(PERIOD, ns),
                                 ua.Variant(self.step_period_s, double))
        bounds = {}
        for name, low, high, unit, rest in zip(self.input_names, process.input_low,
                                               process.input_high, process.input_units,
                                               self._rest, strict=True):
            node = await self._add_analog(plant, name, (low, high), unit, float(rest))
            await node.set_writable()
            bounds[node.nodeid] = float(low), float(high)
        server.iserver.attribute_service = _InputGuard(server.iserver.aspace, bounds)
        await plant.add_method(_node_id(RESET, ns), ua.QualifiedName(RESET, ns),
                               self._reset_method, [], [])
        self._server = server
        self._reset_plant(self._seed)
        await server.start()
        self.port = server.bserver.port  # the real one when port 0 was asked for
        self._clock = asyncio.create_task(self._run_clock())

    async def _add_analog(self, plant: Node, name: str, bounds: tuple[float, float], unit: str,
                          initial: float = 0.0) -> Node:
        """A Double variable `name` of type AnalogItemType under `plant`, with its EURange and
        EngineeringUnits properties."""
        ns = self._namespace
        node = await plant.add_variable(_node_id(name, ns), ua.QualifiedName(name, ns),
                                        ua.Variant(initial, ua.VariantType.Double))
        await node.delete_reference(ua.NodeId(ua.ObjectIds.BaseDataVariableType),
                                    ua.ObjectIds.HasTypeDefinition)
        await node.add_reference(ua.NodeId(ua.ObjectIds.AnalogItemType),
                                 ua.ObjectIds.HasTypeDefinition)
        low, high = (float(b) for b in bounds)
        await node.add_property(_node_id(f"{name}.EURange", ns), ua.QualifiedName("EURange", 0),
                                ua.Range(low, high), datatype=ua.NodeId(ua.ObjectIds.Range))
        await node.add_property(_node_id(f"{name}.EngineeringUnits", ns),
                                ua.QualifiedName("EngineeringUnits", 0), engineering_units(unit),
                                datatype=ua.NodeId(ua.ObjectIds.EUInformation))
        return node

    async def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock

    async def _stop(self) -> None:
        await self._stop_clock()
        if self._server is not None:
            await self._server.stop()

    def _reader(self, name: str, variant: ua.VariantType) -> Callable[..., ua.DataValue]:
        """A value callback serving `name` from the current snapshot."""

        def read(*_: Any) -> ua.DataValue:
            snap = self.snapshot
            if name == STEP:
                value: Any = snap.step
            elif name == TIMESTAMP:
                value = snap.timestamp
            else:
                value = float(snap.measurement[self.state_names.index(name)])
            return ua.DataValue(ua.Variant(value, variant))

        return read

    def _publish(self, measurement: np.ndarray, step: int) -> None:
        self.snapshot = Snapshot(np.asarray(measurement, dtype=np.float64).copy(), step,
                                  time.time())

    def _reset_plant(self, seed: int | None = None) -> None:
        measurement, _ = self.env.reset(seed=seed, options=self._options)
        self._publish(measurement, 0)

    async def _reset_method(self, parent: ua.NodeId) -> list:
        """The OPC UA method `Reset`: zero the inputs (clipped into the bounds) and restart the
        episode and the clock (the first step comes one full period later)."""
        await self._stop_clock()
        for name, rest in zip(self.input_names, self._rest, strict=True):
            value = ua.DataValue(ua.Variant(float(rest), ua.VariantType.Double))
            await self._server.write_attribute_value(_node_id(name, self._namespace), value)
        self._reset_plant()
        self._clock = asyncio.create_task(self._run_clock())
        return []

    def _inputs(self) -> np.ndarray:
        """The inputs last written (the guard lets only finite ones within the bounds in)."""
        aspace = self._server.iserver.aspace
        return np.array([aspace.read_attribute_value(_node_id(name, self._namespace),
                                                     ua.AttributeIds.Value).Value.Value
                         for name in self.input_names], dtype=np.float64)

    def _step(self) -> None:
        measurement, *_ = self.env.step(self._inputs())
        self._publish(measurement, self.snapshot.step + 1)

    async def _run_clock(self) -> None:
        """Step every period on a drift-free schedule; after a stall it resumes, no catch-up."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.step_period_s
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            self._step()
            next_tick = max(next_tick + self.step_period_s, loop.time())


_OUTAGE = (OSError, asyncio.TimeoutError, ua.UaError)
HEARTBEAT_WRAP = 32768  # the heartbeat counts 1, 2, ..., 32767, 0, 1, ...: fits any integer type
_NUMERIC = range(ua.VariantType.SByte.value, ua.VariantType.Double.value + 1)  # SByte..Double
_INTEGER = range(ua.VariantType.SByte.value, ua.VariantType.UInt64.value + 1)
_STAMPS = (*_NUMERIC, ua.VariantType.DateTime.value, ua.ObjectIds.UtcTime)
_WRITABLE = 1 << ua.AccessLevel.CurrentWrite


class TagError(LookupError):
    """A tag of the tag map is not on the server, or cannot be used there (one line)."""


NodeRef = ua.NodeId | list[ua.QualifiedName]


def parse_node(key: str, text: Any) -> NodeRef:
    """A node id ("ns=2;s=Tank1.Level", "ns=3;i=1007", "nsu=urn:vendor;s=LT101") or else a
    browse path from the Objects folder ("2:QuadTank/2:h1"); SettingError naming `key`."""
    if not isinstance(text, str) or not text.strip():
        raise SettingError(key, f"must be a node id or a browse path, got {text!r}")
    with contextlib.suppress(ua.UaStringParsingError):
        return ua.NodeId.from_string(text)
    try:
        path = [ua.QualifiedName.from_string(part) for part in text.split("/")]
    except (ValueError, ua.UaStringParsingError):
        path = []
    if not path or not all(name.Name for name in path):
        raise SettingError(key, f"{text!r} is neither a node id (ns=2;s=Name, ns=3;i=1007, "
                                "nsu=URI;s=Name) nor a browse path (2:Folder/2:Name)")
    return path


@dataclass(frozen=True)
class TagMap:
    """Where a plant's variables live on an OPC UA server: a node (see `parse_node`) for each
    state and each input, by name; optionally a heartbeat tag (an integer the client writes
    with every write, counting up) and a timestamp tag (when the measurement was taken: a
    DateTime or Unix seconds)."""

    states: Mapping[str, str]
    inputs: Mapping[str, str]
    heartbeat: str | None = None
    timestamp: str | None = None

    def check(self, state_names: Sequence[str], input_names: Sequence[str]) -> None:
        """SettingError unless the map names exactly the plant's states and inputs and every
        node parses."""
        for group, names in (("states", state_names), ("inputs", input_names)):
            mapped = getattr(self, group)
            missing = [n for n in names if n not in mapped]
            unknown = sorted(set(mapped) - set(names))
            if missing or unknown:
                raise SettingError(group, f"must map each of {', '.join(names)} to a node"
                                   + (f"; missing {', '.join(missing)}" if missing else "")
                                   + (f"; unknown {', '.join(unknown)}" if unknown else ""))
        for key, text in self.labelled(state_names, input_names):
            parse_node(key, text)

    def labelled(self, state_names: Sequence[str],
                 input_names: Sequence[str]) -> list[tuple[str, str]]:
        """(key, node) of every tag: states and inputs in the plant's order, then the
        timestamp and heartbeat tags if set."""
        tags = [(f"states.{n}", self.states[n]) for n in state_names]
        tags += [(f"inputs.{n}", self.inputs[n]) for n in input_names]
        return tags + [(key, node) for key in ("timestamp", "heartbeat")
                       if (node := getattr(self, key)) is not None]


def tag_map(raw: Mapping[str, Any], state_names: Sequence[str],
            input_names: Sequence[str]) -> TagMap:
    """A checked TagMap from config keys states, inputs, heartbeat, timestamp."""
    if not isinstance(raw, Mapping):
        raise SettingError("states", f"the tag map must be a mapping {{states: ..., inputs: ...}}, "
                                     f"got {raw!r}")
    unknown = sorted(set(raw) - {"states", "inputs", "heartbeat", "timestamp"})
    if unknown:
        raise SettingError(unknown[0], "unknown tag map key (states, inputs, heartbeat, "
                                       "timestamp)")
    groups = {}
    for group in ("states", "inputs"):
        if not isinstance(raw.get(group), Mapping):
            raise SettingError(group, f"must map names to nodes, got {raw.get(group)!r}")
        groups[group] = {str(k): v for k, v in raw[group].items()}
    tags = TagMap(groups["states"], groups["inputs"], raw.get("heartbeat"), raw.get("timestamp"))
    tags.check(state_names, input_names)
    return tags


def own_tags(state_names: Sequence[str], input_names: Sequence[str]) -> TagMap:
    """The tag map of lipctl's own PlantServer layout."""
    node = f"nsu={NAMESPACE_URI};s={OBJECT_NAME}.{{}}".format
    return TagMap({n: node(n) for n in state_names}, {n: node(n) for n in input_names},
                  timestamp=node(TIMESTAMP))


@dataclass(frozen=True)
class _Nodes:
    """The tag map resolved on one connection."""

    states: list[ua.NodeId]
    inputs: list[ua.NodeId]
    input_types: list[ua.VariantType]
    timestamp: ua.NodeId | None = None
    heartbeat: ua.NodeId | None = None
    heartbeat_type: ua.VariantType | None = None
    period: ua.NodeId | None = None  # lipctl's own server only ...
    reset: ua.NodeId | None = None  # ... as is its Reset method


def _number(value: ua.DataValue) -> float:
    """A good numeric value as a float; NaN for a bad one (e.g. a failed sensor)."""
    good = value.StatusCode is None or value.StatusCode.is_good()
    content = value.Value.Value if value.Value is not None else None
    if good and isinstance(content, (int, float)) and not isinstance(content, bool):
        return float(content)
    return math.nan


def _seconds(stamp: Any) -> float:
    """Unix seconds from a DateTime (naive: UTC) or a number; NaN for anything else."""
    if isinstance(stamp, datetime):
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return float(stamp)
    return math.nan


def _data_value(value: float, variant: ua.VariantType) -> ua.DataValue:
    """`value` as a DataValue of the tag's own type (integers rounded), without timestamps."""
    number = int(round(value)) if variant.value in _INTEGER else float(value)
    return ua.DataValue(ua.Variant(number, variant))


class OpcUaPlant:
    """The Plant protocol over OPC UA: read -> (measurement, timestamp), write(action),
    reset(), close(); see the module docstring for reconnection and `PlantUnavailable`.

    Each request waits at most `timeout_s`; a call that finds the server gone tries
    `reconnect_attempts` reconnections `reconnect_delay_s` apart before raising, so it blocks
    at most about (1 + reconnect_attempts) * (timeout_s + reconnect_delay_s). `reconnects`
    counts successful reconnections.

    tags: where the states and inputs are (None: lipctl's own PlantServer layout); resolved
      once per connection, a missing or unusable tag is a TagError naming it.
    process: the plant's description: its state and input names, in the order measurements
      and actions use, and its input bounds; every write is clipped into them first
      (`clipped_writes` counts the writes that needed it); a non-finite input is never written
      (ValueError).
    security: policy, certificates and user (default: none); a refused connection is
      PlantRefused, not retried.
    The timestamp is the timestamp tag's value, else the oldest SourceTimestamp of the
    states, else the time of the read; an unchanged one means no new measurement.
    """

    def __init__(self, url: str, process: Process, timeout_s: float = 1.0,
                 reconnect_attempts: int = 3, reconnect_delay_s: float = 0.2, *,
                 tags: TagMap | None = None, security: Security = INSECURE) -> None:
        if timeout_s <= 0 or reconnect_attempts < 0 or reconnect_delay_s < 0:
            raise ValueError("timeout_s must be > 0, reconnect_attempts and reconnect_delay_s "
                             f">= 0; got {timeout_s}, {reconnect_attempts}, {reconnect_delay_s}")
        self.url, self.timeout_s = url, timeout_s
        self.reconnect_attempts, self.reconnect_delay_s = reconnect_attempts, reconnect_delay_s
        self.state_names, self.input_names = process.state_names, process.input_names
        self.own_layout = tags is None
        self.tags = own_tags(self.state_names, self.input_names) if tags is None else tags
        self.tags.check(self.state_names, self.input_names)
        self.input_bounds = process.input_low, process.input_high
        self.security = security
        self.reconnects = self.clipped_writes = self.heartbeat = 0
        self._loop: _LoopThread | None = _LoopThread("opcua-plant-client")
        self._client: Client | None = None
        self._nodes: _Nodes | None = None
        self._connected_before = False

    def connect(self) -> None:
        """Connect and resolve the tags now (otherwise the first request does)."""
        self._request(self._connected)

    def read(self) -> tuple[np.ndarray, float]:
        """The latest measurement (NaN where a value is bad) and its timestamp."""
        return self._request(self._read)

    def write(self, action: np.ndarray) -> None:
        """Set the inputs, clipped into the input bounds, and the heartbeat, in one request;
        the plant applies them from its next step."""
        command = self._command(action)
        self._request(lambda c: self._write(c, command))

    def period_s(self) -> float:
        """lipctl's own server's step period: wall seconds between two plant steps."""
        if not self.own_layout:
            raise ValueError("a tag-mapped plant publishes no step period: give the control "
                             "period (plant.period_s)")
        return float(self._request(lambda c: c.get_node(self._nodes.period).read_value()))

    def reset(self) -> None:
        """On lipctl's own server, restart the plant's episode (its initial state, zero
        inputs); a tag-mapped plant is not reset by its controller: this only connects."""
        if self.own_layout:
            self._request(lambda c: c.nodes.objects.call_method(self._nodes.reset))
        else:
            self.connect()

    def close(self) -> None:
        """Disconnect and stop the client's event loop (idempotent)."""
        if self._loop is None:
            return
        self._forget()
        self._loop.close()
        self._loop = None

    def __enter__(self) -> OpcUaPlant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _command(self, action: np.ndarray) -> np.ndarray:
        """The action to write: checked (ValueError), then clipped into the input bounds."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (len(self.input_names),) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be {len(self.input_names)} finite numbers "
                             f"{self.input_names}, got {action}")
        command = np.clip(action, *self.input_bounds)
        self.clipped_writes += bool(np.any(command != action))
        return command

    async def _connected(self, client: Client) -> None:
        """Nothing more than the connection `_attempt` makes."""

    async def _read(self, client: Client) -> tuple[np.ndarray, float]:
        nodes = self._nodes
        stamp = [] if nodes.timestamp is None else [nodes.timestamp]
        values = await client.uaclient.read_attributes([*nodes.states, *stamp],
                                                       ua.AttributeIds.Value)
        states = values[:len(nodes.states)]
        measurement = np.array([_number(v) for v in states], dtype=np.float64)
        if stamp:
            value = values[-1]
            good = value.StatusCode is None or value.StatusCode.is_good()
            return measurement, _seconds(value.Value.Value) if good else math.nan
        sources = [v.SourceTimestamp for v in states]
        if all(s is not None for s in sources):
            return measurement, min(_seconds(s) for s in sources)
        return measurement, time.time()

    async def _write(self, client: Client, command: np.ndarray) -> None:
        nodes = self._nodes
        ids = list(nodes.inputs)
        values = [_data_value(u, t) for u, t in zip(command, nodes.input_types, strict=True)]
        if nodes.heartbeat is not None:
            self.heartbeat = (self.heartbeat + 1) % HEARTBEAT_WRAP
            ids.append(nodes.heartbeat)
            values.append(_data_value(self.heartbeat, nodes.heartbeat_type))
        for status in await client.uaclient.write_attributes(ids, values, ua.AttributeIds.Value):
            status.check()

    def _request(self, operation: Callable[[Client], Awaitable[T]]) -> T:
        """Run `operation` on a live connection, reconnecting after an outage."""
        if self._loop is None:
            raise RuntimeError("the OPC UA plant client is closed")
        for attempt in range(self.reconnect_attempts + 1):
            if attempt:
                time.sleep(self.reconnect_delay_s)
            try:
                return self._loop.run(self._attempt(operation), self.timeout_s)
            except ua.UaStatusCodeError:
                raise  # the server answered and refused the request: not an outage
            except _OUTAGE as error:
                last = error
                self._forget()
        raise PlantUnavailable(f"OPC UA plant at {self.url} unavailable after "
                               f"{self.reconnect_attempts + 1} tries: {last!r}") from last

    async def _attempt(self, operation: Callable[[Client], Awaitable[T]]) -> T:
        if self._client is None:
            await self._connect()
        return await operation(self._client)

    async def _connect(self) -> None:
        """Connect securely as configured (PlantRefused when refused) and resolve the tags."""
        client = Client(self.url, timeout=self.timeout_s)
        try:
            await secure_client(client, self.security)
            await client.connect()
        except ua.UaStatusCodeError as error:
            raise refusal(self.url, error) from None
        try:
            self._nodes = await self._resolve(client)
        except BaseException:
            await client.disconnect()
            raise
        self._client = client
        self.reconnects += self._connected_before
        self._connected_before = True

    async def _resolve(self, client: Client) -> _Nodes:
        """The tags' node ids on this server, checked: each exists and is a number (the
        timestamp tag: a number or a DateTime), inputs and heartbeat are writable; TagError
        naming the first that is not."""
        tags = self.tags.labelled(self.state_names, self.input_names)
        parsed = {key: parse_node(key, text) for key, text in tags}
        namespaces = await client.get_namespace_array()
        ids = await _node_ids(client, dict(tags), parsed, namespaces)
        kinds = await client.uaclient.read_attributes(list(ids.values()), ua.AttributeIds.DataType)
        types = {}
        for (key, text), kind in zip(tags, kinds, strict=True):
            if not kind.StatusCode.is_good():
                raise TagError(f"tag {key} {text!r} is not on the server "
                               f"({kind.StatusCode.name})")
            types[key] = data_type = kind.Value.Value
            allowed = _STAMPS if key == "timestamp" else _NUMERIC
            if data_type.NamespaceIndex != 0 or data_type.Identifier not in allowed:
                name = (ua.ObjectIdNames.get(data_type.Identifier) if data_type.NamespaceIndex == 0
                        else None) or data_type.to_string()
                raise TagError(f"tag {key} {text!r} has data type {name}, not "
                               + ("a number or a DateTime" if key == "timestamp" else "a number"))
        written = [key for key, _ in tags if key.startswith("inputs.") or key == "heartbeat"]
        access = await client.uaclient.read_attributes([ids[k] for k in written],
                                                       ua.AttributeIds.UserAccessLevel)
        for key, level in zip(written, access, strict=True):
            if not (level.StatusCode.is_good() and level.Value.Value & _WRITABLE):
                raise TagError(f"tag {key} {dict(tags)[key]!r} is not writable by this client")
        variants = {key: ua.VariantType(types[key].Identifier) for key in written}
        own = (ua.NodeId(f"{OBJECT_NAME}.{n}", namespaces.index(NAMESPACE_URI))
               if self.own_layout else None for n in (PERIOD, RESET))
        return _Nodes([ids[f"states.{n}"] for n in self.state_names],
                      [ids[f"inputs.{n}"] for n in self.input_names],
                      [variants[f"inputs.{n}"] for n in self.input_names],
                      ids.get("timestamp"), ids.get("heartbeat"), variants.get("heartbeat"),
                      *own)

    def _forget(self) -> None:
        with contextlib.suppress(TimeoutError):
            self._loop.run(self._drop(), 2 * self.timeout_s)

    async def _drop(self) -> None:
        """Forget the current connection, closing it politely if it still answers."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.timeout_s)


async def _node_ids(client: Client, tags: Mapping[str, str], parsed: Mapping[str, NodeRef],
                    namespaces: Sequence[str]) -> dict[str, ua.NodeId]:
    """Each tag's node id on this server: namespace URIs looked up, browse paths translated
    (all in one request); TagError naming the first that cannot be."""
    paths = [key for key, ref in parsed.items() if isinstance(ref, list)]
    found = (await client.nodes.objects.get_children_by_path(
        [parsed[k] for k in paths], raise_on_partial_error=False)) if paths else []
    targets = dict(zip(paths, found, strict=True))
    ids = {}
    for key, ref in parsed.items():
        if isinstance(ref, list):
            if not targets[key]:
                raise TagError(f"tag {key} {tags[key]!r}: no such browse path from the "
                               "Objects folder")
            ids[key] = targets[key][0].nodeid
        elif isinstance(ref, ua.ExpandedNodeId) and ref.NamespaceUri:
            if ref.NamespaceUri not in namespaces:
                raise TagError(f"tag {key} {tags[key]!r}: namespace {ref.NamespaceUri} is not "
                               "on the server")
            ids[key] = ua.NodeId(ref.Identifier, namespaces.index(ref.NamespaceUri),
                                 ref.NodeIdType)
        else:
            ids[key] = ua.NodeId(ref.Identifier, ref.NamespaceIndex, ref.NodeIdType)
    return ids


def quiet_asyncua() -> None:
    """asyncua logs every dropped connection as a warning; the runtime logs outages itself."""
    logging.getLogger("asyncua").setLevel(logging.ERROR)
