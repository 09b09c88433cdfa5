"""The chaos proxy: forwarding, every toxic, cleanup, and a real etcd behind a cut link.

Timing assertions are lower bounds only (a toxic must delay at least this much);
how fast the proxy is on a quiet machine is not asserted anywhere.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chaos.proxy import BANDWIDTH_BURST_S, ChaosProxy
from resilience import EmbeddedEtcd, EtcdClient, EtcdUnavailable
from resilience.testing import wait_until

pytestmark = pytest.mark.timeout(60)

# How long a read must stay silent to count as "nothing was forwarded".
SILENCE_S = 0.5


class _EchoHandler(socketserver.BaseRequestHandler):
    """Echo until the client closes its side, then close ours (a FIN slow_close can hold)."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            return  # reset through the proxy: nobody left to answer


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 overflows when 40 clients connect at once,
    # and this kernel then resets some of the proxy's upstream connections.
    request_queue_size = 128


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, name="echo-server", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def proxy(echo_server: tuple[str, int]) -> Iterator[ChaosProxy]:
    with ChaosProxy(echo_server, name="echo") as running:
        yield running


def _connect(proxy: ChaosProxy, timeout_s: float = 10.0) -> socket.socket:
    host, _, port = proxy.endpoint.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    parts = bytearray()
    while len(parts) < size:
        data = sock.recv(min(65536, size - len(parts)))
        if not data:
            raise EOFError(f"connection closed after {len(parts)} of {size} bytes")
        parts += data
    return bytes(parts)


def _echo(sock: socket.socket, payload: bytes) -> bytes:
    """Send `payload` while reading its echo (sending all first would fill both buffers)."""
    sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
    sender.start()
    try:
        return _recv_exactly(sock, len(payload))
    finally:
        sender.join()


