"""Coordination on etcd: leader election with fencing epochs, compare-and-swap, watches.

The checkpoint coordinator fences every commit with a `Leadership`:

    election = LeaderElection(client, "payments", holder="coordinator-a", ttl_s=5)
    with election.campaign(timeout_s=30) as leadership:
        leadership.on_lost(stop_processing)
        leadership.fenced_put("/resilience/payments/checkpoints/latest", manifest_id)

Guarantees, all enforced by etcd rather than by the holder's good faith:

* At most one holder owns the leader key of a resource at a time; the key is
  attached to the holder's lease, so it disappears when the holder stops
  renewing (crash, partition, pause).
* Each acquisition increments the resource's epoch counter in the same
  transaction that creates the leader key, so fencing epochs are 1, 2, 3, ...
  and are never reused, even after crashes.
* A fenced write commits only if, at commit time, the epoch counter still
  equals the writer's epoch and the leader key is still the writer's (same
  lease, same creation revision). Otherwise it raises `FencedOut`.
* `Leadership.is_valid()` turns False no later than the TTL after the *send*
  time of the last keep-alive etcd acknowledged, which is before etcd itself
  can expire the lease, so a cut-off holder stops itself before anyone else
  can be elected.

Keys (namespace "/resilience" by default): `<namespace>/<resource>/leader`
(JSON: holder, epoch) and `<namespace>/<resource>/epoch` (decimal epoch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from checkpoint import FencedOut, ResilienceError
from resilience._errors import CampaignTimeout, CoordinationError, InvalidCoordinationArgument
from resilience.coordination._client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    Get,
    KeyValue,
    Put,
    TxnOp,
    WatchEvent,
    WatchHandle,
)

__all__ = [
    "CampaignTimeout",
    "Clock",
    "CoordinationError",
    "InvalidCoordinationArgument",
    "LeaderElection",
    "LeaderInfo",
    "Leadership",
    "LeaseDeadline",
    "compare_and_swap",
    "watch_prefix",
]

_log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Monotonic seconds; `time.monotonic` in production, a fake in unit tests."""

_RESOURCE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*(/[A-Za-z0-9._:@-]+)*")


@dataclass(frozen=True)
class LeaseDeadline:
    """When a holder must consider its lease gone, from its own point of view (pure).

    etcd counts a lease's TTL from when it *received* the last keep-alive, which
    is after the holder *sent* it; so `sent_at + ttl` is a deadline the server
    cannot beat (up to clock-rate drift). Never moves backwards.
    """

    ttl_s: float
    expires_at: float

    @classmethod
    def granted(cls, ttl_s: float, sent_at: float, granted_ttl_s: float) -> LeaseDeadline:
        return cls(ttl_s, sent_at + min(ttl_s, granted_ttl_s))

    def renewed(self, sent_at: float, granted_ttl_s: float) -> LeaseDeadline:
        """The deadline after a keep-alive sent at `sent_at` was answered with `granted_ttl_s`."""
        candidate = sent_at + min(self.ttl_s, granted_ttl_s)
        return LeaseDeadline(self.ttl_s, max(self.expires_at, candidate))

    def is_alive(self, now: float) -> bool:
        return now < self.expires_at

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True)
class LeaderInfo:
    """The current leader of a resource, as stored in etcd."""

    holder: str
    epoch: int
    lease_id: int
    create_revision: int


def _validate_resource(resource: str) -> None:
    if not _RESOURCE_PATTERN.fullmatch(resource):
        raise InvalidCoordinationArgument(
            f"resource name {resource!r} must be letters, digits and . _ : @ - "
            "(with / between parts)"
        )


