"""A simulated gymnasium plant served over OPC UA, and the OPC UA client that controls it.

Server (`PlantServer`): an asyncua server running in a background thread with its own event
loop, so synchronous code starts and stops it. Under the object `Plant` (namespace
NAMESPACE_URI) it exposes the measured states as read-only Double variables (CA, T for the CSTR),
`Step` (steps since the last reset), `Timestamp` (Unix seconds at which the measurement was
produced) and `Period` (wall seconds per plant step), and the inputs as writable Double
variables (CA0, Q). Its own clock steps the env every `step_period_s` seconds of wall time with
the inputs last written, whether or not a client keeps up. A method `Reset` restarts the
episode and zeroes the inputs. It binds to loopback only unless `allow_remote=True`; it offers
no security (no encryption, anonymous users only, no remote admin), which is the reason for
that rule.

Client (`OpcUaPlant`): the Plant protocol (`read`, `write`, `reset`, `close`) over asyncua's
async client, driven from a private event-loop thread. A request that fails for lack of a
server drops the connection and reconnects, up to `reconnect_attempts` times; when all fail it
raises `PlantUnavailable` rather than returning a stale measurement (the caller, e.g. the
runtime's fallback, decides what to apply). The next call tries afresh, so the client recovers
by itself once the server is back.

`lipctl plant serve env=cstr` serves the CSTR with a PlantServer until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from asyncua import Client, Node, Server, ua

NAMESPACE_URI = "urn:lipctl:plant"
OBJECT_NAME = "Plant"
CSTR_STATES = ("CA", "T")
CSTR_INPUTS = ("CA0", "Q")
STEP, TIMESTAMP, PERIOD, RESET = "Step", "Timestamp", "Period", "Reset"
DEFAULT_PORT = 4840

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
    reset as options["x0"]. `snapshot` is what clients read now. Use as a context manager, or
    call `start` and `stop`.
    """

    def __init__(self, env: gym.Env, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 step_period_s: float = 0.05, x0: Sequence[float] | None = None,
                 state_names: Sequence[str] = CSTR_STATES,
                 input_names: Sequence[str] = CSTR_INPUTS,
                 allow_remote: bool = False, seed: int | None = None) -> None:
        if not (allow_remote or is_loopback(host)):
            raise ValueError(f"refusing to serve the plant on non-loopback host '{host}' "
                             "(pass allow_remote=True to expose it beyond this machine)")
        if not step_period_s > 0:
            raise ValueError(f"step_period_s must be > 0, got {step_period_s}")
        self.env, self.host, self.port = env, host, port
        self.step_period_s = step_period_s
        self.state_names, self.input_names = tuple(state_names), tuple(input_names)
        self._options = None if x0 is None else {"x0": list(x0)}
        self._seed = seed
        self._server: Server | None = None
        self._loop: _LoopThread | None = None
        self._clock: asyncio.Task | None = None
        self._namespace = 0
        self._applied = np.zeros(len(self.input_names))
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
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.allow_remote_admin(False)
        self._namespace = await server.register_namespace(NAMESPACE_URI)
        plant = await server.nodes.objects.add_object(ua.NodeId(OBJECT_NAME, self._namespace),
                                                    OBJECT_NAME)
        double, int64 = ua.VariantType.Double, ua.VariantType.Int64
        outputs = {name: ua.Variant(0.0, double) for name in self.state_names}
        outputs |= {STEP: ua.Variant(0, int64), TIMESTAMP: ua.Variant(0.0, double)}
        for name, initial in outputs.items():
            node = await plant.add_variable(_node_id(name, self._namespace), name, initial)
            server.set_attribute_value_callback(node.nodeid,
                                                self._reader(name, initial.VariantType))
        await plant.add_variable(_node_id(PERIOD, self._namespace), PERIOD,
                                 ua.Variant(self.step_period_s, double))
        for name in self.input_names:
            node = await plant.add_variable(_node_id(name, self._namespace), name, 0.0)
            await node.set_writable()
        await plant.add_method(_node_id(RESET, self._namespace), RESET, self._reset_method, [], [])
        self._server = server
        self._reset_plant(self._seed)
        await server.start()
        self.port = server.bserver.port  # the real one when port 0 was asked for
        self._clock = asyncio.create_task(self._run_clock())

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
        self._applied = np.zeros(len(self.input_names))
        self._publish(measurement, 0)

    async def _reset_method(self, parent: ua.NodeId) -> list:
        """The OPC UA method `Reset`: zero the inputs and restart the episode and the clock
        (the first step comes one full period later)."""
        await self._stop_clock()
        for name in self.input_names:
            zero = ua.DataValue(ua.Variant(0.0, ua.VariantType.Double))
            await self._server.write_attribute_value(_node_id(name, self._namespace), zero)
        self._reset_plant()
        self._clock = asyncio.create_task(self._run_clock())
        return []

    def _inputs(self) -> np.ndarray:
        """The inputs last written; a non-finite or missing one keeps the value last applied."""
        aspace = self._server.iserver.aspace
        values = [aspace.read_attribute_value(_node_id(name, self._namespace),
                                              ua.AttributeIds.Value).Value.Value
                  for name in self.input_names]
        written = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        return np.where(np.isfinite(written), written, self._applied)

    def _step(self) -> None:
        self._applied = self._inputs()
        measurement, *_ = self.env.step(self._applied)
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


