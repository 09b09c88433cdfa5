"""Leader election, fencing, CAS and watches. Every guarantee is checked on a real etcd."""

from __future__ import annotations

import pickle
import select
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from checkpoint._errors import FencedOut
from resilience.coordination._client import Compare, EtcdClient, WatchEvent
from resilience.coordination._election import (
    CampaignTimeout,
    InvalidCoordinationArgument,
    LeaderElection,
    Leadership,
    LeaseDeadline,
    compare_and_swap,
    watch_prefix,
)
from resilience.coordination._embedded import EmbeddedEtcd
from resilience.testing import wait_until

pytestmark = pytest.mark.timeout(60)

TTL_S = 2.0
# Scheduling slack when checking "within one TTL": thread wake-ups, not etcd.
SLACK_S = 0.5


def _election(
    client: EtcdClient, namespace: str, holder: str, ttl_s: float = TTL_S
) -> LeaderElection:
    return LeaderElection(client, "job", holder, ttl_s=ttl_s, namespace=namespace)


# -- pure logic, no etcd ---------------------------------------------------------------


def test_lease_deadline_counts_from_the_send_time_and_the_smaller_ttl() -> None:
    deadline = LeaseDeadline.granted(ttl_s=2.0, sent_at=100.0, granted_ttl_s=5)
    assert deadline.expires_at == 102.0  # etcd granted more; we trust what we asked for
    assert deadline.is_alive(101.999)
    assert not deadline.is_alive(102.0)
    renewed = deadline.renewed(sent_at=101.5, granted_ttl_s=1)
    assert renewed.expires_at == 102.5  # etcd answered with less: believe it
    assert renewed.remaining(102.0) == pytest.approx(0.5)
    assert renewed.remaining(200.0) == 0.0


def test_lease_deadline_never_moves_backwards() -> None:
    deadline = LeaseDeadline.granted(ttl_s=3.0, sent_at=10.0, granted_ttl_s=3)
    late_answer_to_an_old_send = deadline.renewed(sent_at=9.0, granted_ttl_s=3)
    assert late_answer_to_an_old_send.expires_at == 13.0


class _UnusedClient:
    """Stands in for EtcdClient where validation must fail before any call."""


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resource": "a b"}, "resource name"),
        ({"resource": "/abs"}, "resource name"),
        ({"holder": ""}, "holder"),
        ({"ttl_s": 0.5}, "at least 1 second"),
        ({"ttl_s": float("nan")}, "at least 1 second"),
        ({"namespace": "relative"}, "namespace"),
    ],
)
def test_election_rejects_bad_configuration(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"resource": "job", "holder": "a", "ttl_s": 5.0}
    arguments.update(kwargs)
    namespace = arguments.pop("namespace", "/resilience")
    with pytest.raises(InvalidCoordinationArgument, match=match):
        LeaderElection(_UnusedClient(), namespace=namespace, **arguments)  # type: ignore[arg-type]


def test_campaign_timeout_pickles() -> None:
    error = CampaignTimeout("job", "a", 1.5)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.resource, copy.holder, copy.timeout_s, str(copy)) == ("job", "a", 1.5, str(error))
    assert isinstance(copy, TimeoutError)


# -- leader election on the session's etcd ------------------------------------------------


