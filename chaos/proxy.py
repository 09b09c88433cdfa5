"""A toxiproxy-style TCP proxy: cut or degrade one link (etcd, cross-datacenter replication).

Kernel netem is not available where the harness runs, so network faults are made
in user space: the job connects to `proxy.endpoint` instead of the real service,
and the proxy forwards bytes both ways while applying "toxics":

* `set_latency(ms, jitter_ms, rng=...)`: every chunk, each way, waits until
  `ms + jitter` after it arrived. The wait is pipelined (latency, not a throughput
  cap), and the order of bytes is kept even when jitter draws a shorter delay.
* `set_bandwidth(bytes_per_s)`: a token bucket per direction, shared by every
  connection of the proxy (the limit is the link's, as on a real WAN link).
* `blackhole()`: a partition. Connections stay open and new ones are accepted,
  but nothing is forwarded either way: bytes read meanwhile are dropped, never
  delivered later. A close or reset by one side is held until the partition
  heals, as TCP would retransmit it. New connections reach upstream only after.
* `reset_connections()`: every open connection is closed with RST (SO_LINGER 0)
  on both sides, once; new connections work normally.
* `refuse()`: the listening socket stops listening (new connects get
  ECONNREFUSED while the port stays reserved) and open connections are reset.
* `slow_close(ms)`: when upstream closes, the client sees the close `ms` later.
* `heal()` clears every toxic, `clear(name)` one of them.

Every change takes effect on open connections as well as new ones, and has taken
effect when the call returns (a reset connection is closed by then). Changes are
recorded in `journal` with their wall-clock time for the harness's timeline.

The proxy runs its own asyncio loop in a daemon thread; the public methods are
thread-safe and may be called from any thread. Linux is assumed for `refuse()`
(elsewhere new connections are accepted and reset at once instead).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import errno
import functools
import logging
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Literal, TypedDict, TypeVar

__all__ = [
    "BANDWIDTH_BURST_S",
    "CHUNK_BYTES",
    "ChaosProxy",
    "JournalEntry",
    "ProxyStats",
    "ToxicName",
]

_log = logging.getLogger(__name__)

# Largest read from a socket: the unit to which latency applies.
CHUNK_BYTES = 64 * 1024
# The token bucket holds this many seconds' worth of bytes: a transfer of N bytes at
# rate R takes at least (N - R * BANDWIDTH_BURST_S) / R seconds.
BANDWIDTH_BURST_S = 0.05
# Chunks read but not yet written, per direction of a connection: bounds memory, and
# keeps reading ahead while latency holds the chunks back (so latency is pipelined).
_QUEUE_CHUNKS = 16
_BACKLOG = 128
# l_onoff=1, l_linger=0: close() sends RST and discards unsent data.
_LINGER_RST = struct.pack("ii", 1, 0)
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

ToxicName = Literal["latency", "bandwidth", "blackhole", "refuse", "slow_close"]
_TOXIC_NAMES: tuple[ToxicName, ...] = ("latency", "bandwidth", "blackhole", "refuse", "slow_close")

_T = TypeVar("_T")


class JournalEntry(TypedDict):
    """One toxic change: `at` is `time.time()` when it took effect."""

    at: float
    proxy: str
    action: str
    params: dict[str, float | str]


class ProxyStats(TypedDict):
    """A snapshot of a proxy. Byte counts are what was written to the receiving side."""

    name: str
    running: bool
    bytes_to_upstream: int
    bytes_to_client: int
    # Read while blackholed (or queued when the blackhole began) and thrown away.
    bytes_dropped_to_upstream: int
    bytes_dropped_to_client: int
    connections_accepted: int
    connections_open: int
    # Connections ended by a RST: reset_connections(), refuse(), or a peer's reset.
    connections_reset: int
    upstream_connect_failures: int
    # asyncio tasks serving connections: 0 when no connection is open (a leak check).
    tasks: int
    toxics: dict[str, dict[str, float]]


class _Direction(enum.Enum):
    TO_UPSTREAM = "to_upstream"
    TO_CLIENT = "to_client"


@dataclasses.dataclass(frozen=True)
class _Latency:
    delay_s: float
    jitter_s: float
    rng: random.Random


@dataclasses.dataclass(frozen=True)
class _Toxics:
    """The active toxics: immutable, replaced as a whole on every change."""

    latency: _Latency | None = None
    bandwidth: int | None = None
    blackhole: bool = False
    refuse: bool = False
    slow_close_s: float | None = None

    def describe(self) -> dict[str, dict[str, float]]:
        active: dict[str, dict[str, float]] = {}
        if self.latency is not None:
            active["latency"] = {
                "ms": self.latency.delay_s * 1000,
                "jitter_ms": self.latency.jitter_s * 1000,
            }
        if self.bandwidth is not None:
            active["bandwidth"] = {"bytes_per_s": float(self.bandwidth)}
        if self.blackhole:
            active["blackhole"] = {}
        if self.refuse:
            active["refuse"] = {}
        if self.slow_close_s is not None:
            active["slow_close"] = {"ms": self.slow_close_s * 1000}
        return active

    def without(self, name: ToxicName) -> _Toxics:
        if name == "latency":
            return dataclasses.replace(self, latency=None)
        if name == "bandwidth":
            return dataclasses.replace(self, bandwidth=None)
        if name == "blackhole":
            return dataclasses.replace(self, blackhole=False)
        if name == "refuse":
            return dataclasses.replace(self, refuse=False)
        return dataclasses.replace(self, slow_close_s=None)


@dataclasses.dataclass
class _Chunk:
    """Bytes read from one side; empty `data` is the end of stream (the peer's FIN)."""

    data: bytes
    arrival: float  # loop.time() when read
    # Drawn once from the latency rng, in [-1, 1]; scaled by the jitter in force.
    jitter_unit: float | None = None


class _TokenBucket:
    def __init__(self, bytes_per_s: int, now: float) -> None:
        self.rate = float(bytes_per_s)
        self.capacity = max(1.0, self.rate * BANDWIDTH_BURST_S)
        # A piece never exceeds the capacity, so every request can eventually be granted.
        self.piece_bytes = max(1, min(CHUNK_BYTES, int(self.capacity)))
        self._tokens = self.capacity
        self._last = now

    def take(self, count: int, now: float) -> float:
        """Take `count` tokens and return 0, or return how long until they are there."""
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= count:
            self._tokens -= count
            return 0.0
        return (count - self._tokens) / self.rate


class _PeerReset(Exception):
    """One side reset its connection (or could not be reached): reset the other side."""


def _parse_upstream(upstream: tuple[str, int] | str) -> tuple[str, int]:
    if isinstance(upstream, str):
        text = upstream.strip().removeprefix("http://").rstrip("/")
        host, sep, port_text = text.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"proxy upstream {upstream!r} is not host:port (e.g. 127.0.0.1:2379)")
        port = int(port_text)
    else:
        host, port = upstream
    if not host or not 0 < port < 65536:
        raise ValueError(f"proxy upstream {upstream!r} has no host or a bad port")
    return host, port