class OpcUaPlant:
    """The Plant protocol over OPC UA: read -> (measurement, server timestamp), write(action),
    reset(), close(); see the module docstring for reconnection and `PlantUnavailable`.

    Each request waits at most `timeout_s`; a call that finds the server gone tries
    `reconnect_attempts` reconnections `reconnect_delay_s` apart before raising, so it blocks
    at most about (1 + reconnect_attempts) * (timeout_s + reconnect_delay_s). The timestamp
    is the server's wall clock (Unix seconds) when the measurement was produced: an unchanged
    one means no new plant step. `reconnects` counts successful reconnections.
    """

    def __init__(self, url: str, timeout_s: float = 1.0, reconnect_attempts: int = 3,
                 reconnect_delay_s: float = 0.2, state_names: Sequence[str] = CSTR_STATES,
                 input_names: Sequence[str] = CSTR_INPUTS) -> None:
        if timeout_s <= 0 or reconnect_attempts < 0 or reconnect_delay_s < 0:
            raise ValueError("timeout_s must be > 0, reconnect_attempts and reconnect_delay_s "
                             f">= 0; got {timeout_s}, {reconnect_attempts}, {reconnect_delay_s}")
        self.url, self.timeout_s = url, timeout_s
        self.reconnect_attempts, self.reconnect_delay_s = reconnect_attempts, reconnect_delay_s
        self.state_names, self.input_names = tuple(state_names), tuple(input_names)
        self.reconnects = 0
        self._loop: _LoopThread | None = _LoopThread("opcua-plant-client")
        self._client: Client | None = None
        self._nodes: dict[str, Node] = {}
        self._connected_before = False

    def read(self) -> tuple[np.ndarray, float]:
        """The latest measurement and the server timestamp of the step that produced it."""
        names = (*self.state_names, TIMESTAMP)
        values = self._request(lambda c: c.read_values([self._nodes[n] for n in names]))
        return np.array(values[:-1], dtype=np.float64), float(values[-1])

    def write(self, action: np.ndarray) -> None:
        """Set the inputs (all in one request); the plant applies them from its next step."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (len(self.input_names),) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be {len(self.input_names)} finite numbers "
                             f"{self.input_names}, got {action}")
        self._request(lambda c: c.write_values([self._nodes[n] for n in self.input_names],
                                               [float(a) for a in action]))

    def period_s(self) -> float:
        """The server's step period: wall seconds between two plant steps."""
        return float(self._request(lambda c: self._nodes[PERIOD].read_value()))

    def reset(self) -> None:
        """Restart the plant's episode on the server (its initial state, zero inputs)."""
        self._request(lambda c: c.nodes.objects.call_method(self._nodes[RESET]))

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
        client = Client(self.url, timeout=self.timeout_s)
        await client.connect()
        try:
            namespace = await client.get_namespace_index(NAMESPACE_URI)
        except BaseException:
            await client.disconnect()
            raise
        names = (*self.state_names, TIMESTAMP, PERIOD, *self.input_names, RESET)
        self._nodes = {n: client.get_node(_node_id(n, namespace)) for n in names}
        self._client = client
        self.reconnects += self._connected_before
        self._connected_before = True

    def _forget(self) -> None:
        with contextlib.suppress(TimeoutError):
            self._loop.run(self._drop(), 2 * self.timeout_s)

    async def _drop(self) -> None:
        """Forget the current connection, closing it politely if it still answers."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.timeout_s)


def quiet_asyncua() -> None:
    """asyncua logs every dropped connection as a warning; the runtime logs outages itself."""
    logging.getLogger("asyncua").setLevel(logging.ERROR)
