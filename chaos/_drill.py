"""`resilience drill`: lose a site under load, let the other take over, prove nothing was lost.

A drill stands up two sites and a witness (or uses a sites file), runs the payments job
on site a with site b standing by, injects the fault, lets b take over, optionally
fails back, and judges the outcome with the independent exactly-once checker:

* **site-kill**: every process of site a (its driver, its Ray, its workers) and its
  etcd member get SIGKILL at once;
* **partition**: site a is cut off: its etcd member stops answering anyone (SIGSTOP)
  and the replication link is blackholed both ways, while a's own processes run on;
* **switchover**: a planned handover from a to b (`resilience switchover`).

Times are measured from the moment the fault is injected, detection included: RTO is
the fault to the first commit of a new checkpoint at the new site. RPO is the events
the old site had committed that the new one did not hold when it took over (0 in sync
mode; in async mode they are replayed from the input afterwards), the duplicates the
checker finds, and the replication lag at the fault. The sites' ledgers are compared at
the cutover checkpoint (state and sink digests).

Each site runs as its own `resilience run ... --sites --site` process with its own Ray:
the drill drives the product the way an operator would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chaos._jobs import JobSpec, adapter_for
from chaos.proxy import ChaosProxy
from checkpoint import FileSystemStore, SinkProgress, SQLiteTwoPhaseSink
from resilience import EmbeddedEtcdCluster, EtcdClient, EtcdError
from resilience.replication import ReplicationRegistry, Sites, make_pki

__all__ = ["FAULTS", "DrillError", "DrillOptions", "LocalSites", "kill_session", "run_drill"]

Fault = Literal["site-kill", "partition", "switchover"]
FAULTS: tuple[Fault, ...] = ("site-kill", "partition", "switchover")
_LEGS = 2  # ledger rows per payments event


class DrillError(Exception):
    """The drill could not be carried out (not a verdict: the infrastructure failed)."""


@dataclass(frozen=True)
class DrillOptions:
    """What `resilience drill` was asked for."""

    workdir: Path
    mode: Literal["sync", "async"] = "sync"
    fault: Fault = "site-kill"
    failback: bool = False
    rto_budget_s: float | None = None
    input_path: Path | None = None
    sites_file: Path | None = None
    events: int = 300_000
    accounts: int = 2_000
    seed: int = 1
    parallelism: int = 2
    checkpoint_interval_s: float = 0.5
    fault_at: float = 0.3  # share of the input committed when the fault strikes
    fault_after_s: float | None = None  # or: seconds after the standby caught up
    partition_s: float = 6.0
    on_standby_loss: Literal["fail-closed", "degrade"] = "fail-closed"
    lease_ttl_s: int = 2
    timeout_s: float = 420.0
    progress: bool = True


def kill_session(session: int, timeout_s: float = 10.0) -> int:
    """SIGKILL every process of session `session` (a site started with its own session)
    until none is left; returns how many there were. Ray's workers sit in process
    groups of their own but in the driver's session, so the session is the unit."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        live = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == session and fields[0] != "Z":
                live.append(int(entry))
        if not live:
            return len(killed)
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.05)
    raise DrillError(f"session {session} still has processes after {timeout_s:g}s of SIGKILL")


class _Site:
    """One site's `resilience run` process (its own session: killing the session kills
    its Ray too)."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = workdir.parent / f"{name}.log"

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"\n=== start {self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        if self.proc is None:
            return 0
        count = kill_session(self.proc.pid)
        self.proc.wait(timeout=10)
        return count

    def stop(self) -> None:
        """At the end, whatever happened: nothing of the site survives the drill."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        if self.proc is not None:
            with contextlib.suppress(DrillError):
                kill_session(self.proc.pid, timeout_s=5)

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def ledger(self) -> Path:
        return self.workdir / adapter_for("payments").output


@dataclass
class _Observation:
    """What the drill saw, in the order it saw it (seconds since the drill's start)."""

    t0: float
    timeline: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    progress: bool = True

    def event(self, kind: str, message: str, **data: Any) -> float:
        at = time.time()
        self.timeline.append({"t": round(at - self.t0, 3), "at": at, "kind": kind,
                              "message": message, **data})
        if self.progress:
            print(f"[{at - self.t0:7.2f}s] {kind:<12} {message}", file=sys.stderr, flush=True)
        return at