def _non_negative_ms(what: str, value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite number of milliseconds >= 0, got {value!r}")
    return float(value) / 1000


def _reset_socket(sock: Any) -> None:
    """Arrange for the close of `sock` to send RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


class _Link:
    """One proxied connection: a client socket and, once connected, its upstream socket.

    Four tasks move the bytes: a reader and a writer per direction, joined by a
    bounded queue, so latency holds chunks back without stopping the reads.
    """

    def __init__(self, core: _Core, client_sock: socket.socket) -> None:
        self._core = core
        self._client_sock = client_sock
        self._client_writer: asyncio.StreamWriter | None = None
        self._upstream_writer: asyncio.StreamWriter | None = None
        self._to_upstream: asyncio.Queue[_Chunk] = asyncio.Queue(_QUEUE_CHUNKS)
        self._to_client: asyncio.Queue[_Chunk] = asyncio.Queue(_QUEUE_CHUNKS)
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            try:
                reader, self._client_writer = await asyncio.open_connection(
                    sock=self._client_sock, limit=CHUNK_BYTES
                )
            except BaseException:
                self._client_sock.close()
                raise
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(reader, self._to_upstream, _Direction.TO_UPSTREAM))
                group.create_task(self._connect_and_forward(group))
        except* _PeerReset:
            self._core.connections_reset += 1
            self._abort(rst=True)
        except* Exception:  # noqa: BLE001 - one broken connection must not stop the proxy
            _log.exception("proxy %s: a connection failed", self._core.name)
            self._abort(rst=True)
        finally:
            await self._close()

    async def reset(self) -> None:
        """Close both sides with RST now; returns once the sockets are closed."""
        self._abort(rst=True)
        self._core.connections_reset += 1
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])

    async def abort(self) -> None:
        """Close both sides at once (no RST forced) and wait for the link to end."""
        self._abort(rst=False)
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])

    async def _connect_and_forward(self, group: asyncio.TaskGroup) -> None:
        core = self._core
        # A partition lets the client's SYN through to us (the kernel accepts it), but
        # not on to upstream: connect only once it heals.
        await core.wait_while_blackholed()
        host, port = core.upstream
        try:
            reader, self._upstream_writer = await asyncio.open_connection(
                host, port, limit=CHUNK_BYTES
            )
        except OSError as exc:
            core.upstream_connect_failures += 1
            _log.info("proxy %s: upstream %s:%s unreachable: %s", core.name, host, port, exc)
            # The client would have seen its connect refused: it gets a reset instead.
            raise _PeerReset from exc
        group.create_task(self._read(reader, self._to_client, _Direction.TO_CLIENT))
        group.create_task(
            self._write(self._to_upstream, self._upstream_writer, _Direction.TO_UPSTREAM)
        )
        assert self._client_writer is not None
        await self._write(self._to_client, self._client_writer, _Direction.TO_CLIENT)

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[_Chunk], direction: _Direction
    ) -> None:
        core = self._core
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await reader.read(CHUNK_BYTES)
            except OSError as exc:
                # A reset crossing a partition arrives when the partition heals.
                await core.wait_while_blackholed()
                raise _PeerReset from exc
            if data and core.toxics.blackhole:
                core.dropped[direction] += len(data)
                continue
            await queue.put(_Chunk(data, loop.time()))
            if not data:
                return

    async def _write(
        self, queue: asyncio.Queue[_Chunk], writer: asyncio.StreamWriter, direction: _Direction
    ) -> None:
        core = self._core
        while True:
            chunk = await queue.get()
            if not chunk.data:
                await core.wait_while_blackholed()
                await core.hold_for_latency(chunk)
                if direction is _Direction.TO_CLIENT:
                    await core.hold_close(chunk.arrival)
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            await core.hold_for_latency(chunk)
            view = memoryview(chunk.data)
            while view:
                allowed = await core.admit(direction, len(view))
                if allowed == 0:  # blackholed while queued: dropped, never delivered
                    core.dropped[direction] += len(view)
                    break
                writer.write(view[:allowed])
                view = view[allowed:]
                core.forwarded[direction] += allowed
                try:
                    await writer.drain()
                except OSError as exc:
                    raise _PeerReset from exc

    def _writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self._client_writer, self._upstream_writer) if w is not None]

    def _abort(self, *, rst: bool) -> None:
        if self._client_writer is None:  # not wrapped yet: the raw socket is ours
            if rst:
                _reset_socket(self._client_sock)
            self._client_sock.close()
        for writer in self._writers():
            if rst:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    _reset_socket(sock)
            writer.transport.abort()

    async def _close(self) -> None:
        # A graceful close flushes what is buffered first, like the kernel would.
        for writer in self._writers():
            writer.close()
        for writer in self._writers():
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _Core:
    """The proxy's state and work, confined to its event loop once started."""

    def __init__(self, name: str, upstream: tuple[str, int]) -> None:
        self.name = name
        self.upstream = upstream
        self.toxics = _Toxics()
        self.journal: list[JournalEntry] = []
        self.forwarded = dict.fromkeys(_Direction, 0)
        self.dropped = dict.fromkeys(_Direction, 0)
        self.connections_accepted = 0
        self.connections_reset = 0
        self.upstream_connect_failures = 0
        self.links: set[_Link] = set()
        self._buckets: dict[_Direction, _TokenBucket] = {}
        # Replaced on every change: waiters hold the old one, which is set to wake them.
        self._changed = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._listen_sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._refuse_in_kernel = True

    # -- changes ------------------------------------------------------------------

    def record(self, action: str, params: dict[str, float | str]) -> None:
        entry: JournalEntry = {
            "at": time.time(),
            "proxy": self.name,
            "action": action,
            "params": params,
        }
        self.journal.append(entry)
        _log.info("proxy %s: %s %s", self.name, action, params)

    def change_offline(
        self, action: str, params: dict[str, float | str], update: Callable[[_Toxics], _Toxics]
    ) -> None:
        """A change while no loop runs: there is no connection and no listener to act on."""
        self.toxics = update(self.toxics)
        self.record(action, params)

    async def change(
        self,
        action: str,
        params: dict[str, float | str],
        update: Callable[[_Toxics], _Toxics],
        *,
        reset_open: bool = False,
    ) -> None:
        before, after = self.toxics, update(self.toxics)
        victims = list(self.links) if reset_open else []
        if reset_open:
            params = {**params, "connections": len(victims)}
        self.toxics = after
        self._sync_buckets()
        self.record(action, params)
        self._wake()
        if after.refuse and not before.refuse:
            await self._stop_listening()
        if victims:
            await asyncio.gather(*(link.reset() for link in victims))
        if before.refuse and not after.refuse:
            self._start_listening()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _sync_buckets(self) -> None:
        rate = self.toxics.bandwidth
        if rate is None:
            self._buckets.clear()
            return
        now = asyncio.get_running_loop().time()
        for direction in _Direction:
            bucket = self._buckets.get(direction)
            if bucket is None or bucket.rate != rate:
                self._buckets[direction] = _TokenBucket(rate, now)

    # -- what the connections wait for ----------------------------------------------

    async def _sleep_or_change(self, changed: asyncio.Event, delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await changed.wait()

    async def wait_while_blackholed(self) -> None:
        while self.toxics.blackhole:
            await self._changed.wait()

    async def hold_for_latency(self, chunk: _Chunk) -> None:
        loop = asyncio.get_running_loop()
        while True:
            changed, latency = self._changed, self.toxics.latency
            if latency is None or self.toxics.blackhole:
                return
            if chunk.jitter_unit is None:
                # Drawn only when there is jitter, so the rng's sequence depends on
                # nothing else (the harness replays a run from its seed).
                chunk.jitter_unit = latency.rng.uniform(-1.0, 1.0) if latency.jitter_s else 0.0
            delay = max(0.0, latency.delay_s + chunk.jitter_unit * latency.jitter_s)
            remaining = chunk.arrival + delay - loop.time()
            if remaining <= 0:
                return
            await self._sleep_or_change(changed, remaining)

    async def hold_close(self, since: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            changed, hold = self._changed, self.toxics.slow_close_s
            remaining = since + (hold or 0.0) - loop.time()
            if remaining <= 0:
                return
            await self._sleep_or_change(changed, remaining)

    async def admit(self, direction: _Direction, wanted: int) -> int:
        """Wait until some of `wanted` bytes may go; 0 means drop them (blackholed)."""
        loop = asyncio.get_running_loop()
        while True:
            changed = self._changed
            if self.toxics.blackhole:
                return 0
            bucket = self._buckets.get(direction)
            if bucket is None:
                return wanted
            count = min(wanted, bucket.piece_bytes)
            wait_s = bucket.take(count, loop.time())
            if wait_s == 0:
                return count
            await self._sleep_or_change(changed, wait_s)

    # -- listening ------------------------------------------------------------------

    def _start_listening(self) -> None:
        assert self._listen_sock is not None
        if self._refuse_in_kernel:
            try:
                self._listen_sock.listen(_BACKLOG)
            except OSError as exc:
                raise RuntimeError(
                    f"proxy {self.name}: cannot listen again on "
                    f"{self._listen_sock.getsockname()}: {exc}"
                ) from exc
        if self._accept_task is None:
            self._accept_task = asyncio.create_task(self._accept_loop())

    async def _stop_listening(self) -> None:
        assert self._listen_sock is not None
        await self._stop_accepting()
        try:
            # Linux: SHUT_RD on a listening socket stops listening (SYNs get RST, the
            # backlog is reset) but keeps the port bound (it was bound explicitly), so
            # listen() resumes on the same port.
            self._listen_sock.shutdown(socket.SHUT_RD)
        except OSError:
            # Elsewhere: keep accepting, and the accept loop resets each new connection.
            self._refuse_in_kernel = False
            self._accept_task = asyncio.create_task(self._accept_loop())

    async def _stop_accepting(self) -> None:
        task, self._accept_task = self._accept_task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            _log.error("proxy %s stopped accepting", self.name, exc_info=task.exception())

    async def _accept_loop(self) -> None:
        assert self._listen_sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._listen_sock)
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    _log.warning("proxy %s: cannot accept (%s); retrying", self.name, exc)
                    await asyncio.sleep(0.1)
                    continue
                if exc.errno == errno.ECONNABORTED:
                    continue
                raise
            self.connections_accepted += 1
            if self.toxics.refuse:
                _reset_socket(conn)
                conn.close()
                self.connections_reset += 1
                continue
            link = _Link(self, conn)
            self.links.add(link)
            link.task = asyncio.create_task(link.run(), name=f"proxy-{self.name}-link")
            link.task.add_done_callback(functools.partial(self._forget, link))

    def _forget(self, link: _Link, _task: asyncio.Task[None]) -> None:
        self.links.discard(link)

    # -- lifecycle ------------------------------------------------------------------

    async def serve(self, listen_sock: socket.socket, on_ready: Callable[[], None]) -> None:
        self._listen_sock = listen_sock
        self._main_task = asyncio.current_task()
        try:
            self._sync_buckets()
            if self.toxics.refuse:
                await self._stop_listening()
            else:
                self._start_listening()
            on_ready()
            await self._stop_requested.wait()
        finally:
            await self._stop_accepting()
            listen_sock.close()
            links = list(self.links)
            if links:
                await asyncio.gather(*(link.abort() for link in links))

    def request_stop(self) -> None:
        self._stop_requested.set()

    def task_count(self) -> int:
        infrastructure = {self._main_task, self._accept_task, asyncio.current_task()}
        return sum(1 for task in asyncio.all_tasks() if task not in infrastructure)

    def stats(self, *, running: bool) -> ProxyStats:
        return {
            "name": self.name,
            "running": running,
            "bytes_to_upstream": self.forwarded[_Direction.TO_UPSTREAM],
            "bytes_to_client": self.forwarded[_Direction.TO_CLIENT],
            "bytes_dropped_to_upstream": self.dropped[_Direction.TO_UPSTREAM],
            "bytes_dropped_to_client": self.dropped[_Direction.TO_CLIENT],
            "connections_accepted": self.connections_accepted,
            "connections_open": len(self.links),
            "connections_reset": self.connections_reset,
            "upstream_connect_failures": self.upstream_connect_failures,
            "tasks": self.task_count() if running else 0,
            "toxics": self.toxics.describe(),
        }


def _bind_listener(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), the port bound explicitly even when 0 was asked.

    An explicit bind keeps the port reserved while `refuse()` stops listening; with
    port 0 a probe socket picks the port and holds it until the real bind (both use
    SO_REUSEADDR, allowed while neither listens), so there is no window to lose it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if port == 0:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, 0))
                sock.bind((host, probe.getsockname()[1]))
        else:
            sock.bind((host, port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ChaosProxy:
    """A TCP proxy to `upstream` whose link can be cut or degraded from any thread.

    `start()` (or `with ChaosProxy(...) as proxy:`) binds `listen_host:listen_port`
    (a free port by default) and runs the proxy's event loop in a daemon thread;
    `stop()` closes the listener and every connection and joins the thread. A
    proxy is started once. Toxics may be set before `start()`: they apply from the
    first connection.

    Jitter is drawn from the `rng` given to `set_latency`, once per chunk, so a run
    seeded the same way draws the same sequence (the interleaving of chunks across
    connections is the network's, not ours).
    """

    def __init__(
        self,
        upstream: tuple[str, int] | str,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "proxy",
    ) -> None:
        if not 0 <= listen_port < 65536:
            raise ValueError(f"proxy listen_port must be in 0..65535, got {listen_port!r}")
        self._upstream = _parse_upstream(upstream)
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._name = name
        self._core = _Core(name, self._upstream)
        # Guards the lifecycle; held while a change runs on the loop, so stop() never
        # ends the loop under a change in flight.
        self._lifecycle = threading.Lock()
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None

    # -- identity -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def upstream(self) -> str:
        host, port = self._upstream
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def port(self) -> int:
        """The port clients connect to; known once started."""
        if self._port is None:
            raise RuntimeError(f"{self!r} is not started: its port is not chosen yet")
        return self._port

    @property
    def endpoint(self) -> str:
        """The address to give clients instead of the upstream's: "HOST:PORT"."""
        host = self._listen_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def journal(self) -> list[JournalEntry]:
        """Every toxic change so far, oldest first (a copy)."""
        return [entry.copy() for entry in list(self._core.journal)]

    def __repr__(self) -> str:
        where = f"{self._listen_host}:{self._port}" if self._port is not None else "unbound"
        return f"ChaosProxy({self._name!r}, {where} -> {self.upstream}, {self._state})"

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> ChaosProxy:
        """Bind, then serve in a daemon thread. Raises OSError if the port is taken."""
        with self._lifecycle:
            if self._state != "new":
                raise RuntimeError(f"{self!r} was already started; a proxy starts once")
            listen_sock = _bind_listener(self._listen_host, self._listen_port)
            self._port = int(listen_sock.getsockname()[1])
            ready = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(
                target=self._thread_main,
                args=(listen_sock, ready, failure),
                name=f"chaos-proxy-{self._name}",
                daemon=True,
            )
            thread.start()
            ready.wait()
            if failure:
                thread.join()
                self._state = "stopped"
                raise failure[0]
            self._thread = thread
            self._state = "running"
        return self

    def _thread_main(
        self, listen_sock: socket.socket, ready: threading.Event, failure: list[BaseException]
    ) -> None:
        def on_ready() -> None:
            self._loop = asyncio.get_running_loop()
            ready.set()

        try:
            asyncio.run(self._core.serve(listen_sock, on_ready))
        except BaseException as exc:  # noqa: BLE001 - handed to start() or logged
            if ready.is_set():
                _log.exception("proxy %s: the event loop failed", self._name)
            else:
                failure.append(exc)
        finally:
            listen_sock.close()
            ready.set()

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread. Idempotent."""
        with self._lifecycle:
            if self._state == "running":
                assert self._loop is not None
                self._state = "stopping"
                self._loop.call_soon_threadsafe(self._core.request_stop)
            elif self._state == "new":
                self._state = "stopped"
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lifecycle:
            self._state = "stopped"
            self._loop = None

    def __enter__(self) -> ChaosProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _on_loop(
        self, make: Callable[[], Coroutine[Any, Any, _T]], offline: Callable[[], _T]
    ) -> _T:
        """Run `make()` on the loop and wait for it, or `offline()` when no loop runs."""
        with self._lifecycle:
            loop, thread = self._loop, self._thread
            if self._state != "running" or loop is None or thread is None:
                return offline()
            future = asyncio.run_coroutine_threadsafe(make(), loop)
            while True:
                try:
                    return future.result(timeout=1.0)
                except concurrent.futures.TimeoutError:
                    if future.done():
                        raise
                    if not thread.is_alive():
                        raise RuntimeError(f"{self!r}: its event loop died") from None

    def _change(
        self,
        action: str,
        params: dict[str, float | str],
        update: Callable[[_Toxics], _Toxics],
        *,
        reset_open: bool = False,
    ) -> None:
        core = self._core
        self._on_loop(
            lambda: core.change(action, params, update, reset_open=reset_open),
            lambda: core.change_offline(action, params, update),
        )

    # -- toxics ---------------------------------------------------------------------

    def set_latency(
        self, ms: float, jitter_ms: float = 0, *, rng: random.Random | None = None
    ) -> None:
        """Delay every chunk, each way, by `ms` ± up to `jitter_ms` (uniform, never < 0).

        `rng` draws the jitter; without one, a `random.Random(0)` does, so runs stay
        replayable. `set_latency(0)` clears the toxic.
        """
        delay_s = _non_negative_ms("latency", ms)
        jitter_s = _non_negative_ms("latency jitter", jitter_ms)
        params: dict[str, float | str] = {"ms": float(ms), "jitter_ms": float(jitter_ms)}
        if delay_s == 0 and jitter_s == 0:
            self._change("latency", params, lambda t: t.without("latency"))
            return
        latency = _Latency(delay_s, jitter_s, rng if rng is not None else random.Random(0))
        self._change("latency", params, lambda t: dataclasses.replace(t, latency=latency))

    def set_bandwidth(self, bytes_per_s: int) -> None:
        """Limit each direction to `bytes_per_s`, shared by all connections (a token bucket
        holding `BANDWIDTH_BURST_S` seconds' worth of bytes)."""
        if isinstance(bytes_per_s, bool) or not isinstance(bytes_per_s, int) or bytes_per_s < 1:
            raise ValueError(f"bandwidth must be an int of bytes/s >= 1, got {bytes_per_s!r}")
        self._change(
            "bandwidth",
            {"bytes_per_s": bytes_per_s},
            lambda t: dataclasses.replace(t, bandwidth=bytes_per_s),
        )

    def blackhole(self) -> None:
        """Partition the link: connections stay open, nothing is forwarded, bytes are lost."""
        self._change("blackhole", {}, lambda t: dataclasses.replace(t, blackhole=True))

    def reset_connections(self) -> None:
        """Close every open connection with RST on both sides, once."""
        self._change("reset_connections", {}, lambda t: t, reset_open=True)

    def refuse(self) -> None:
        """Refuse new connections (ECONNREFUSED) and reset the open ones, until healed."""
        self._change("refuse", {}, lambda t: dataclasses.replace(t, refuse=True), reset_open=True)

    def slow_close(self, ms: float) -> None:
        """When upstream closes a connection, let the client see it `ms` later (0 clears)."""
        hold_s = _non_negative_ms("slow_close", ms)
        self._change(
            "slow_close",
            {"ms": float(ms)},
            lambda t: dataclasses.replace(t, slow_close_s=hold_s or None),
        )

    def clear(self, toxic: ToxicName) -> None:
        """Clear one toxic, keeping the others (e.g. end a partition, keep the latency)."""
        if toxic not in _TOXIC_NAMES:
            raise ValueError(f"unknown toxic {toxic!r}; known: {', '.join(_TOXIC_NAMES)}")
        self._change("clear", {"toxic": toxic}, lambda t: t.without(toxic))

    def heal(self) -> None:
        """Clear every toxic. Bytes a blackhole dropped stay lost: a connection that
        carried data across the partition has a hole in its stream (a protocol on top,
        such as HTTP/2, will usually fail it); new connections are whole."""
        self._change("heal", {}, lambda t: _Toxics())

    def stats(self) -> ProxyStats:
        """Counters and active toxics, taken on the proxy's loop (a consistent snapshot)."""
        core = self._core

        async def snapshot() -> ProxyStats:
            return core.stats(running=True)

        return self._on_loop(snapshot, lambda: core.stats(running=False))