def _round_trip_s(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    assert _echo(sock, payload) == payload
    return time.monotonic() - started


def _assert_silent(sock: socket.socket) -> None:
    sock.settimeout(SILENCE_S)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(10.0)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- forwarding ---------------------------------------------------------------------


def test_forwards_a_megabyte_both_ways(proxy: ChaosProxy) -> None:
    payload = random.Random(1).randbytes(1024 * 1024)
    with _connect(proxy) as sock:
        assert _echo(sock, payload) == payload
    stats = proxy.stats()
    assert stats["bytes_to_upstream"] == len(payload)
    assert stats["bytes_to_client"] == len(payload)
    assert stats["connections_accepted"] == 1


def test_many_connections_at_once_then_nothing_left_open(proxy: ChaosProxy) -> None:
    rng = random.Random(2)
    payloads = [rng.randbytes(32 * 1024) for _ in range(40)]

    def one(payload: bytes) -> bytes:
        with _connect(proxy) as sock:
            return _echo(sock, payload)

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        echoed = list(pool.map(one, payloads))
    assert echoed == payloads
    total = sum(map(len, payloads))
    assert proxy.stats()["bytes_to_client"] == total
    assert proxy.stats()["connections_accepted"] == len(payloads)
    # Every connection ends, and with it every task that served it.
    wait_until(lambda: proxy.stats()["connections_open"] == 0, timeout_s=10)
    wait_until(lambda: proxy.stats()["tasks"] == 0, timeout_s=10)


def test_half_close_is_forwarded(proxy: ChaosProxy) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert _recv_exactly(sock, 10) == b"last words"
        assert sock.recv(1) == b""  # the echo server closed after our FIN reached it


def test_an_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connects are refused
        with ChaosProxy(("127.0.0.1", port)) as proxy:
            # The proxy accepts, fails upstream and resets. On a loaded machine the
            # reset can overtake the client's connect() itself; either way the client
            # gets a reset, never data and never a silent hang.
            with pytest.raises(ConnectionResetError), _connect(proxy) as sock:
                sock.recv(1)
            wait_until(lambda: proxy.stats()["upstream_connect_failures"] == 1, timeout_s=10)
            assert proxy.stats()["upstream_connect_failures"] == 1


# -- toxics -------------------------------------------------------------------------


def test_latency_delays_open_and_new_connections(proxy: ChaosProxy) -> None:
    with _connect(proxy) as opened_before:
        _round_trip_s(opened_before)
        proxy.set_latency(100)
        assert _round_trip_s(opened_before) >= 0.2  # 100 ms each way
        with _connect(proxy) as opened_after:
            assert _round_trip_s(opened_after) >= 0.2
        assert proxy.stats()["toxics"] == {"latency": {"ms": 100.0, "jitter_ms": 0.0}}
        proxy.clear("latency")
        assert proxy.stats()["toxics"] == {}
        _round_trip_s(opened_before)


class _CountingRng(random.Random):
    """Draws the largest jitter every time, and counts the draws."""

    def __init__(self) -> None:
        super().__init__(0)
        self.draws = 0

    def uniform(self, a: float, b: float) -> float:
        self.draws += 1
        return b


def test_jitter_comes_from_the_given_rng(proxy: ChaosProxy) -> None:
    rng = _CountingRng()
    with _connect(proxy) as sock:
        proxy.set_latency(10, 0, rng=rng)
        _round_trip_s(sock)
        assert rng.draws == 0  # no jitter, no draw: the seeded sequence stays the harness's
        proxy.set_latency(50, 50, rng=rng)
        assert _round_trip_s(sock) >= 0.2  # (50 + 50) ms each way
        assert rng.draws >= 2


def test_bandwidth_limits_an_open_connection(proxy: ChaosProxy) -> None:
    rate = 100_000
    payload = random.Random(3).randbytes(200_000)
    with _connect(proxy) as sock:
        _round_trip_s(sock)
        proxy.set_bandwidth(rate)
        started = time.monotonic()
        assert _echo(sock, payload) == payload
        elapsed = time.monotonic() - started
    # The bucket starts full: only the first BANDWIDTH_BURST_S worth goes for free.
    assert elapsed >= (len(payload) - rate * BANDWIDTH_BURST_S) / rate


def test_blackhole_forwards_nothing_and_heal_drops_what_was_sent(proxy: ChaosProxy) -> None:
    with _connect(proxy) as before:
        _round_trip_s(before)
        proxy.blackhole()
        before.sendall(b"lost")
        _assert_silent(before)
        with _connect(proxy) as during:  # accepted, but gets nothing either
            during.sendall(b"lost too")
            _assert_silent(during)
            assert proxy.stats()["bytes_dropped_to_upstream"] == len(b"lost") + len(b"lost too")

            proxy.heal()
            with _connect(proxy) as after:
                assert _echo(after, b"fresh") == b"fresh"
            # What crossed the partition is gone, not delivered late: the echo of the
            # new bytes comes first (it would come after b"lost" otherwise).
            assert _echo(before, b"again") == b"again"
            assert _echo(during, b"again") == b"again"


def test_blackholed_close_arrives_after_heal(proxy: ChaosProxy) -> None:
    with _connect(proxy) as sock:
        _round_trip_s(sock)
        proxy.blackhole()
        sock.shutdown(socket.SHUT_WR)  # the echo server would close in answer...
        _assert_silent(sock)  # ...but our FIN is held by the partition
        proxy.heal()
        assert sock.recv(1) == b""


def test_reset_connections_resets_the_clients_once(proxy: ChaosProxy) -> None:
    with _connect(proxy) as sock:
        _round_trip_s(sock)
        proxy.reset_connections()
        # Already closed when the call returns, with RST rather than FIN.
        assert proxy.stats()["connections_open"] == 0
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    assert proxy.stats()["connections_reset"] == 1
    with _connect(proxy) as sock:  # a one-shot fault: new connections work
        _round_trip_s(sock)


def test_refuse_refuses_new_connects_and_resets_open_ones(proxy: ChaosProxy) -> None:
    endpoint = proxy.endpoint
    with _connect(proxy) as sock:
        _round_trip_s(sock)
        proxy.refuse()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy)
    proxy.heal()
    assert proxy.endpoint == endpoint  # the port was kept while refusing
    with _connect(proxy) as sock:
        _round_trip_s(sock)


def test_slow_close_delays_the_close_seen_by_the_client(proxy: ChaosProxy) -> None:
    proxy.slow_close(300)
    with _connect(proxy) as sock:
        sock.sendall(b"bye")
        sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()  # the echo server closes only after this
        assert _recv_exactly(sock, 3) == b"bye"
        assert sock.recv(1) == b""
        assert time.monotonic() - started >= 0.3


def test_toxics_set_before_start_apply_from_the_first_connection(
    echo_server: tuple[str, int],
) -> None:
    proxy = ChaosProxy(echo_server)
    proxy.refuse()
    with proxy:
        with pytest.raises(ConnectionRefusedError):
            _connect(proxy)
        proxy.heal()
        with _connect(proxy) as sock:
            _round_trip_s(sock)


def test_journal_records_every_change_in_order(proxy: ChaosProxy) -> None:
    started = time.time()
    with _connect(proxy) as sock:
        _round_trip_s(sock)
        proxy.set_latency(20, 5, rng=random.Random(7))
        proxy.set_bandwidth(1_000_000)
        proxy.blackhole()
        proxy.reset_connections()
        proxy.slow_close(10)
        proxy.clear("blackhole")
        proxy.heal()
    journal = proxy.journal
    assert [(entry["action"], entry["params"]) for entry in journal] == [
        ("latency", {"ms": 20.0, "jitter_ms": 5.0}),
        ("bandwidth", {"bytes_per_s": 1_000_000}),
        ("blackhole", {}),
        ("reset_connections", {"connections": 1}),
        ("slow_close", {"ms": 10.0}),
        ("clear", {"toxic": "blackhole"}),
        ("heal", {}),
    ]
    times = [entry["at"] for entry in journal]
    assert times == sorted(times)
    assert started <= times[0]
    assert times[-1] <= time.time()
    assert {entry["proxy"] for entry in journal} == {"echo"}
    assert proxy.stats()["toxics"] == {}


