"""The command line: user mistakes end in one line and an exit code, never a traceback."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from checkpoint import FileSystemStore
from fusion_jobs.payments.generator import generate
from fusion_jobs.payments.job import STATE_SCHEMA_VERSION, PaymentsOptions, payments_pipeline
from resilience._runtime._driver import PipelineRunner
from resilience._runtime._savepoints import savepoint_store
from resilience.cli import main
from resilience.testing import wait_until


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "payments", "--input", str(tmp_path / "nope.jsonl"),
                 "--workdir", str(tmp_path / "w"), "--etcd", "127.0.0.1:1"])
    assert code == 2
    assert "nope.jsonl does not exist" in _one_line_error(capsys)


def test_unwritable_workdir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    generate(src, events=10, accounts=5, seed=1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["run", "payments", "--input", str(src), "--workdir", str(blocker / "w"),
                 "--etcd", "127.0.0.1:1"])
    assert code == 2
    assert "cannot create workdir" in _one_line_error(capsys)


def test_verify_without_a_ledger_is_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    assert main(["gen-payments", "--events", "100", "--out", str(src)]) == 0
    capsys.readouterr()
    assert main(["verify", "--input", str(src), "--workdir", str(tmp_path)]) == 2
    assert "ledger" in _one_line_error(capsys)


def test_bad_option_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["gen-payments", "--events", "-3", "--out", "x"])
    assert e.value.code == 2
    assert "-3 must be > 0" in capsys.readouterr().err


def test_an_input_directory_and_a_workdir_file_are_named_as_such(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "payments", "--input", str(tmp_path), "--workdir",
                 str(tmp_path / "w"), "--etcd", "127.0.0.1:1"])
    assert code == 2
    assert "is a directory, not a file" in _one_line_error(capsys)
    src = tmp_path / "in.jsonl"
    generate(src, events=10, accounts=5, seed=1)
    workdir = tmp_path / "plain-file"
    workdir.write_text("x")
    assert main(["run", "payments", "--input", str(src), "--workdir", str(workdir),
                 "--etcd", "127.0.0.1:1"]) == 2
    assert "is a file, not a directory" in _one_line_error(capsys)


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--checkpoint-interval", "nan", "must be a number of seconds > 0"),
    ("--checkpoint-interval", "inf", "must be a number of seconds > 0"),
    ("--checkpoint-interval", "-1", "must be a number of seconds > 0"),
    ("--etcd", "notahost", "is not HOST:PORT"),
    ("--etcd", "host:99999", "is not HOST:PORT"),
    ("--ray", "nowhere", "is not HOST:PORT"),
    ("--etcd-timeout", "0", "must be a number of seconds > 0"),
])
def test_malformed_run_options_exit_2_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str,
        says: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "payments", "--input", "x", "--workdir", str(tmp_path), option, value])
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def test_an_unreachable_etcd_is_one_line_exit_3_before_ray_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    generate(src, events=10, accounts=5, seed=1)
    t0 = time.monotonic()
    assert main(["run", "payments", "--input", str(src), "--workdir", str(tmp_path / "w"),
                 "--etcd", "127.0.0.1:1"]) == 3
    assert "etcd at 127.0.0.1:1 does not answer" in _one_line_error(capsys)
    assert time.monotonic() - t0 < 30


def test_checkpoints_list_on_a_missing_workdir_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nonexistent"
    assert main(["checkpoints", "list", "--workdir", str(missing), "--no-etcd"]) == 2
    assert "does not exist" in _one_line_error(capsys)
    assert not missing.exists()


def test_the_summary_reports_checkpoints_skipped_at_the_start_and_quarantine() -> None:
    from resilience.cli._main import _summary
    from resilience.cli._run import RunResult

    status = {
        "job_id": "payments", "checkpoints_completed": 3, "checkpoints_failed": 0,
        "fencing_epoch": 2, "quarantined": 1, "quarantine_file": "/w/quarantine.jsonl",
        "last_checkpoint": {"at": 110.0},
        "restores": [{"from_checkpoint": 7, "watermark": 501, "started_at": 100.0,
                      "fallbacks": ["checkpoint 9: chunk ab12: checksum mismatch"]}],
    }
    text = _summary(RunResult(status=status, elapsed_s=12.0, input_lines=1_500,
                              notes=["the embedded etcd exited; restarting it"]))
    assert "started from checkpoint 7" in text
    assert "skipped checkpoint 9: chunk ab12: checksum mismatch" in text
    assert "1,000 input lines in 10.0s" in text  # read after the checkpoint, not all 1,500
    assert "poison records quarantined: 1 (see /w/quarantine.jsonl)" in text
    assert "note: the embedded etcd exited; restarting it" in text


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130", "143"):
        assert f"  {code}" in out


def test_gen_payments_hostile_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "h.jsonl"
    assert main(["gen-payments", "--events", "500", "--accounts", "20", "--hostile", "40",
                 "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "+ 40 hostile lines" in said
    assert "balance bomb of 1,026 transfers" in said
    assert len(out.read_bytes().split(b"\n")) == 500 + 40 + 1026 + 1


@pytest.mark.ray
@pytest.mark.etcd
def test_savepoint_of_a_running_job_then_restart_from_it(
    tmp_path: Path, etcd_server: Any, ray_local: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    generate(src, events=60_000, accounts=500, seed=3)
    workdir = tmp_path / "job"
    job_id = f"sp-{time.time_ns()}"
    spec = payments_pipeline(PaymentsOptions(src, workdir, parallelism=2, job_id=job_id,
                                             checkpoint_interval_s=0.5, batch_size=500))
    codes: list[int] = []
    with PipelineRunner(spec, etcd_server.endpoint) as runner:
        wait_until(lambda: (runner.status() or {}).get("lines_read", 0) >= 5_000, timeout_s=120)
        t = threading.Thread(target=lambda: codes.append(main(
            ["savepoint", job_id, "--name", "mid", "--etcd", etcd_server.endpoint,
             "--timeout", "60"])))
        t.start()
        t.join(timeout=90)
        runner.wait(timeout_s=300)
    assert codes == [0]
    out = capsys.readouterr().out
    assert "of running job" in out
    store = savepoint_store(workdir / "savepoints", "mid")
    manifest = store.get_manifest(store.list_checkpoints()[-1])
    assert manifest.kind == "savepoint"
    watermark = manifest.tasks["source-0"].metadata["op"]["watermark"]
    assert 5_000 < watermark < 60_000  # taken mid-run, not the final checkpoint

    # A savepoint written by another state schema is refused, naming both versions.
    bad_dir = tmp_path / "savepoints"
    bad = FileSystemStore(bad_dir, job_id="old")
    for ref in manifest.chunk_refs():
        bad.put_chunk(store.get_chunk(ref))
    bad.put_manifest(dataclasses.replace(manifest, job_id="old", schema_version=99))
    code = main(["run", "payments", "--input", str(src), "--workdir", str(tmp_path / "new"),
                 "--etcd", etcd_server.endpoint, "--from-savepoint", str(bad_dir / "old")])
    assert code == 1
    line = _one_line_error(capsys)
    assert "schema version 99" in line
    assert f"schema version {STATE_SCHEMA_VERSION}" in line


@pytest.mark.ray
@pytest.mark.etcd
def test_checkpoints_list_and_verify(tmp_path: Path, etcd_server: Any, ray_local: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.jsonl"
    generate(src, events=20_000, accounts=300, seed=4)
    job_id = f"ls-{time.time_ns()}"
    spec = payments_pipeline(PaymentsOptions(src, tmp_path, job_id=job_id,
                                             checkpoint_interval_s=0.3))
    with PipelineRunner(spec, etcd_server.endpoint) as runner:
        runner.wait(timeout_s=300)
    base = ["--workdir", str(tmp_path), "--job-id", job_id, "--etcd", etcd_server.endpoint]
    assert main(["checkpoints", "list", "--json", *base]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows
    assert all(r["complete"] for r in rows)
    assert main(["checkpoints", "verify", *base]) == 0
    capsys.readouterr()
    # Rot one chunk: verify must fail and name it.
    store = FileSystemStore(tmp_path / "checkpoints", job_id=job_id)
    newest = store.get_manifest(store.list_checkpoints()[-1])
    ref = newest.tasks["model-0"].chunks[0]
    path = store.chunk_path(ref)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    assert main(["checkpoints", "verify", *base]) == 1
    assert ref.hex[:12] in capsys.readouterr().out


@pytest.mark.ray
@pytest.mark.etcd
def test_a_second_job_in_a_jobs_workdir_is_refused_and_changes_nothing(
    tmp_path: Path, etcd_server: Any, ray_local: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # It used to run: every transfer posted twice, and the first job's dead letters gone.
    src = tmp_path / "in.jsonl"
    generate(src, events=5_000, accounts=50, seed=1)
    work = tmp_path / "w"
    first = f"first-{time.time_ns()}"
    base = ["--input", str(src), "--workdir", str(work), "--etcd", etcd_server.endpoint,
            "--no-progress"]
    assert main(["run", "payments", *base, "--job-id", first]) == 0
    capsys.readouterr()
    ledger, dead = (work / "ledger.sqlite").read_bytes(), (work / "dead_letter.jsonl").read_text()
    assert dead  # the generator writes malformed lines: something to lose
    assert main(["run", "payments", *base, "--job-id", "second"]) == 2
    line = _one_line_error(capsys)
    assert f"workdir {work} belongs to job {first!r}, not 'second'" in line
    assert (work / "ledger.sqlite").read_bytes() == ledger
    assert (work / "dead_letter.jsonl").read_text() == dead
    assert main(["verify", "--input", str(src), "--workdir", str(work)]) == 0


def test_claiming_a_workdir_is_once_and_for_one_job(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from resilience import UserError
    from resilience._runtime._driver import claim_workdir

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda i: _try_claim(claim_workdir, tmp_path, f"job-{i}"),
                                 range(8)))
    winners = [o for o in outcomes if o is None]
    assert len(winners) == 1  # the rest were refused, naming the winner
    owner = (tmp_path / ".resilience" / "job-id").read_text()
    assert all(o is not None and f"belongs to job {owner!r}" in o for o in outcomes
               if o is not None)
    claim_workdir(tmp_path, owner)  # the owner resumes
    with pytest.raises(UserError, match=f"--job-id {owner} to resume"):
        claim_workdir(tmp_path, "another")


def _try_claim(claim: Any, workdir: Path, job_id: str) -> str | None:
    from resilience import UserError

    try:
        claim(workdir, job_id)
    except UserError as e:
        return str(e)
    return None
