"""This site's part in a replicated job, for the job's coordinator (`SiteRole`).

A job with a `ReplicationConfig` runs on two sites; both run the whole pipeline, and
the coordinator of each campaigns for the job's one leadership in etcd:

* **standby** while the other site leads: `wait_for_leadership` campaigns, reports
  what this site's receiver holds, keeps out of a switchover addressed to the other
  site, and ends when the job finished (or failed) on the other site;
* **active** once it leads: `on_lead` fences this site's receiver, names itself in
  etcd and says what kind of reign begins (a fresh start, the same site again, a
  failover, a switchover); `plan_takeover` says which checkpoint to restore and which
  complete checkpoints the old site took with it (none in sync mode); then every
  completed checkpoint goes to the `Shipper`, and the `SyncGate` says when it may
  commit.

Decisions stay in `resilience.replication._policy`; this module carries them out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from checkpoint import CheckpointError, CheckpointStore, FencedOut, Manifest
from resilience._errors import EtcdError
from resilience._runtime._registry import CheckpointRecord, CheckpointRegistry
from resilience._runtime._spec import PipelineSpec
from resilience.coordination._election import Leadership
from resilience.replication._config import ReplicationConfig
from resilience.replication._policy import SyncGate, lost_on_takeover, switchover_refusal
from resilience.replication._registry import Handover, ReplicationRegistry
from resilience.replication._shipper import Shipper

__all__ = ["SiteRole", "receiver_name"]

log = logging.getLogger(__name__)

_PUBLISH_EVERY_S = 1.0
_FINISH_WAIT_S = 30.0


def receiver_name(spec: PipelineSpec) -> str:
    return f"{spec.job_id}/replica"


class SiteRole:
    """See the module docstring. Used from the coordinator's control thread only, except
    `on_ack`, which the shipper calls from its thread (it only posts an event)."""

    def __init__(self, spec: PipelineSpec, *, registry: CheckpointRegistry,
                 store: CheckpointStore, post: Callable[[tuple[Any, ...]], None],
                 export_copies: Callable[[Path], Mapping[str, Path]]) -> None:
        assert spec.replication is not None
        self.spec = spec
        self.config: ReplicationConfig = spec.replication
        self.site = self.config.site
        self.registry = registry
        self.replication = ReplicationRegistry(registry.client, spec.job_id)
        self.store = store
        self.post = post
        self.export_copies = export_copies
        self.gate = SyncGate(self.config.mode, self.config.on_standby_loss,
                             self.config.standby_timeout_s, clock=time.monotonic)
        self.shipper: Shipper | None = None
        self.kind = "start"
        self.previous_site: str | None = None
        self.takeover: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._receiver_status: dict[str, Any] = {}
        self._receiver_polled = 0.0
        self._published = 0.0
        self._transitions_seen = 0
        self._handover_polled = 0.0

    # -- the receiver on this site ------------------------------------------------------

    def _receiver_handle(self) -> Any:
        if self._receiver is None:
            self._receiver = ray.get_actor(receiver_name(self.spec),
                                           namespace=self.spec.namespace)
        return self._receiver

    def receiver_status(self, max_age_s: float = 0.5) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._receiver_polled >= max_age_s:
            self._receiver_polled = now
            try:
                self._receiver_status = dict(ray.get(
                    self._receiver_handle().status.remote(), timeout=2.0))
            except (RayError, ValueError) as e:
                self._receiver_status = {**self._receiver_status, "error": str(e)[:200]}
        return self._receiver_status

    def note(self, kind: str, message: str) -> None:
        """An event of this site's replication (the status and the logs show them)."""
        log.warning("site %s: %s", self.site, message)
        self.events = [*self.events[-99:], {"at": time.time(), "kind": kind,
                                             "message": message}]

    # -- standby ------------------------------------------------------------------------

    def may_campaign(self, handover: Handover | None) -> bool:
        """Not while a switchover in progress hands the job to the other site."""
        if handover is None or not handover.open or handover.expired():
            return True
        return handover.target == self.site

    def wait_for_leadership(self, campaign: Callable[[float], Leadership | None],
                            stop: threading.Event, set_status: Callable[..., None]
                            ) -> Leadership | str | None:
        """Campaign until this site leads (its `Leadership`), the job ended elsewhere (a
        line saying how), or `stop` is set (None)."""
        while not stop.is_set():
            try:
                handover = self.replication.handover()
                active = self.replication.active_site()
                ended = self._ended_elsewhere(active)
            except EtcdError as e:
                log.warning("site %s: etcd: %s", self.site, e)
                stop.wait(0.5)
                continue
            if ended is not None:
                return ended
            if self.may_campaign(handover) and not self._waits_for_primary(active) \
                    and not self._job_over():
                won = campaign(1.0)
                if won is not None:
                    # The other site may have ended the job just before it let go.
                    ended = self._ended_elsewhere(self.replication.active_site())
                    if ended is None:
                        return won
                    won.resign()
                    return ended
            else:
                stop.wait(0.3)
            leader = None if active is None else active.get("site")
            if leader == self.site:
                leader = None  # our own earlier reign: nobody leads now
            state = "standby" if leader or self._waits_for_primary(active) else "electing"
            set_status(state=state, role="standby", active_site=leader,
                       replica=self.receiver_status())
        return None

    def _waits_for_primary(self, active: dict[str, Any] | None) -> bool:
        """A job nobody has led yet starts on its primary site (when the sites file names
        one); any site may take over once it has run."""
        primary = self.config.primary
        return active is None and primary is not None and primary != self.site

    def _job_over(self) -> bool:
        """The job finished or failed (on any site): nothing is left to lead. A standby
        that has not caught up waits for the rest instead (`_ended_elsewhere`)."""
        state = self.registry.state()
        return state is not None and state.get("state") in ("finished", "failed")

    def _ended_elsewhere(self, active: dict[str, Any] | None) -> str | None:
        state = self.registry.state()
        if state is None or state.get("state") not in ("finished", "failed"):
            return None
        if active is not None and active.get("site") == self.site:
            return None  # our own reign's end: not ours to judge here
        where = "elsewhere" if active is None else f"at site {active.get('site')}"
        if state["state"] == "failed":
            return f"the job failed {where}: {state.get('reason', '')}"
        final = int(state.get("checkpoint_id", 0))
        committed = int(self.receiver_status(0.0).get("committed_through", 0))
        if committed >= final:
            return f"the job finished {where}; this site holds it up to checkpoint {committed}"
        since = float(state.get("at", 0.0) or 0.0)
        if since and time.time() - since > _FINISH_WAIT_S:
            return (f"the job finished {where}; this site holds it only up to checkpoint "
                    f"{committed} of {final}")
        return None

    # -- becoming active ----------------------------------------------------------------

    def on_lead(self, leadership: Leadership) -> str:
        """This site leads under `leadership`: fence the receiver, name this site active.

        Returns the kind of reign: ``start``, ``restart`` (this site again),
        ``failover`` or ``switchover`` (from the other site).
        """
        try:
            ray.get(self._receiver_handle().fence.remote(leadership.epoch), timeout=10.0)
        except (RayError, ValueError) as e:
            # The sinks' own fence (their epoch, raised by the restore) still refuses a
            # deposed site's rows; say that the receiver could not be told.
            self.note("fence", f"the receiver could not be fenced at once: {e}")
        previous = self.replication.active_site()
        handover = self.replication.handover()
        self.previous_site = None if previous is None else str(previous.get("site"))
        if previous is None:
            kind = "start"
        elif self.previous_site == self.site:
            kind = "restart"
        elif handover is not None and handover.open and handover.target == self.site \
                and handover.state == "ready":
            kind = "switchover"
        else:
            kind = "failover"
        self.kind = kind
        self.replication.set_active(leadership, self.site, kind)
        if handover is not None and handover.open:
            if kind == "switchover":
                self.move_handover(leadership, handover, "done",
                                    reason=f"site {self.site} took over under epoch "
                                           f"{leadership.epoch}")
            elif kind == "failover":
                self.move_handover(leadership, handover, "superseded",
                                    reason=f"site {self.previous_site} was lost during the "
                                           f"switchover; site {self.site} took over")
            elif handover.source == self.site:
                self.move_handover(leadership, handover, "rolled_back",
                                    reason=f"site {handover.target} did not take over within "
                                           f"{handover.timeout_s:g}s; site {self.site} "
                                           "leads again")
        if kind == "failover":
            self.gate.start_unprotected(f"took over from site {self.previous_site}: "
                                        "RPO 0 holds again once it caught up as the standby")
        self.note("lead", f"leads the job under epoch {leadership.epoch} ({kind}"
                  + (f" from site {self.previous_site})" if kind in ("failover", "switchover")
                     else ")"))
        return kind

    def plan_takeover(self, leadership: Leadership, records: Sequence[CheckpointRecord]
                      ) -> tuple[list[CheckpointRecord], int]:
        """The records to restore from, and the highest checkpoint id ever used.

        A site taking over (failover) restores the newest complete checkpoint it holds;
        complete checkpoints after it are lost with the old site (they can only exist
        when the old site committed without this one: async mode, or degraded). Their
        records are dropped and the loss is recorded, so it is never silent.
        """
        highest = max((r.checkpoint_id for r in records), default=0)
        if self.kind not in ("failover", "switchover"):
            return list(records), highest
        held = set(self.store.list_checkpoints())
        restore, lost = lost_on_takeover([r.checkpoint_id for r in records], sorted(held))
        by_id = {r.checkpoint_id: r for r in records}
        lost_events = 0
        if lost:
            lost_events = by_id[lost[-1]].watermark - (by_id[restore].watermark
                                                        if restore in by_id else 1)
            with contextlib.suppress(EtcdError, FencedOut):
                self.registry.forget(leadership, lost)
        self.takeover = {
            "kind": self.kind, "site": self.site, "from_site": self.previous_site,
            "restored_from": restore, "lost_checkpoints": lost,
            "lost_events": max(lost_events, 0), "mode": self.config.mode,
            "gate_before": self.gate.state,
            # When this site took over (just elected): kept as is when the record is
            # rewritten after the restore, so detection and restore are not counted twice.
            "at": time.time(),
        }
        with contextlib.suppress(EtcdError, FencedOut):
            self.replication.record_takeover(leadership, self.takeover)
        if lost:
            self.note("rpo", f"took over from checkpoint {restore}: checkpoints "
                      f"{lost[0]}..{lost[-1]} ({lost_events} events) committed at site "
                      f"{self.previous_site} never reached this site and are lost")
        return [r for r in records if r.checkpoint_id not in set(lost)], highest

    def start_shipping(self, leadership: Leadership, records: Sequence[CheckpointRecord]
                       ) -> None:
        """Ship this reign's checkpoints to the other site, starting from what it holds."""
        if self.shipper is not None:
            self.shipper.stop()
        held = set(self.store.list_checkpoints())
        chain: list[tuple[Manifest, int]] = []
        for record in records:
            if record.checkpoint_id in held:
                with contextlib.suppress(CheckpointError):
                    chain.append((self.store.get_manifest(record.checkpoint_id),
                                  record.watermark))
        self.shipper = Shipper(
            config=self.config, job_id=self.spec.job_id, epoch=leadership.epoch,
            store=self.store, workdir=self.spec.workdir, export_copies=self.export_copies,
            on_ack=lambda checkpoint_id: self.post(("replicated", checkpoint_id,
                                                    leadership.epoch)),
            on_event=lambda kind, message: self.post(("replication_event", kind, message)),
            chain=chain, chain_starts_the_job=not records)

    # -- switchover ----------------------------------------------------------------------

    def move_handover(self, leadership: Leadership, handover: Handover, state: str,
                       **changes: Any) -> Handover:
        moved = handover.moved(state, **changes)
        with contextlib.suppress(EtcdError, FencedOut):
            self.replication.update_handover(leadership, moved)
        self.note("switchover", f"switchover {handover.id} to site {handover.target}: {state}"
                  + (f" ({changes['reason']})" if changes.get("reason") else ""))
        return moved

    def pending_handover(self, leadership: Leadership, *, finishing: bool) -> Handover | None:
        """A switchover request addressed to this (active) site that may start now: the
        standby is connected and caught up. A request that may not is refused, with why."""
        now = time.monotonic()
        if now - self._handover_polled < 0.3:
            return None
        self._handover_polled = now
        try:
            handover = self.replication.handover()
        except EtcdError:
            return None
        if handover is None or handover.state != "requested" or handover.source != self.site:
            return None
        shipper = self.shipper
        lag = shipper.lag()["checkpoints"] if shipper is not None else None
        refusal = switchover_refusal(
            active_site=self.site, expected=None, target=handover.target,
            standby_site=self.config.peer,
            standby_connected=shipper is not None and shipper.status.connected,
            lag_checkpoints=lag, lag_budget=self.config.lag_budget_checkpoints,
            in_progress=None) or ("the job is finishing" if finishing else None)
        if refusal is not None:
            self.move_handover(leadership, handover, "refused", reason=refusal)
            return None
        return self.move_handover(leadership, handover, "draining")

    def handed_over(self, leadership: Leadership, handover: Handover, checkpoint_id: int
                    ) -> Handover:
        """The last checkpoint is committed on both sites: the other site may take over."""
        return self.move_handover(leadership, handover, "ready", checkpoint_id=checkpoint_id,
                                   epoch=leadership.epoch)

    # -- while active ---------------------------------------------------------------------

    def restore_finished(self, leadership: Leadership, duration_s: float) -> None:
        """A takeover's restore is done: the record says how long it took."""
        if self.takeover is not None and "restore_s" not in self.takeover:
            self.takeover = {**self.takeover, "restore_s": round(duration_s, 3),
                             "restored_at": time.time()}
            with contextlib.suppress(EtcdError, FencedOut):
                self.replication.record_takeover(leadership, self.takeover)

    def completed(self, checkpoint_id: int, manifest: Manifest, watermark: int) -> None:
        self.gate.completed(checkpoint_id)
        if self.shipper is not None:
            self.shipper.completed(checkpoint_id, manifest, watermark)

    def committed(self, checkpoint_id: int, manifest: Manifest, watermark: int) -> None:
        self.gate.committed(checkpoint_id)
        if self.shipper is not None:
            self.shipper.committed(checkpoint_id, manifest, watermark)

    def acked(self, checkpoint_id: int, epoch: int, leadership: Leadership | None) -> None:
        if leadership is not None and epoch == leadership.epoch:
            self.gate.acked(checkpoint_id)

    def restored(self, checkpoint_id: int) -> None:
        self.gate.dropped()
        if self.shipper is not None:
            self.shipper.restored(checkpoint_id)

    def pinned(self) -> set[int]:
        return self.shipper.pinned() if self.shipper is not None else set()

    def forget(self, deleted: set[int]) -> None:
        if deleted and self.shipper is not None:
            self.shipper.forget(deleted)

    def tick(self, leadership: Leadership | None) -> bool:
        """Apply the standby timeout and publish the state; True if the gate moved."""
        before = len(self.gate.transitions)
        self.gate.tick()
        moved = len(self.gate.transitions) > before
        for t in self.gate.transitions[self._transitions_seen:]:
            self.note("gate", f"replication {t.state}: {t.reason}")
        self._transitions_seen = len(self.gate.transitions)
        now = time.monotonic()
        if leadership is not None and (moved or now - self._published >= _PUBLISH_EVERY_S):
            self._published = now
            with contextlib.suppress(EtcdError, FencedOut):
                self.replication.publish_state(leadership, self.status())
        return moved

    def wait_standby_committed(self, checkpoint_id: int, stop: threading.Event) -> bool:
        """At the end of the job: give the standby time to commit the last checkpoint, so
        its ledger is complete too. False when it did not within the wait."""
        if self.shipper is None:
            return False
        deadline = time.monotonic() + max(self.config.standby_timeout_s * 5, 10.0)
        while time.monotonic() < deadline and not stop.is_set():
            status = self.shipper.status
            if status.standby_committed >= checkpoint_id:
                return True
            if not status.connected and self.gate.state != "protected":
                return False
            stop.wait(0.05)
        return False

    def status(self) -> dict[str, Any]:
        shipper = self.shipper
        return {
            "site": self.site, "peer": self.config.peer, "mode": self.config.mode,
            "on_standby_loss": self.config.on_standby_loss, "gate": self.gate.state,
            "kind": self.kind, "takeover": self.takeover,
            "transitions": [t.__dict__ for t in self.gate.transitions[-20:]],
            "standby": None if shipper is None else {
                **{k: v for k, v in shipper.status.__dict__.items() if k != "events"},
                "lag": shipper.lag()},
            "events": self.events[-20:],
        }

    def stop(self) -> None:
        if self.shipper is not None:
            self.shipper.stop()
            self.shipper = None
