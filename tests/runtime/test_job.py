"""`@resilient.job`: identity and fenced leadership in etcd, a store for actors, hooks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from resilience import FailoverExhausted
from resilience._actors import resilient
from resilience._job import Job, current_job
from resilience.policies import escalate, restart

pytestmark = [pytest.mark.ray, pytest.mark.etcd]


def test_a_job_leads_under_an_epoch_and_records_its_state(
    tmp_path: Path, etcd_server: Any, ray_local: str
) -> None:
    seen: dict[str, Any] = {}

    @resilient.job(name="limits-job", workdir=tmp_path, etcd=etcd_server.endpoint)
    def main(job: Job) -> int:
        assert current_job() is job
        seen["epoch"] = job.epoch
        record = json.loads(job.client.get("/resilience/jobs/limits-job/driver").value)
        seen["state"] = record["state"]

        @resilient(failover=restart(max=3))
        class Limits:
            def __init__(self) -> None:
                self.used = 0

            def spend(self, amount: int) -> int:
                self.used += amount
                return self.used

        limits = Limits.remote()
        return int(limits.spend.call(5) + limits.spend.call(7))

    assert main() == 17
    assert seen["state"] == "running"
    assert seen["epoch"] >= 1
    assert (tmp_path / "actors").is_dir()  # the job's actors keep their state under it
    assert current_job() is None
    # A second run of the same job leads under a newer epoch, and the record says finished.
    again: dict[str, Any] = {}

    @resilient.job(name="limits-job", workdir=tmp_path, etcd=etcd_server.endpoint)
    def second(job: Job) -> None:
        again["epoch"] = job.epoch

    second()
    assert again["epoch"] > seen["epoch"]
    from resilience.coordination._client import EtcdClient

    with EtcdClient(etcd_server.endpoint) as client:
        record = json.loads(client.get("/resilience/jobs/limits-job/driver").value)
    assert record["state"] == "finished"


def test_an_actor_escalates_to_its_job(tmp_path: Path, etcd_server: Any, ray_local: str) -> None:
    escalations: list[tuple[str, str]] = []

    @resilient.job(name="escalating", workdir=tmp_path, etcd=etcd_server.endpoint)
    def main(job: Job) -> str:
        job.on_escalate(lambda actor, reason: escalations.append((actor, reason)))

        @resilient(failover=restart(max=1) | escalate())
        class Fragile:
            def __init__(self) -> None:
                self.n = 0

            def bump(self) -> int:
                self.n += 1
                return self.n

        handle = Fragile.options(name="fragile").remote()
        handle.bump.call()
        for _ in range(2):
            os.kill(resilient.ping(handle)["pid"], signal.SIGKILL)
            try:
                handle.bump.call()
            except FailoverExhausted as e:
                return str(e)
        return "no escalation"

    message = main()
    assert "restart budget of 1 spent" in message
    assert [actor for actor, _ in escalations] == ["fragile"]
    assert "restart budget of 1 spent" in escalations[0][1]


def test_bad_job_options_fail_at_decoration() -> None:
    with pytest.raises(ValueError, match="must be a non-empty word"):
        resilient.job(name="a/b")
    with pytest.raises(ValueError, match="lease_ttl_s"):
        resilient.job(name="ok", lease_ttl_s=1)