def test_bad_arguments_are_refused_at_once(echo_server: tuple[str, int]) -> None:
    for upstream in ("no-port", "host:", "host:99999", ":2379"):
        with pytest.raises(ValueError, match="upstream"):
            ChaosProxy(upstream)
    proxy = ChaosProxy(echo_server)
    with pytest.raises(ValueError, match="latency"):
        proxy.set_latency(-1)
    with pytest.raises(ValueError, match="bandwidth"):
        proxy.set_bandwidth(0)
    with pytest.raises(ValueError, match="unknown toxic"):
        proxy.clear("packet_loss")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not started"):
        _ = proxy.endpoint
    assert proxy.journal == []


# -- lifecycle ----------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts fds in /proc")
def test_stop_leaves_no_thread_socket_or_task(echo_server: tuple[str, int]) -> None:
    fds_before = _open_fds()
    proxy = ChaosProxy(echo_server, name="leak-check").start()
    clients = [_connect(proxy) for _ in range(5)]
    try:
        for sock in clients:
            _round_trip_s(sock)
        proxy.set_latency(50)
        clients[0].sendall(b"in flight")  # held by the latency when stop() comes
        proxy.stop()
        proxy.stop()  # idempotent
        assert not [t for t in threading.enumerate() if t.name.startswith("chaos-proxy-")]
        for sock in clients:
            sock.settimeout(5)
            # Closed: FIN, or RST when the kernel still held unread bytes; both are fine.
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
    finally:
        for sock in clients:
            sock.close()
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy)
    stats = proxy.stats()
    assert (stats["running"], stats["connections_open"], stats["tasks"]) == (False, 0, 0)
    # The echo server's side of each connection closes in its own threads.
    wait_until(lambda: _open_fds() <= fds_before, timeout_s=10)


def test_a_proxy_starts_once(echo_server: tuple[str, int]) -> None:
    proxy = ChaosProxy(echo_server)
    with proxy, pytest.raises(RuntimeError, match="already started"):
        proxy.start()
    with pytest.raises(RuntimeError, match="already started"):
        proxy.start()


# -- a real etcd behind the proxy -----------------------------------------------------


def _works(client: EtcdClient, key: str) -> bool:
    try:
        client.put(key, b"x")
    except EtcdUnavailable:
        return False
    return True


@pytest.mark.etcd
def test_etcd_through_a_partition(
    etcd_server: EmbeddedEtcd, etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    key = f"{etcd_prefix}/k"
    with ChaosProxy(etcd_server.endpoint, name="etcd") as proxy:
        client = EtcdClient(proxy.endpoint, timeout_s=1)
        try:
            client.put(key, b"1")
            assert client.get(key) is not None

            proxy.blackhole()
            with pytest.raises(EtcdUnavailable):
                client.put(key, b"2")
            with pytest.raises(EtcdUnavailable):
                client.get(key)
            with EtcdClient(proxy.endpoint, timeout_s=1) as during, pytest.raises(EtcdUnavailable):
                during.ping()

            proxy.heal()
            # The old client's HTTP/2 connection has a hole where the partition dropped
            # its frames: etcd closes it on the next request, which fails fast; gRPC
            # then reconnects and the same client works again without being recreated.
            # (A new client to the same address shares that connection: gRPC pools
            # subchannels per process, so it goes through the same one failure.)
            with EtcdClient(proxy.endpoint, timeout_s=1) as fresh:
                wait_until(lambda: _works(fresh, key), timeout_s=10)
            wait_until(lambda: _works(client, key), timeout_s=10)
        finally:
            client.close()
    value = etcd_client.get(key)
    assert value is not None
    assert value.value == b"x"


@pytest.mark.etcd
def test_etcd_client_rides_through_resets_and_refusals(
    etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    key = f"{etcd_prefix}/k"
    with (
        ChaosProxy(etcd_server.endpoint, name="etcd") as proxy,
        EtcdClient(proxy.endpoint, timeout_s=1) as client,
    ):
        client.put(key, b"1")
        proxy.reset_connections()
        wait_until(lambda: _works(client, key), timeout_s=10)
        assert proxy.stats()["connections_accepted"] >= 2  # it reconnected

        proxy.refuse()
        with pytest.raises(EtcdUnavailable):
            client.put(key, b"2")
        proxy.heal()
        wait_until(lambda: _works(client, key), timeout_s=10)
        client.delete_prefix(etcd_prefix + "/")
