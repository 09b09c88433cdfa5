"""The fraud model in the real payments job, on real Ray and etcd: labels arrive as their
own file, poisoned for a stretch; the gate rolls the bad versions back and rewinds the
learner; a healthy run rolls nothing back; a run whose workers are SIGKILLed produces the
same scores, versions and registry as a crash-free one.

The verdicts read the ledger with plain SQL and the registry as raw etcd keys and JSON
(not through `ModelRegistry`), and the exactly-once verdict comes from the payments
checker, which shares no code with the job.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fusion_jobs.payments.checker import verify
from fusion_jobs.payments.generator import LabelPoison, generate, generate_labels
from fusion_jobs.payments.job import PaymentsOptions, payments_pipeline
from resilience import EtcdClient
from resilience.models import BookConfig
from resilience.pipeline import PipelineRunner
from resilience.testing import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.etcd]

EVENTS = 40_000
POISON = LabelPoison(0.35, 0.65, 0.3)
CONFIG = BookConfig()  # the defaults: what a user gets


def _input(root: Path, *, poison: LabelPoison | None, seed: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "payments.jsonl"
    generate(path, events=EVENTS, accounts=2_000, seed=seed)
    stats = generate_labels(path, seed=seed, poison=poison)
    assert (stats.poisoned > 0) == (poison is not None)
    return path


def _run(input_path: Path, workdir: Path, etcd: str, job_id: str,
         chaos: Any = None) -> dict[str, Any]:
    spec = payments_pipeline(PaymentsOptions(
        input_path, workdir, parallelism=2, checkpoint_interval_s=0.3, job_id=job_id,
        models=CONFIG))
    errors: list[BaseException] = []
    with PipelineRunner(spec, etcd) as runner:
        thread = None
        if chaos is not None:
            def guarded() -> None:
                try:
                    chaos(runner)
                except BaseException as e:  # reported below
                    errors.append(e)

            thread = threading.Thread(target=guarded, daemon=True)
            thread.start()
        status = runner.wait(timeout_s=400)
        if thread is not None:
            thread.join(timeout=60)
    if errors:
        raise errors[0]
    return status


def _job_id(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.time_ns()}"


def _registry(etcd: str, job_id: str, model: str = "fraud") -> dict[str, Any]:
    """The registry of `model`, as raw etcd keys decoded here."""
    prefix = f"/resilience/jobs/{job_id}/models/{model}/"
    out: dict[str, Any] = {"versions": {}, "bad": {}, "aliases": {}, "history": []}
    with EtcdClient(etcd, timeout_s=10.0) as client:
        for kv in client.get_prefix(prefix):
            kind, _, name = kv.key.removeprefix(prefix).partition("/")
            doc = json.loads(kv.value)
            if kind == "versions":
                out["versions"][int(name)] = doc
            elif kind == "bad":
                out["bad"][int(name)] = doc
            elif kind == "aliases":
                out["aliases"][name] = doc
            elif kind == "history":
                out["history"].append(doc)
    out["history"].sort(key=lambda m: int(m["move_id"].rsplit("-", 1)[1]))
    return out


def _postings(workdir: Path) -> list[tuple[Any, ...]]:
    """(line, event id, account, delta, balance_after, score, model version, checkpoint)."""
    with sqlite3.connect(f"file:{workdir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        bounds = list(db.execute("SELECT last_rowid, ckpt FROM _resilience_commits "
                                 "ORDER BY last_rowid"))
        rows = list(db.execute("SELECT rowid, event_id, account, delta, balance_after, score, "
                               "model_version FROM postings ORDER BY rowid"))
    out, at = [], 0
    for rowid, *row in rows:
        while bounds[at][0] < rowid:
            at += 1
        out.append((int(row[0].removeprefix("tx-")), *row, bounds[at][1]))
    return out


def _quarantine(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "models_quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory, etcd_server: Any,
             ray_local: str) -> dict[str, Any]:
    """A crash-free run over poisoned labels: what every other run is compared with."""
    root = tmp_path_factory.mktemp("poisoned")
    input_path = _input(root, poison=POISON, seed=7)
    job_id = _job_id("poisoned")
    status = _run(input_path, root / "work", etcd_server.endpoint, job_id)
    return {"input": input_path, "workdir": root / "work", "job_id": job_id,
            "status": status, "registry": _registry(etcd_server.endpoint, job_id)}


def test_poisoned_labels_are_rolled_back_and_no_later_posting_carries_a_bad_version(
        poisoned: dict[str, Any]) -> None:
    registry, workdir = poisoned["registry"], poisoned["workdir"]
    verdict = verify(poisoned["input"], workdir)
    assert verdict.ok, verdict.summary()
    model = poisoned["status"]["models"]["fraud"]
    assert model["rollbacks"] >= 1, model
    # The checker held every posting's version against the job's history file...
    assert verdict.model_errors == 0
    assert verdict.rollbacks == model["rollbacks"]
    # ... and that history names exactly the versions etcd holds.
    history = [json.loads(line) for line in
               (workdir / "models_history.jsonl").read_text().splitlines()]
    assert sorted(e["version"] for e in history if e["kind"] == "publish") == sorted(
        registry["versions"])
    assert verdict.model_versions == len(registry["versions"])
    rollbacks = [m for m in registry["history"]
                 if m["alias"] == "serving" and m["why"].startswith("rolled back")]
    assert len(rollbacks) == model["rollbacks"]
    lines = EVENTS
    first_poisoned = int(POISON.start * lines)
    for move in rollbacks:
        assert move["by"] == "job"
        bad = move["evidence"]["marked_bad"]
        assert bad
        assert move["to_version"] < min(bad)
        # Rolled back while the poison lasted (plus the labels' delay), never before it.
        assert first_poisoned < move["evidence"]["position"] < POISON.end * lines + 2_000
        for v in bad:
            assert v in registry["bad"], (v, registry["bad"])
    assert registry["aliases"]["serving"]["version"] not in registry["bad"]

    postings = _postings(workdir)
    versions = registry["versions"]
    for _line, event_id, _, _, _, _, version, ckpt in postings:
        # Every version that scored a posting was published, at the latest with the
        # checkpoint that committed the posting.
        assert version in versions, (event_id, version)
        assert versions[version]["checkpoint_id"] <= ckpt, (event_id, version, ckpt)
    for move in rollbacks:
        bad, at = set(move["evidence"]["marked_bad"]), move["evidence"]["position"]
        late = [p for p in postings if p[0] > at and p[6] in bad]
        assert not late, f"{len(late)} postings after the rollback at line {at}: {late[:3]}"
    # The bad versions did serve for a while (the poison reached the scores), and the good
    # ones before and after them too.
    used = {p[6] for p in postings}
    assert used & set(registry["bad"])
    assert used - set(registry["bad"])


def test_a_rollback_rewinds_the_learner_and_quarantines_what_it_learned_since(
        poisoned: dict[str, Any]) -> None:
    registry = poisoned["registry"]
    versions = registry["versions"]
    quarantined = _quarantine(poisoned["workdir"])
    rollbacks = [m for m in registry["history"]
                 if m["alias"] == "serving" and m["why"].startswith("rolled back")]
    for move in rollbacks:
        good, bad = move["to_version"], move["evidence"]["marked_bad"]
        # The next version is trained from the good one, not from the bad lineage: its
        # parent is the good version and it learned exactly one publication's worth since.
        following = min(v for v in versions if v > max(bad))
        assert versions[following]["parent"] == good
        assert (versions[following]["trained_labels"]
                == versions[good]["trained_labels"] + CONFIG.publish_every)
        mine = [q for q in quarantined if q["rolled_back"] == bad]
        # What the bad lineage learned since the good version: every label, for review.
        # (the labels up to the newest bad version, and those learned after it before the
        # verdict, with the one that closed the failing window: at most a publication more)
        since = versions[max(bad)]["trained_labels"] - versions[good]["trained_labels"]
        assert since < len(mine) <= since + CONFIG.publish_every, (len(mine), since)
        assert all(q["model"] == "fraud" and isinstance(q["label"], bool) for q in mine)
    assert len(quarantined) == poisoned["status"]["models"]["fraud"]["quarantined"]


def test_a_healthy_run_over_many_windows_rolls_nothing_back(
        tmp_path: Path, etcd_server: Any) -> None:
    input_path = _input(tmp_path, poison=None, seed=11)
    job_id = _job_id("healthy")
    status = _run(input_path, tmp_path / "work", etcd_server.endpoint, job_id)
    model = status["models"]["fraud"]
    assert model["windows"] >= 20, model  # the gate judged, many times
    assert model["rollbacks"] == 0, model["verdicts"]
    registry = _registry(etcd_server.endpoint, job_id)
    assert not registry["bad"]
    assert not _quarantine(tmp_path / "work")
    # Versions were confirmed along the way: last_good moved beyond the initial model.
    assert registry["aliases"]["last_good"]["version"] > 1


def test_sigkilled_workers_give_the_same_scores_versions_and_registry(
        poisoned: dict[str, Any], tmp_path: Path, etcd_server: Any) -> None:
    kills: list[str] = []

    def chaos(runner: PipelineRunner) -> None:
        # Once inside the poisoned stretch (the gate is judging), the model's worker; then,
        # after the restore, a balances worker.
        for task, lines in (("model-0", int(EVENTS * 0.45)), ("balances-1", int(EVENTS * 0.6))):
            wait_until(lambda lines=lines: ((runner.status() or {}).get("lines_read", 0)
                                            >= lines), timeout_s=120,
                       message=f"job did not reach {lines} lines")
            generation = (runner.status() or {})["generation"]
            os.kill(runner.pids(tasks=[task])[task], signal.SIGKILL)
            kills.append(task)
            wait_until(lambda g=generation: (runner.status() or {}).get("generation", g) > g,
                       timeout_s=90, message=f"no restore after killing {task}")

    job_id = _job_id("killed")
    workdir = tmp_path / "work"
    status = _run(poisoned["input"], workdir, etcd_server.endpoint, job_id, chaos=chaos)
    assert kills == ["model-0", "balances-1"]
    assert len(status["restores"]) - 1 >= 2, status["restores"]
    verdict = verify(poisoned["input"], workdir)
    assert verdict.ok, verdict.summary()
    # Row for row, scores and versions included (not the checkpoint each landed in).
    assert sorted(p[:7] for p in _postings(workdir)) == sorted(
        p[:7] for p in _postings(poisoned["workdir"]))
    assert sorted(map(json.dumps, _quarantine(workdir))) == sorted(
        map(json.dumps, _quarantine(poisoned["workdir"])))
    mine, reference = _registry(etcd_server.endpoint, job_id), poisoned["registry"]
    assert {v: d["digest"] for v, d in mine["versions"].items()} == {
        v: d["digest"] for v, d in reference["versions"].items()}
    assert set(mine["bad"]) == set(reference["bad"])
    assert [(m["move_id"], m["alias"], m["to_version"]) for m in mine["history"]] == [
        (m["move_id"], m["alias"], m["to_version"]) for m in reference["history"]]


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_the_models_cli_answers_and_refuses_with_one_line(
        poisoned: dict[str, Any], etcd_server: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    from resilience.cli import main

    where = ["--etcd", etcd_server.endpoint, "--job-id", poisoned["job_id"]]
    reference = poisoned["registry"]
    serving = reference["aliases"]["serving"]["version"]
    assert main(["models", "list", *where, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["model"], row["serving"], row["versions"]) == (
        "fraud", serving, len(reference["versions"]))
    assert row["bad"] == sorted(reference["bad"])

    # Which version served when: at each rollback, the good version; just before it, a bad one.
    rollback = next(m for m in reference["history"] if m["why"].startswith("rolled back"))
    assert main(["models", "history", "fraud", *where, "--json", "--at",
                 str(rollback["at"])]) == 0
    assert json.loads(capsys.readouterr().out)["serving"] == rollback["to_version"]
    assert main(["models", "history", "fraud", *where, "--json", "--at",
                 str(rollback["at"] - 1e-6)]) == 0
    assert json.loads(capsys.readouterr().out)["serving"] == rollback["from_version"]

    def moves() -> int:
        assert main(["models", "history", "fraud", *where, "--json"]) == 0
        return len(json.loads(capsys.readouterr().out))

    before = moves()
    bad = min(reference["bad"])
    for argv, says in [
        (["rollback", "fraud", "--to", str(bad)], f"version {bad} is marked bad"),
        (["rollback", "fraud", "--to", "9999"], "has no version 9999"),
        (["promote", "nomodel", "--to", "1"], "has no model 'nomodel'"),
        (["promote", "fraud"], "give --to VERSION"),
    ]:
        assert main(["models", *argv, *where]) == 2, argv
        line = _one_line(capsys)
        assert says in line, line
    assert moves() == before  # nothing was moved

    # A version whose weights no longer match their digest is never made to serve.
    older = max(v for v in reference["versions"] if v < serving and v not in reference["bad"])
    digest = reference["versions"][older]["chunk"]["digest"].split(":")[-1]
    [chunk] = (poisoned["workdir"] / "checkpoints").rglob(f"*{digest}*")
    chunk.write_bytes(bytes(len(chunk.read_bytes())))  # as long, all zeros
    assert main(["models", "promote", "fraud", "--to", str(older), *where]) == 2
    line = _one_line(capsys)
    assert f"version {older}" in line
    assert "weights" in line
    assert moves() == before

    # A rollback by hand: serving goes back, the version it left is marked bad, and the
    # history says who and why.
    target = max(v for v in reference["versions"]
                 if v < serving and v not in reference["bad"] and v != older)
    assert main(["models", "rollback", "fraud", "--to", str(target), "--why", "drill",
                 *where]) == 0
    assert f"version {serving} marked bad" in capsys.readouterr().out
    assert moves() == before + 1
    assert main(["models", "history", "fraud", *where, "--json"]) == 0
    last = json.loads(capsys.readouterr().out)[-1]
    assert (last["alias"], last["from_version"], last["to_version"], last["why"]) == (
        "serving", serving, target, "drill")
    assert last["by"].startswith("operator:")
    assert main(["models", "show", "fraud", *where, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["aliases"]["serving"] == target
    assert next(v for v in shown["versions"] if v["version"] == serving)["bad"]