@pytest.mark.etcd
def test_one_leader_at_a_time_and_epochs_start_at_one(
    etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    first = _election(etcd_client, etcd_prefix, "a")
    second = _election(etcd_client, etcd_prefix, "b")
    assert first.current_epoch() == 0
    assert first.current_leader() is None
    with first.campaign(timeout_s=5) as leadership:
        assert (leadership.epoch, leadership.holder) == (1, "a")
        assert leadership.is_valid()
        leader = second.current_leader()
        assert leader is not None
        assert (leader.holder, leader.epoch, leader.lease_id) == ("a", 1, leadership.lease_id)
        assert second.try_acquire() is None
        with pytest.raises(CampaignTimeout, match="b did not become leader"):
            second.campaign(timeout_s=0.5)
    assert first.current_leader() is None
    assert first.current_epoch() == 1


@pytest.mark.etcd
def test_waiting_contender_is_woken_by_the_watch_not_by_polling(
    etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    # A long TTL makes the safety re-check (every ttl/2 = 10 s) far slower than the assertion.
    first = _election(etcd_client, etcd_prefix, "a", ttl_s=20)
    second = _election(etcd_client, etcd_prefix, "b", ttl_s=20)
    leadership = first.campaign(timeout_s=5)
    attempted = threading.Event()
    try_acquire = second.try_acquire

    def observed_attempt() -> Leadership | None:
        result = try_acquire()
        attempted.set()
        return result

    second.try_acquire = observed_attempt  # type: ignore[method-assign]
    won: list[Leadership] = []
    waiter = threading.Thread(target=lambda: won.append(second.campaign(timeout_s=15)))
    waiter.start()
    try:
        # The contender lost its first attempt and now waits on its watch.
        assert attempted.wait(timeout=5)
        resigned_at = time.monotonic()
        leadership.resign()
        waiter.join(timeout=15)
        assert won, "the contender never became leader"
        assert time.monotonic() - resigned_at < 2.0
        assert won[0].epoch == leadership.epoch + 1
    finally:
        waiter.join(timeout=15)
        for reign in won:
            reign.resign()


@pytest.mark.etcd
def test_epochs_strictly_increase_across_successive_leaders(
    etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    contenders = [_election(etcd_client, etcd_prefix, holder) for holder in ("a", "b", "c")]
    epochs = []
    for round_number in range(6):
        with contenders[round_number % 3].campaign(timeout_s=5) as leadership:
            leadership.fenced_put(f"{etcd_prefix}/data", str(round_number).encode())
            epochs.append(leadership.epoch)
    assert epochs == [1, 2, 3, 4, 5, 6]


_LEADER_CHILD = """
    import sys, time
    from resilience.coordination._client import EtcdClient
    from resilience.coordination._election import LeaderElection
    client = EtcdClient(sys.argv[1])
    election = LeaderElection(client, "job", "child", ttl_s=float(sys.argv[3]),
                              namespace=sys.argv[2])
    leadership = election.campaign(timeout_s=10)
    print(leadership.epoch, flush=True)
    time.sleep(60)
"""


@pytest.mark.etcd
def test_epoch_increases_after_the_leader_process_is_killed(
    etcd_server: EmbeddedEtcd, etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    survivor = _election(etcd_client, etcd_prefix, "survivor")
    with survivor.campaign(timeout_s=5) as early:
        early_epoch = early.epoch
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_LEADER_CHILD),
            etcd_server.endpoint,
            etcd_prefix,
            str(TTL_S),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 20)
        assert ready, "the child never became leader"
        child_epoch = int(child.stdout.readline())
        assert child_epoch == early_epoch + 1
        child.kill()  # a crash: no resign, the lease just stops being renewed
        child.wait(timeout=5)
        killed_at = time.monotonic()
        with survivor.campaign(timeout_s=10) as leadership:
            # etcd expires the lease after the TTL (+ its 0.5 s expiry sweep).
            assert time.monotonic() - killed_at < TTL_S + 3.0
            assert leadership.epoch == child_epoch + 1
    finally:
        child.kill()
        child.wait()


# -- fencing ----------------------------------------------------------------------------


@pytest.mark.etcd
def test_revoked_lease_is_refused_by_a_fenced_write(
    etcd_server: EmbeddedEtcd, etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    leadership = _election(etcd_client, etcd_prefix, "a", ttl_s=30).campaign(timeout_s=5)
    leadership.fenced_put(f"{etcd_prefix}/data", b"first")
    with EtcdClient(etcd_server.endpoint) as operator:
        assert operator.revoke_lease(leadership.lease_id)
    # Whatever the holder believes locally, etcd refuses the write.
    with pytest.raises(FencedOut, match="fencing epoch 1 is stale") as refused:
        leadership.fenced_put(f"{etcd_prefix}/data", b"second")
    assert (refused.value.resource, refused.value.epoch, refused.value.current) == ("job", 1, 1)
    assert not leadership.is_valid()
    kv = etcd_client.get(f"{etcd_prefix}/data")
    assert kv is not None
    assert kv.value == b"first"
    leadership.resign()


@pytest.mark.etcd
def test_deposed_leader_is_fenced_out_by_the_new_epoch(
    etcd_server: EmbeddedEtcd, etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    old = _election(etcd_client, etcd_prefix, "old", ttl_s=30).campaign(timeout_s=5)
    # The old holder's keep-alives and watch stop seeing etcd: simulate with a second
    # client that revokes its lease, as etcd would at expiry.
    with EtcdClient(etcd_server.endpoint) as other:
        other.revoke_lease(old.lease_id)
        new = LeaderElection(other, "job", "new", ttl_s=30, namespace=etcd_prefix)
        with new.campaign(timeout_s=5) as current:
            assert current.epoch == old.epoch + 1
            with pytest.raises(FencedOut) as refused:
                old.fenced_txn(puts={f"{etcd_prefix}/data": b"stale"})
            assert refused.value.current == current.epoch
            assert current.fenced_put(f"{etcd_prefix}/data", b"fresh") > 0
    kv = etcd_client.get(f"{etcd_prefix}/data")
    assert kv is not None
    assert kv.value == b"fresh"
    old.resign()


@pytest.mark.etcd
def test_fenced_txn_is_atomic_and_reports_failed_caller_compares(
    etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    with _election(etcd_client, etcd_prefix, "a").campaign(timeout_s=5) as leadership:
        a, b = f"{etcd_prefix}/a", f"{etcd_prefix}/b"
        etcd_client.put(b, b"old")
        revision = leadership.fenced_txn(puts={a: b"1"}, deletes=[b])
        assert revision is not None
        kv = etcd_client.get(a)
        assert kv is not None
        assert kv.mod_revision == revision
        assert etcd_client.get(b) is None

        stale = leadership.fenced_txn(
            puts={a: b"2"}, compares=[Compare.mod_revision(a, revision - 1)]
        )
        assert stale is None  # the caller's compare failed, the fence held
        assert leadership.is_valid()
        kv = etcd_client.get(a)
        assert kv is not None
        assert kv.value == b"1"


# -- loss detection -----------------------------------------------------------------------


@pytest.mark.etcd
def test_holder_detects_loss_within_one_ttl_when_etcd_stops_answering(tmp_path: Path) -> None:
    with (
        EmbeddedEtcd(tmp_path / "etcd") as server,
        EtcdClient(server.endpoint, timeout_s=1.0) as client,
    ):
        leadership = LeaderElection(client, "job", "a", ttl_s=TTL_S).campaign(timeout_s=5)
        lost_at: list[float] = []
        leadership.on_lost(lambda: lost_at.append(time.monotonic()))
        # Let at least one keep-alive succeed, so the deadline moved past the grant.
        granted_deadline = leadership.lease_deadline
        wait_until(lambda: leadership.lease_deadline > granted_deadline, timeout_s=TTL_S)
        server.pause()
        paused_at = time.monotonic()
        try:
            # The deadline counts from a keep-alive sent before the pause.
            assert leadership.lease_deadline <= paused_at + TTL_S
            assert leadership.wait_lost(timeout_s=TTL_S + 2)
            assert lost_at
            assert lost_at[0] - paused_at <= TTL_S + SLACK_S
            assert not leadership.is_valid()
            assert "ttl" in (leadership.lost_reason or "")
            with pytest.raises(FencedOut) as refused:
                leadership.fenced_put("/data", b"x")
            assert refused.value.current is None  # etcd is not answering
        finally:
            server.resume()
        leadership.resign()


@pytest.mark.etcd
def test_holder_detects_revocation_quickly_and_callbacks_run_once(
    etcd_server: EmbeddedEtcd, etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    leadership = _election(etcd_client, etcd_prefix, "a").campaign(timeout_s=5)
    calls: list[str] = []
    leadership.on_lost(lambda: calls.append("first"))

    def failing() -> None:
        calls.append("failing")
        raise RuntimeError("callback bug")

    leadership.on_lost(failing)
    leadership.on_lost(lambda: calls.append("last"))
    with EtcdClient(etcd_server.endpoint) as operator:
        revoked_at = time.monotonic()
        operator.revoke_lease(leadership.lease_id)
    assert leadership.wait_lost(timeout_s=TTL_S + 1)
    # The requirement is "within one TTL"; the keep-alive (every TTL/3) usually sees it sooner.
    assert time.monotonic() - revoked_at < TTL_S + SLACK_S
    assert not leadership.is_valid()
    leadership.resign()  # losing and resigning do not run the callbacks twice
    assert calls == ["first", "failing", "last"]
    leadership.on_lost(lambda: calls.append("late"))
    assert calls[-1] == "late"


@pytest.mark.etcd
def test_resign_frees_the_lease_and_invalidates(etcd_client: EtcdClient, etcd_prefix: str) -> None:
    election = _election(etcd_client, etcd_prefix, "a")
    leadership = election.campaign(timeout_s=5)
    lease_id = leadership.lease_id
    leadership.resign()
    leadership.resign()
    assert not leadership.is_valid()
    assert leadership.lost_reason == "resigned"
    assert election.current_leader() is None
    assert etcd_client.lease_time_to_live(lease_id) == -1
    with pytest.raises(FencedOut):
        leadership.fenced_put(f"{etcd_prefix}/data", b"x")


@pytest.mark.etcd
def test_leadership_renews_past_its_ttl(etcd_client: EtcdClient, etcd_prefix: str) -> None:
    with _election(etcd_client, etcd_prefix, "a").campaign(timeout_s=5) as leadership:
        first_deadline = leadership.lease_deadline
        wait_until(
            lambda: leadership.lease_deadline > first_deadline + TTL_S / 2, timeout_s=TTL_S * 2
        )
        assert leadership.is_valid()
        assert leadership.fenced_put(f"{etcd_prefix}/data", b"x") > 0


# -- compare-and-swap and watches -------------------------------------------------------------


@pytest.mark.etcd
def test_compare_and_swap_on_mod_revision(etcd_client: EtcdClient, etcd_prefix: str) -> None:
    key = f"{etcd_prefix}/cas"
    created = compare_and_swap(etcd_client, key, 0, b"v1")
    assert created is not None
    assert compare_and_swap(etcd_client, key, 0, b"again") is None  # exists already
    swapped = compare_and_swap(etcd_client, key, created, b"v2")
    assert swapped is not None
    assert swapped > created
    assert compare_and_swap(etcd_client, key, created, b"stale") is None
    kv = etcd_client.get(key)
    assert kv is not None
    assert (kv.value, kv.mod_revision) == (b"v2", swapped)
    with pytest.raises(InvalidCoordinationArgument):
        compare_and_swap(etcd_client, key, -1, b"x")


@pytest.mark.etcd
def test_watch_delivers_puts_and_deletes_in_order_until_cancelled(
    etcd_client: EtcdClient, etcd_prefix: str
) -> None:
    seen: list[WatchEvent] = []
    witness: list[WatchEvent] = []
    cancel = watch_prefix(etcd_client, f"{etcd_prefix}/w/", seen.append)
    witness_handle = etcd_client.watch_prefix(f"{etcd_prefix}/w/", witness.append)
    try:
        etcd_client.put(f"{etcd_prefix}/w/1", b"a")
        etcd_client.put(f"{etcd_prefix}/elsewhere", b"ignored")
        etcd_client.put(f"{etcd_prefix}/w/1", b"b")
        etcd_client.delete(f"{etcd_prefix}/w/1")
        wait_until(lambda: len(seen) >= 3, timeout_s=5)
        assert [(event.kind, event.key, event.kv.value) for event in seen] == [
            ("put", f"{etcd_prefix}/w/1", b"a"),
            ("put", f"{etcd_prefix}/w/1", b"b"),
            ("delete", f"{etcd_prefix}/w/1", b""),
        ]
        revisions = [event.kv.mod_revision for event in seen]
        assert revisions == sorted(revisions)

        cancel()
        cancel()
        etcd_client.put(f"{etcd_prefix}/w/2", b"after")
        wait_until(lambda: len(witness) >= 4, timeout_s=5)
        assert len(seen) == 3
    finally:
        witness_handle.cancel()


@pytest.mark.etcd
def test_watch_can_resume_from_a_revision(etcd_client: EtcdClient, etcd_prefix: str) -> None:
    first = etcd_client.put(f"{etcd_prefix}/r/1", b"x")
    etcd_client.put(f"{etcd_prefix}/r/2", b"y")
    seen: list[WatchEvent] = []
    handle = etcd_client.watch_prefix(f"{etcd_prefix}/r/", seen.append, start_revision=first)
    try:
        wait_until(lambda: len(seen) >= 2, timeout_s=5)
        assert [event.key for event in seen] == [f"{etcd_prefix}/r/1", f"{etcd_prefix}/r/2"]
    finally:
        handle.cancel()