def _parse_epoch(kv: KeyValue | None, key: str) -> int:
    if kv is None:
        return 0
    try:
        return int(kv.value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise CoordinationError(
            f"{key} holds {kv.value[:40]!r}, not a fencing epoch: was it written by hand?"
        ) from None


def _parse_leader(kv: KeyValue) -> LeaderInfo:
    try:
        body = json.loads(kv.value.decode("utf-8"))
        return LeaderInfo(str(body["holder"]), int(body["epoch"]), kv.lease, kv.create_revision)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CoordinationError(
            f"{kv.key} holds {kv.value[:60]!r}, not a leader record: was it written by hand?"
        ) from None


class LeaderElection:
    """Elects one holder of `resource` at a time and numbers each reign with a fencing epoch.

    `holder` names this contender (a process or actor id) in the leader record.
    `ttl_s` bounds how long a dead leader blocks the others, and how long a
    cut-off leader may still believe it leads: etcd rounds the lease up to a
    whole number of seconds (at least 2 s by default), the holder counts
    `ttl_s` itself. Use one `LeaderElection` per contender.
    """

    def __init__(
        self,
        client: EtcdClient,
        resource: str,
        holder: str,
        ttl_s: float = 10.0,
        *,
        clock: Clock = time.monotonic,
        namespace: str = "/resilience",
    ) -> None:
        _validate_resource(resource)
        if not holder:
            raise InvalidCoordinationArgument("a leader election needs a non-empty holder name")
        if not math.isfinite(ttl_s) or ttl_s < 1.0:
            raise InvalidCoordinationArgument(
                f"leader lease ttl_s must be at least 1 second, got {ttl_s!r}"
            )
        if not namespace.startswith("/") or namespace.endswith("/"):
            raise InvalidCoordinationArgument(
                f"namespace {namespace!r} must start with '/' and not end with one"
            )
        self.client = client
        self.resource = resource
        self.holder = holder
        self.ttl_s = float(ttl_s)
        self.leader_key = f"{namespace}/{resource}/leader"
        self.epoch_key = f"{namespace}/{resource}/epoch"
        self._clock = clock

    def __repr__(self) -> str:
        return f"LeaderElection({self.resource!r}, holder={self.holder!r}, ttl_s={self.ttl_s:g})"

    def current_leader(self) -> LeaderInfo | None:
        """The leader recorded in etcd now, or None when there is none."""
        kv = self.client.get(self.leader_key)
        return None if kv is None else _parse_leader(kv)

    def current_epoch(self) -> int:
        """The latest fencing epoch ever granted for the resource; 0 if none yet."""
        return _parse_epoch(self.client.get(self.epoch_key), self.epoch_key)

    def try_acquire(self) -> Leadership | None:
        """One attempt, no waiting: the new `Leadership`, or None when someone else leads.

        Raises `EtcdUnavailable` when etcd does not answer; the lease granted
        for the attempt is revoked, or expires if etcd stays unreachable, and
        an epoch the attempt may have consumed is never granted again.
        """
        snapshot = self.client.transaction([], [Get(self.epoch_key), Get(self.leader_key)])
        epoch_kvs, leader_kvs = snapshot.reads
        if leader_kvs:
            return None
        epoch_kv = epoch_kvs[0] if epoch_kvs else None
        epoch = _parse_epoch(epoch_kv, self.epoch_key) + 1
        sent_at = self._clock()
        lease = self.client.grant_lease(math.ceil(self.ttl_s))
        record = json.dumps({"holder": self.holder, "epoch": epoch}, sort_keys=True).encode()
        try:
            result = self.client.transaction(
                [
                    Compare.create_revision(self.leader_key, 0),
                    Compare.mod_revision(self.epoch_key, epoch_kv.mod_revision if epoch_kv else 0),
                ],
                [
                    Put(self.leader_key, record, lease=lease.lease_id),
                    Put(self.epoch_key, str(epoch).encode("ascii")),
                ],
            )
        except BaseException:
            # Unknown outcome: revoking deletes the leader key if it was written,
            # and the epoch it consumed is simply never used.
            self._revoke_quietly(lease.lease_id)
            raise
        if not result.succeeded:
            self._revoke_quietly(lease.lease_id)
            return None
        leadership = Leadership(
            election=self,
            epoch=epoch,
            lease_id=lease.lease_id,
            create_revision=result.revision,
            deadline=LeaseDeadline.granted(self.ttl_s, sent_at, lease.ttl_s),
            clock=self._clock,
        )
        leadership._start()
        return leadership

    def campaign(self, timeout_s: float | None = None) -> Leadership:
        """Block until this holder is leader and return its `Leadership`.

        Waits on a watch of the leader key (re-checking every ttl/2 in case the
        watch stream broke). Transient etcd outages are ridden out until the
        timeout. Raises `CampaignTimeout` when `timeout_s` elapses first.
        """
        deadline = None if timeout_s is None else self._clock() + timeout_s
        changed = threading.Event()
        watch_broken = threading.Event()

        def on_watch_error(_error: EtcdError) -> None:
            watch_broken.set()
            changed.set()

        watch: WatchHandle | None = None
        last_error: EtcdError | None = None
        try:
            while True:
                changed.clear()
                try:
                    if watch is None or watch_broken.is_set():
                        if watch is not None:
                            watch.cancel()
                            watch = None
                        watch_broken.clear()
                        # Created before reading, so no change after the read is missed.
                        watch = self.client.watch_key(
                            self.leader_key, lambda _event: changed.set(), on_error=on_watch_error
                        )
                    leadership = self.try_acquire()
                    if leadership is not None:
                        return leadership
                    last_error = None
                except EtcdError as exc:
                    last_error = exc
                    if watch is not None:
                        watch.cancel()
                        watch = None
                wait_s = self.ttl_s / 2
                if deadline is not None:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        assert timeout_s is not None
                        raise CampaignTimeout(self.resource, self.holder, timeout_s) from last_error
                    wait_s = min(wait_s, remaining)
                changed.wait(wait_s)
        finally:
            if watch is not None:
                watch.cancel()

    def _revoke_quietly(self, lease_id: int) -> None:
        with contextlib.suppress(EtcdError):
            self.client.revoke_lease(lease_id, timeout_s=min(self.client.timeout_s, self.ttl_s))


class Leadership:
    """Proof that a holder leads a resource under a fencing epoch, while `is_valid()`.

    Created by `LeaderElection`. A daemon thread renews the lease every ttl/3.
    Leadership is lost for good when a renewal is not acknowledged before the
    deadline, when etcd answers that the lease is gone (TTL 0), when the
    leader key is deleted or replaced, when a fenced write is refused, or on
    `resign()`. Then `is_valid()` is False, `on_lost` callbacks run once (on an
    internal thread: keep them short), and fenced writes raise `FencedOut`.
    To lead again, campaign again: the new reign gets a new epoch.
    """

    def __init__(
        self,
        *,
        election: LeaderElection,
        epoch: int,
        lease_id: int,
        create_revision: int,
        deadline: LeaseDeadline,
        clock: Clock,
    ) -> None:
        self._election = election
        self._client = election.client
        self.resource = election.resource
        self.holder = election.holder
        self.epoch = epoch
        self.lease_id = lease_id
        self.create_revision = create_revision
        self.ttl_s = election.ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._deadline = deadline
        self._lost_reason: str | None = None
        self._lost = threading.Event()
        self._callbacks_done = threading.Event()
        self._stop = threading.Event()
        self._resigned = False
        self._callbacks: list[Callable[[], None]] = []
        self._watch: WatchHandle | None = None
        self._thread = threading.Thread(
            target=self._keep_alive,
            name=f"resilience-lease-{self.resource}-{epoch}",
            daemon=True,
        )

    def __repr__(self) -> str:
        state = "valid" if self.is_valid() else f"lost: {self._lost_reason or 'lease expired'}"
        return f"Leadership({self.resource!r}, holder={self.holder!r}, epoch={self.epoch}, {state})"

    @property
    def lease_deadline(self) -> float:
        """Clock time at which the holder must consider its lease gone, unless renewed."""
        return self._deadline.expires_at

    @property
    def lost_reason(self) -> str | None:
        """Why leadership was lost, or None while it holds."""
        if self._lost_reason is None and not self._deadline.is_alive(self._clock()):
            return "lease not renewed within its ttl"
        return self._lost_reason

    def is_valid(self) -> bool:
        """True while the holder can prove its lease is alive and nothing deposed it."""
        return not self._lost.is_set() and self._deadline.is_alive(self._clock())

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once when leadership is lost (at once if it already is)."""
        with self._lock:
            if not self._lost.is_set():
                self._callbacks.append(callback)
                return
        _run_callback(callback)

    def wait_lost(self, timeout_s: float | None = None) -> bool:
        """Block until leadership is lost and the `on_lost` callbacks have run; False on timeout."""
        return self._callbacks_done.wait(timeout_s)

    def resign(self) -> None:
        """Give up leadership now: callbacks run, then the lease is revoked. Idempotent.

        If etcd does not answer, the lease expires by itself within its TTL.
        """
        with self._lock:
            if self._resigned:
                return
            self._resigned = True
        self._mark_lost("resigned")
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.ttl_s)
        self._election._revoke_quietly(self.lease_id)

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.resign()

    def fenced_txn(
        self,
        puts: Mapping[str, bytes] | None = None,
        deletes: Iterable[str] = (),
        compares: Sequence[Compare] = (),
    ) -> int | None:
        """Apply `puts` and `deletes` atomically, only while this reign is current.

        Returns the commit revision, or None when one of the caller's own
        `compares` failed (the fence held). Raises `FencedOut` when the epoch
        is no longer current, the leader key is no longer ours, or the holder
        cannot prove its lease is alive; leadership is then lost. Raises
        `EtcdUnavailable` when etcd does not answer (the write may have been
        applied; retrying is safe because the retry is fenced again).
        """
        if not self.is_valid():
            raise self._fenced_out(current=self._read_current_epoch())
        election = self._election
        fence = [
            Compare.value(election.epoch_key, str(self.epoch).encode("ascii")),
            Compare.create_revision(election.leader_key, self.create_revision),
            Compare.lease(election.leader_key, self.lease_id),
        ]
        writes: list[TxnOp] = [Put(key, value) for key, value in (puts or {}).items()]
        writes.extend(Delete(key) for key in deletes)
        result = self._client.transaction(
            [*fence, *compares],
            writes,
            [Get(election.epoch_key), Get(election.leader_key)],
        )
        if result.succeeded:
            return result.revision
        epoch_kvs, leader_kvs = result.reads
        current = _parse_epoch(epoch_kvs[0] if epoch_kvs else None, election.epoch_key)
        leader = leader_kvs[0] if leader_kvs else None
        fence_holds = (
            current == self.epoch
            and leader is not None
            and leader.create_revision == self.create_revision
            and leader.lease == self.lease_id
        )
        if fence_holds:
            return None
        self._mark_lost(f"fenced out by epoch {current}")
        raise self._fenced_out(current=current)

    def fenced_put(self, key: str, value: bytes) -> int:
        """`fenced_txn` of one put; returns the commit revision or raises `FencedOut`."""
        revision = self.fenced_txn(puts={key: value})
        assert revision is not None  # no caller compares, so only the fence can fail
        return revision

    # -- machinery --------------------------------------------------------------

    def _fenced_out(self, current: int | None) -> FencedOut:
        return FencedOut(self.resource, self.epoch, current)

    def _read_current_epoch(self) -> int | None:
        # Only to fill in the error: a holder that already lost must not wait long.
        election = self._election
        try:
            kv = self._client.get(election.epoch_key, timeout_s=min(1.0, self.ttl_s / 3))
            return _parse_epoch(kv, election.epoch_key)
        except ResilienceError:
            return None

    def _start(self) -> None:
        # Deletion or replacement of the leader key deposes us at once, without
        # waiting for the next keep-alive; the keep-alive remains the authority.
        try:
            self._watch = self._client.watch_key(
                self._election.leader_key,
                self._on_leader_key_event,
                start_revision=self.create_revision + 1,
            )
        except EtcdError:
            _log.warning("%r: no watch on the leader key; relying on keep-alives", self)
        self._thread.start()

    def _on_leader_key_event(self, event: WatchEvent) -> None:
        if event.kind == "delete":
            self._mark_lost("leader key deleted (lease expired or revoked)")
        elif event.kv.create_revision != self.create_revision:
            self._mark_lost(f"leader key replaced at revision {event.kv.mod_revision}")

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            if self._lost.is_set():
                return
            self._lost_reason = reason
            self._lost.set()
            callbacks, self._callbacks = self._callbacks, []
        self._stop.set()
        if reason != "resigned":
            _log.warning(
                "%s: leadership of %s (epoch %s) lost: %s",
                self.holder,
                self.resource,
                self.epoch,
                reason,
            )
        try:
            for callback in callbacks:
                _run_callback(callback)
        finally:
            self._callbacks_done.set()

    def _keep_alive(self) -> None:
        interval = self.ttl_s / 3
        next_renewal = self._clock() + interval
        try:
            while not self._stop.is_set():
                now = self._clock()
                if not self._deadline.is_alive(now):
                    self._mark_lost("lease not renewed within its ttl (etcd unreachable?)")
                    break
                if now < next_renewal:
                    self._stop.wait(min(next_renewal, self._deadline.expires_at) - now)
                    continue
                sent_at = self._clock()
                # Never block past the deadline: loss must be noticed on time.
                timeout_s = max(0.05, min(interval, self._deadline.remaining(sent_at)))
                try:
                    ttl = self._client.keepalive_once(self.lease_id, timeout_s=timeout_s)
                except EtcdError as exc:
                    _log.info("%r: keep-alive failed (%s); retrying", self, exc)
                    next_renewal = self._clock() + min(interval, 0.25)
                    continue
                if ttl <= 0:
                    self._mark_lost("lease expired or revoked in etcd")
                    break
                with self._lock:
                    self._deadline = self._deadline.renewed(sent_at, ttl)
                next_renewal = sent_at + interval
        finally:
            if self._watch is not None:
                self._watch.cancel()
            if self._lost.is_set() and not self._resigned:
                # Free the leader key for the next holder now rather than at expiry.
                self._election._revoke_quietly(self.lease_id)


def _run_callback(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # noqa: BLE001 - one failing callback must not skip the others
        _log.exception("on_lost callback %r failed", callback)


def compare_and_swap(
    client: EtcdClient, key: str, expected_mod_revision: int, new_value: bytes
) -> int | None:
    """Write `new_value` only if `key` was last modified at `expected_mod_revision`.

    `expected_mod_revision` 0 means "only if the key does not exist". Returns
    the new mod_revision, or None when the key changed in the meantime.
    """
    if expected_mod_revision < 0:
        raise InvalidCoordinationArgument(
            f"expected_mod_revision must be >= 0, got {expected_mod_revision}"
        )
    result = client.transaction(
        [Compare.mod_revision(key, expected_mod_revision)], [Put(key, new_value)]
    )
    return result.revision if result.succeeded else None


def watch_prefix(
    client: EtcdClient, prefix: str, callback: Callable[[WatchEvent], None]
) -> Callable[[], None]:
    """Call `callback` for every put and delete under `prefix`; return a cancel function.

    See `EtcdClient.watch_prefix` for ordering and what happens if etcd restarts.
    """
    return client.watch_prefix(prefix, callback).cancel