class LocalSites:
    """Two sites and a witness on this machine: a 3-member etcd (a, b, witness) whose
    raft leader is the witness, a throwaway CA, and a proxy in front of each site's
    replication receiver; its `sites_file` names site a primary. `stop()` takes it all
    down."""

    def __init__(self, root: Path, lease_ttl_s: int, mode: str, on_standby_loss: str) -> None:
        self.root = root
        self.cluster = EmbeddedEtcdCluster(root / "etcd", 3)
        self.pki = make_pki(root / "pki", ["a", "b"])
        listen = _free_ports(2)
        self.proxies = {
            name: ChaosProxy(("127.0.0.1", port), name=f"replication-to-{name}").start()
            for name, port in zip("ab", listen, strict=True)
        }
        members = self.cluster.members
        self.members = {"a": members[0], "b": members[1], "witness": members[2]}
        # etcd's raft leader at the witness: a new raft leader renews every lease for a
        # whole TTL, so losing the site whose member led would delay detection by one.
        try:
            self.cluster.move_leader(self.members["witness"])
        except BaseException:
            self.stop()
            raise
        lines = [
            f"mode: {mode}", f"on_standby_loss: {on_standby_loss}", "standby_timeout_s: 2",
            f"lease_ttl_s: {lease_ttl_s}", "security: {ca: pki/ca.crt, token_file: pki/token}",
            "sites:",
        ]
        for name, port in zip("ab", listen, strict=True):
            lines += [f"  {name}:", f"    workdir: {name}", f"    listen: 127.0.0.1:{port}",
                      f"    address: {self.proxies[name].endpoint}",
                      f"    etcd: [{self.members[name].endpoint}]",
                      f"    cert: pki/{name}.crt", f"    key: pki/{name}.key"]
        lines.append(f"witness: {{etcd: {self.members['witness'].endpoint}}}")
        lines.append("primary: a")
        self.sites_file = root / "sites.yaml"
        self.sites_file.write_text("\n".join(lines) + "\n")

    def observer_endpoints(self) -> str:
        order = [self.members[n].endpoint for n in ("witness", "b", "a")]
        return ",".join(order)

    def stop(self) -> None:
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                proxy.stop()
        for member in self.cluster.members:
            with contextlib.suppress(Exception):
                if member.is_paused:
                    member.resume()
        with contextlib.suppress(Exception):
            self.cluster.stop()


def _accepts(address: str) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _free_ports(count: int) -> list[int]:
    import socket

    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait(what: str, condition: Callable[[], Any], timeout_s: float, *,
          interval_s: float = 0.1, alive: Callable[[], str | None] | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if alive is not None:
            dead = alive()
            if dead:
                raise DrillError(f"{what}: {dead}")
        if time.monotonic() > deadline:
            raise DrillError(f"{what}: not within {timeout_s:g}s")
        time.sleep(interval_s)


class _Drill:
    def __init__(self, opts: DrillOptions) -> None:
        self.opts = opts
        self.root = opts.workdir
        self.job_id = f"drill-{uuid.uuid4().hex[:8]}"
        self.obs = _Observation(time.time(), progress=opts.progress)
        self.topology: LocalSites | None = None
        self.sites: dict[str, _Site] = {}
        self.client: EtcdClient | None = None
        self.registry: ReplicationRegistry | None = None
        self.input_path = opts.input_path or self.root / f"payments-{opts.events}.jsonl"
        self.result: dict[str, Any] = {}
        self.seen_takeovers: set[int] = set()
        self.seen_handover: tuple[str, str] | None = None
        self.lag_at_fault: dict[str, Any] | None = None
        self.sites_config: Sites | None = None
        self.cutover_state: dict[str, Any] = {}

    # -- setting up -------------------------------------------------------------------

    def setup(self) -> None:
        opts = self.opts
        self.root.mkdir(parents=True, exist_ok=True)
        if opts.input_path is None and not self.input_path.exists():
            self.obs.event("input", f"generating {opts.events:,} transfers into "
                                    f"{self.input_path}")
            write = adapter_for("payments").write_input
            assert write is not None
            write(JobSpec(events=opts.events, accounts=opts.accounts, seed=opts.seed),
                  self.input_path)
        if opts.sites_file is None:
            self.obs.event("setup", "starting a 3-member etcd (site a, site b, witness), a "
                                    "throwaway CA and the replication link's proxies")
            self.topology = LocalSites(self.root, opts.lease_ttl_s, opts.mode,
                                      opts.on_standby_loss)
            sites_file = self.topology.sites_file
            endpoints = self.topology.observer_endpoints()
        else:
            sites_file = opts.sites_file
            loaded = Sites.load(sites_file)
            endpoints = ",".join(dict.fromkeys(
                ([loaded.witness_etcd] if loaded.witness_etcd else [])
                + [e for s in loaded.sites.values() for e in s.etcd]))
        self.sites_config = Sites.load(sites_file)
        if set(self.sites_config.sites) != {"a", "b"}:
            raise DrillError(f"{sites_file}: a drill needs sites named a and b")
        self.client = EtcdClient(endpoints, timeout_s=1.0)
        self.registry = ReplicationRegistry(self.client, self.job_id)
        for name, site in self.sites_config.sites.items():
            argv = [sys.executable, "-m", "resilience.cli", "run", "payments",
                    "--input", str(self.input_path), "--sites", str(sites_file),
                    "--site", name, "--job-id", self.job_id, "--replication", opts.mode,
                    "--on-standby-loss", opts.on_standby_loss,
                    "--checkpoint-interval", str(opts.checkpoint_interval_s),
                    "--parallelism", str(opts.parallelism), "--no-progress"]
            env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
            # Each site's Ray has a token of its own: a driver cannot join the other site.
            env["RAY_AUTH_TOKEN"] = hashlib.sha256(f"{self.job_id}/{name}".encode()).hexdigest()
            site.workdir.mkdir(parents=True, exist_ok=True)
            self.sites[name] = _Site(name, argv, site.workdir, env)

    def _alive(self, *names: str) -> Callable[[], str | None]:
        def check() -> str | None:
            for name in names:
                site = self.sites[name]
                if site.proc is not None and site.exit_code is not None:
                    tail = _tail(site.log)
                    return f"site {name} exited with code {site.exit_code}: {tail}"
            return None
        return check

    def _alive_for_failback(self) -> str | None:
        b = self.sites["b"]
        if b.exit_code == 0:
            return ("the job finished on site b before site a caught up: give the drill more "
                    "--events (or an earlier --fault-at) to see a failback")
        return self._alive("a", "b")()

    def _active(self) -> dict[str, Any] | None:
        assert self.registry is not None
        try:
            active = self.registry.active_site()
        except EtcdError:
            return None
        return None if active is None else dict(active)

    def _state(self) -> dict[str, Any] | None:
        assert self.registry is not None
        try:
            return self.registry.state()
        except EtcdError:
            return None

    def _caught_up(self, active: str) -> bool:
        state = self._state()
        if not state or state.get("site") != active:
            return False
        standby = state.get("standby") or {}
        lag = (standby.get("lag") or {}).get("checkpoints")
        return bool(standby.get("connected")) and lag is not None and lag <= 1

    # -- running ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        opts = self.opts
        a, b = self.sites["a"], self.sites["b"]
        self.obs.event("start", f"job {self.job_id}: site a active, site b standby, "
                                f"{opts.mode} replication; fault {opts.fault}")
        assert self.sites_config is not None
        if self.sites_config.primary == "a":
            # Site b cannot start the job: it comes up first and stands by, so that site a
            # ships to it from its first checkpoint (an async site a never waits for it).
            b.start()
            listen = self.sites_config.site("b").listen
            _wait("site b's replication receiver listens", lambda: _accepts(listen), 180,
                  interval_s=0.2, alive=self._alive("b"))
            self.obs.event("standby", "site b stands by, its receiver listens")
            a.start()
            _wait("site a leads the job", lambda: (self._active() or {}).get("site") == "a",
                  180, alive=self._alive("a", "b"))
            self.obs.event("active", "site a leads the job")
        else:
            a.start()
            _wait("site a leads the job", lambda: (self._active() or {}).get("site") == "a",
                  180, alive=self._alive("a"))
            self.obs.event("active", "site a leads the job")
            b.start()
        _wait("site b stands by and is caught up", lambda: self._caught_up("a"), 180,
              alive=self._alive("a", "b"))
        self.obs.event("standby", "site b stands by, caught up")
        if opts.fault_after_s is not None:
            due = time.monotonic() + opts.fault_after_s
            _wait(f"{opts.fault_after_s:g}s of replicated running", lambda: self._watch() and
                  time.monotonic() >= due, opts.timeout_s, alive=self._alive("a", "b"))
        else:
            threshold = int(opts.fault_at * opts.events)
            _wait(f"site a commits {threshold:,} lines", lambda: self._watch() and
                  self._progress(a).watermark >= threshold, opts.timeout_s,
                  alive=self._alive("a"))
        state = self._state() or {}
        self.lag_at_fault = (state.get("standby") or {}).get("lag")
        epoch_before = int((self._active() or {}).get("epoch", 0))
        fault_at = self._inject()
        old, new = ("a", "b")
        takeover = _wait("site b takes over", lambda: self._watch() and self._takeover_by("b"),
                         opts.timeout_s, interval_s=0.05, alive=self._alive("b"))
        self._capture_cutover(takeover)
        first = _wait("site b commits a new checkpoint",
                      lambda: self._watch() and self._first_commit(b, takeover), opts.timeout_s,
                      interval_s=0.05, alive=self._alive("b"))
        self.obs.event("first_commit", f"site b committed checkpoint {first['checkpoint_id']} "
                       f"(epoch {first['epoch']}), {first['at'] - fault_at:.2f}s after the fault")
        cutover = {"fault_at": fault_at, "takeover": takeover, "first_commit": first,
                   "epoch_before": epoch_before, "from": old, "to": new}
        failback = None
        if opts.fault == "partition":
            self._heal_partition(fault_at)
        if opts.failback:
            failback = self._failback()
        self._wait_end()
        return {"cutover": cutover, "failback": failback}

    def _progress(self, site: _Site) -> SinkProgress:
        return SQLiteTwoPhaseSink.read_progress(site.ledger)

    def _watch(self) -> bool:
        """Sample both sites and etcd, and put what changed on the timeline."""
        sample: dict[str, Any] = {"t": round(time.time() - self.obs.t0, 3)}
        for name, site in self.sites.items():
            progress = self._progress(site)
            sample[name] = {"watermark": progress.watermark, "checkpoint": progress.last_committed,
                            "epoch": progress.fencing_epoch}
        state = self._state() or {}
        standby = state.get("standby") or {}
        sample["replication"] = {"site": state.get("site"), "gate": state.get("gate"),
                                 "lag": standby.get("lag"),
                                 "ship_s": standby.get("last_ship_s")}
        self.obs.samples.append(sample)
        assert self.registry is not None
        with contextlib.suppress(EtcdError):
            for takeover in self.registry.takeovers():
                epoch = int(takeover.get("epoch", 0))
                if epoch not in self.seen_takeovers and "restore_s" in takeover:
                    self.seen_takeovers.add(epoch)
                    self.obs.event("takeover", f"site {takeover['site']} leads under epoch "
                                   f"{epoch} ({takeover['kind']} from site "
                                   f"{takeover['from_site']}); restored checkpoint "
                                   f"{takeover['restored_from']} in {takeover['restore_s']:.2f}s"
                                   + (f"; LOST checkpoints {takeover['lost_checkpoints']}"
                                      if takeover.get("lost_checkpoints") else ""),
                                   epoch=epoch)
            handover = self.registry.handover()
            if handover is not None and (handover.id, handover.state) != self.seen_handover:
                self.seen_handover = (handover.id, handover.state)
                self.obs.event("switchover", f"{handover.source} -> {handover.target}: "
                               f"{handover.state}" + (f" ({handover.reason})"
                                                      if handover.reason else ""))
        if self.opts.progress and len(self.obs.samples) % 50 == 0:
            print(f"          progress     committed lines: a {sample['a']['watermark']:,}, "
                  f"b {sample['b']['watermark']:,}; replication {sample['replication']['gate']}",
                  file=sys.stderr, flush=True)
        return True

    def _takeover_by(self, site: str, after_epoch: int = 0) -> dict[str, Any] | None:
        assert self.registry is not None
        try:
            for takeover in reversed(self.registry.takeovers()):
                if takeover.get("site") == site and "restore_s" in takeover and \
                        int(takeover.get("epoch", 0)) > after_epoch:
                    return dict(takeover)
        except EtcdError:
            return None
        return None

    def _first_commit(self, site: _Site, takeover: dict[str, Any]) -> dict[str, Any] | None:
        epoch, restored = int(takeover["epoch"]), int(takeover["restored_from"])
        for commit in SQLiteTwoPhaseSink.read_commits(site.ledger):
            if commit.fencing_epoch >= epoch and commit.checkpoint_id > restored:
                return {"checkpoint_id": commit.checkpoint_id, "epoch": commit.fencing_epoch,
                        "at": commit.committed_at, "rows": commit.rows}
        return None

    def _inject(self) -> float:
        opts = self.opts
        a = self.sites["a"]
        if opts.fault == "site-kill":
            at = time.time()
            killed = a.kill()
            if self.topology is not None:
                self.topology.members["a"].kill()
            self.obs.timeline.append({"t": round(at - self.obs.t0, 3), "at": at,
                                      "kind": "fault", "message": f"SIGKILL of site a: "
                                      f"{killed} processes" + (" and its etcd member"
                                                               if self.topology else "")})
            if opts.progress:
                print(f"[{at - self.obs.t0:7.2f}s] fault        SIGKILL of site a ({killed} "
                      "processes and its etcd member)", file=sys.stderr, flush=True)
            return at
        if opts.fault == "partition":
            if self.topology is None:
                raise DrillError("a partition drill needs the drill's own topology (no --sites)")
            at = time.time()
            self.topology.members["a"].pause()
            for proxy in self.topology.proxies.values():
                proxy.blackhole()
            self.obs.event("fault", "site a partitioned: its etcd member answers no one, the "
                                    "replication link is cut both ways; its processes run on")
            return at
        assert self.registry is not None
        at = self.obs.event("fault", "switchover requested: site a hands over to site b")
        self.registry.request_handover(target="b", expected_primary="a", timeout_s=30)
        return at

    def _capture_cutover(self, takeover: dict[str, Any]) -> None:
        """The state digest of the cutover checkpoint at both sites, read while both still
        hold it (each site's retention drops it later)."""
        restored = int(takeover["restored_from"])
        digests = {}
        for name, site in self.sites.items():
            try:
                store = FileSystemStore(site.workdir / "checkpoints", job_id=self.job_id)
                digests[name] = hashlib.sha256(store.get_manifest(restored).to_bytes()).hexdigest()
            except Exception as e:  # noqa: BLE001 - reported, never raised
                digests[name] = f"unreadable: {type(e).__name__}: {e}"[:200]
        self.cutover_state = {"checkpoint_id": restored, "manifest_sha256": digests}

    def _heal_partition(self, fault_at: float) -> None:
        assert self.topology is not None
        remaining = self.opts.partition_s - (time.time() - fault_at)
        end = time.monotonic() + max(remaining, 0.0)
        while time.monotonic() < end:
            self._watch()
            time.sleep(0.1)
        self.topology.members["a"].resume()
        for proxy in self.topology.proxies.values():
            proxy.heal()
        self.obs.event("heal", "partition healed: site a's etcd member and the link are back")

    def _failback(self) -> dict[str, Any]:
        assert self.registry is not None
        a = self.sites["a"]
        if not a.running():
            if self.topology is not None and not self.topology.members["a"].is_running:
                self.topology.members["a"].restart()
            a.start()
            self.obs.event("restart", "site a restarted; it rejoins as the standby")
        _wait("site a catches up as the standby", lambda: self._watch() and
              self._caught_up("b"), self.opts.timeout_s,
              alive=self._alive_for_failback)
        self.obs.event("caught_up", "site a caught up with site b")
        epoch = int((self._active() or {}).get("epoch", 0))
        at = self.obs.event("failback", "switchover requested: site b hands back to site a")
        self.registry.request_handover(target="a", expected_primary="b", timeout_s=30)
        takeover = _wait("site a takes over again", lambda: self._watch() and
                         self._takeover_by("a", after_epoch=epoch), self.opts.timeout_s,
                         interval_s=0.05, alive=self._alive("a"))
        first = _wait("site a commits a new checkpoint", lambda: self._watch() and
                      self._first_commit(a, takeover), self.opts.timeout_s, interval_s=0.05,
                      alive=self._alive("a"))
        self.obs.event("first_commit", f"site a committed checkpoint {first['checkpoint_id']}, "
                       f"{first['at'] - at:.2f}s after the request")
        return {"requested_at": at, "takeover": takeover, "first_commit": first}

    def _wait_end(self) -> None:
        def ended() -> bool:
            self._watch()
            return not any(s.running() for s in self.sites.values())
        _wait("the job ends on both sites", ended, self.opts.timeout_s, interval_s=0.2)
        for name, site in self.sites.items():
            self.obs.event("exit", f"site {name} exited with code {site.exit_code}")

    def stop(self) -> None:
        for site in self.sites.values():
            site.stop()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.topology is not None:
            self.topology.stop()

    # -- judging ------------------------------------------------------------------------

    def judge(self, outcome: dict[str, Any]) -> dict[str, Any]:
        opts = self.opts
        adapter = adapter_for("payments")
        active = (self._active() or {}).get("site")
        cutover = outcome["cutover"]
        takeover, first = cutover["takeover"], cutover["first_commit"]
        fault_at = cutover["fault_at"]
        old, new = self.sites[cutover["from"]], self.sites[cutover["to"]]
        restored = int(takeover["restored_from"])
        verdicts: dict[str, dict[str, Any]] = {}
        for name, site in self.sites.items():
            judgement = adapter.exactly_once(JobSpec(events=opts.events), self.input_path,
                                             site.workdir)
            verdicts[name] = {"passed": judgement.passed, "detail": judgement.detail,
                              "data": judgement.data}
        final = active if active in verdicts else cutover["to"]
        # The ledgers are compared at the newest checkpoint both committed: the old site
        # may have died between a checkpoint's record in etcd and its own sink commit, and
        # then only the new site (which restored from it) committed the cutover checkpoint.
        old_fp = {f.table: f for f in SQLiteTwoPhaseSink.fingerprint(old.ledger, restored)}
        sink_checkpoint = min((f.checkpoint_id for f in old_fp.values()), default=restored)
        old_fp = {f.table: f for f in SQLiteTwoPhaseSink.fingerprint(old.ledger,
                                                                      sink_checkpoint)}
        new_fp = {f.table: f for f in SQLiteTwoPhaseSink.fingerprint(new.ledger,
                                                                      sink_checkpoint)}
        sink_match = bool(old_fp) and all(
            t in new_fp and new_fp[t].digest == f.digest and new_fp[t].rows == f.rows
            for t, f in old_fp.items())
        state_digests = self.cutover_state.get("manifest_sha256", {})
        state_match = len(set(state_digests.values())) == 1 and \
            not any(str(v).startswith("unreadable") for v in state_digests.values())
        # What the old site had committed under its own reign past the checkpoint the new
        # site restored: output visible there that the new site did not hold.
        lost = [c for c in SQLiteTwoPhaseSink.read_commits(old.ledger)
                if c.checkpoint_id > restored and c.fencing_epoch < int(takeover["epoch"])]
        rpo_rows = sum(c.rows for c in lost)
        past_restore = [c.checkpoint_id for c in lost]
        duplicates = int((verdicts[final].get("data") or {}).get("duplicated_events", 0))
        rto = first["at"] - fault_at
        detection = float(takeover["at"]) - fault_at
        report = {
            "job_id": self.job_id, "mode": opts.mode, "fault": opts.fault,
            "failback": opts.failback, "on_standby_loss": opts.on_standby_loss,
            "events": opts.events, "input": str(self.input_path),
            "rto_seconds": round(rto, 3),
            "rto_split": {"detection_s": round(detection, 3),
                          "restore_s": round(float(takeover["restore_s"]), 3),
                          "first_commit_after_restore_s": round(
                              first["at"] - float(takeover.get("restored_at", takeover["at"])),
                              3)},
            "rpo_events": rpo_rows // _LEGS, "rpo_rows": rpo_rows,
            "lost_checkpoints": takeover.get("lost_checkpoints", []),
            "old_site_commits_past_restore_point": past_restore,
            "duplicates": duplicates,
            "lag_at_fault": self.lag_at_fault,
            "exactly_once": bool(verdicts[final]["passed"]),
            "verdicts": verdicts,
            "active_site": active,
            "ledger": str(self.sites[final].ledger),
            "dead_letters": str(self.sites[final].workdir / "dead_letter.jsonl"),
            "fingerprints": {
                "checkpoint_id": restored, "sink_checkpoint_id": sink_checkpoint,
                "state": state_digests, "state_match": state_match,
                "sink": {t: {"old": f.digest, "new": new_fp[t].digest if t in new_fp else None,
                             "rows": f.rows} for t, f in old_fp.items()},
                "sink_match": sink_match,
            },
            "epochs": [{"epoch": t.get("epoch"), "site": t.get("site"), "kind": t.get("kind"),
                        "from_site": t.get("from_site"), "restored_from": t.get("restored_from"),
                        "at": t.get("at")} for t in self._takeovers()],
            "failback_result": _failback_summary(outcome.get("failback")),
            "exit_codes": {n: s.exit_code for n, s in self.sites.items()},
            "commits": {n: [c.__dict__ for c in SQLiteTwoPhaseSink.read_commits(s.ledger)]
                        for n, s in self.sites.items()},
            "timeline": self.obs.timeline, "samples": self.obs.samples,
            "t0": self.obs.t0, "rto_budget_s": opts.rto_budget_s,
        }
        failures = []
        if not report["exactly_once"]:
            failures.append(f"the ledger of site {final} is not exactly once")
        if opts.mode == "sync" and opts.on_standby_loss != "degrade" and rpo_rows:
            failures.append(f"sync mode lost {rpo_rows // _LEGS} committed events")
        if past_restore and opts.mode == "sync":
            failures.append(f"site {old.name} committed checkpoints {past_restore} past the "
                            "restore point of the new site")
        if duplicates:
            failures.append(f"{duplicates} duplicated events")
        if not sink_match:
            failures.append(f"the sites' ledgers differ at checkpoint {sink_checkpoint}")
        if not state_match:
            failures.append(f"the sites' states differ at checkpoint {restored}")
        if opts.rto_budget_s is not None and rto > opts.rto_budget_s:
            failures.append(f"RTO {rto:.2f}s is over the budget of {opts.rto_budget_s:g}s")
        bad_exits = {n: c for n, c in report["exit_codes"].items() if c not in (0, None) and
                     not (n == "a" and opts.fault == "site-kill" and not opts.failback)}
        if bad_exits:
            failures.append(f"sites exited with {bad_exits}")
        report["failures"] = failures
        report["passed"] = not failures
        return report

    def _takeovers(self) -> list[dict[str, Any]]:
        assert self.registry is not None
        try:
            return self.registry.takeovers()
        except EtcdError:
            return []


def _failback_summary(failback: dict[str, Any] | None) -> dict[str, Any] | None:
    if failback is None:
        return None
    first = failback["first_commit"]
    return {"rto_seconds": round(first["at"] - failback["requested_at"], 3),
            "restored_from": failback["takeover"].get("restored_from"),
            "lost_checkpoints": failback["takeover"].get("lost_checkpoints", []),
            "epoch": failback["takeover"].get("epoch")}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])[-400:]


def run_drill(opts: DrillOptions) -> dict[str, Any]:
    """Carry out one drill and return its report (a JSON-safe dict; `passed` says how it
    went, `failures` why not). Raises `DrillError` when it could not be carried out."""
    if opts.workdir.exists() and any(opts.workdir.iterdir()):
        raise DrillError(f"workdir {opts.workdir} is not empty: a drill needs a fresh one")
    drill = _Drill(opts)
    try:
        drill.setup()
        outcome = drill.run()
        report = drill.judge(outcome)
    finally:
        drill.stop()
    verdict = "PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"])
    drill.obs.event("verdict", verdict)
    report["timeline"] = drill.obs.timeline
    (opts.workdir / "drill.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report

