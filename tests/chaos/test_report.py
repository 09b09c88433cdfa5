"""Chaos reports: the verdict rule, the JSON round trip, and the HTML page."""

from __future__ import annotations

import itertools
import json
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chaos._report_html import _decimate, _nice_ticks, _place_labels, _throughput
from chaos.report import (
    FORMAT_VERSION,
    FaultRecord,
    InvalidReport,
    InvariantResult,
    JournalEvent,
    Report,
    Sample,
    SteadyStateResult,
    read_json,
    render_html,
    write_html,
    write_json,
)

# --------------------------------------------------------------------------------------------
# Builders and strategies

MALICIOUS = "<script>alert(1)</script>"


def make_report(**changes: Any) -> Report:
    fields: dict[str, Any] = {
        "scenario": "kill-ledger",
        "scenario_file": "scenarios/payments/kill-ledger.yaml",
        "seed": 42,
        "code_version": "abc1234",
        "started_at": 1_720_000_000.0,
        "duration_s": 60.0,
        "replay": "resilience chaos run scenarios/payments/kill-ledger.yaml --seed 42",
        "faults": [FaultRecord("kill_actor", "ledger-0", 10.0, 12.5, {"signal": "KILL"})],
        "invariants": [InvariantResult("exactly-once", True, "every id committed once")],
        "steady_state": [
            SteadyStateResult("throughput", "before", True, 900.0, ">= 500/s", "ok"),
            SteadyStateResult("throughput", "after", True, 850.0, ">= 500/s", "ok"),
        ],
        "samples": [Sample(t * 0.5, t * 100, t * 90, t // 10, 0, "running") for t in range(120)],
        "journal": [JournalEvent(13.0, "restore", "restored checkpoint 3")],
        "job": {"events": 10_000},
    }
    fields.update(changes)
    return Report.build(**fields)


texts = st.text(max_size=30)
times = st.floats(min_value=-1e3, max_value=1e7, allow_nan=False)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@st.composite
def faults(draw: st.DrawFn) -> FaultRecord:
    injected = draw(times)
    healed = draw(st.none() | st.floats(min_value=0, max_value=1e6).map(lambda d: injected + d))
    return FaultRecord(draw(texts), draw(texts), injected, healed, draw(json_objects), draw(texts))


invariants = st.builds(InvariantResult, texts, st.booleans(), texts, json_objects)
steady_states = st.builds(
    SteadyStateResult,
    texts,
    st.sampled_from(["before", "after"]),
    st.booleans(),
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
    texts,
    texts,
)
counts = st.integers(min_value=0, max_value=2**53)
samples = st.builds(Sample, times, counts, counts, counts, counts, texts)
journal_events = st.builds(
    JournalEvent, times, st.sampled_from(["restore", "abort"]) | texts, texts
)

reports = st.builds(
    Report.build,
    scenario=texts,
    scenario_file=st.none() | texts,
    seed=st.integers(min_value=-(2**63), max_value=2**64),
    code_version=texts,
    started_at=st.floats(min_value=0, max_value=4e9),
    duration_s=st.floats(min_value=0, max_value=1e6),
    replay=texts,
    aborted=st.none() | st.text(min_size=1, max_size=30),
    faults=st.lists(faults(), max_size=5),
    invariants=st.lists(invariants, max_size=4),
    steady_state=st.lists(steady_states, max_size=4),
    samples=st.lists(samples, max_size=30),
    journal=st.lists(journal_events, max_size=8),
    job=json_objects,
)


# --------------------------------------------------------------------------------------------
# A strict reading of the HTML: every element closed, in order, none left open.

VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "source"}


class StrictParser(HTMLParser):
    """Collects elements and fails on any end tag that does not close the innermost element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def with_class(self, tag: str, cls: str) -> list[dict[str, str | None]]:
        return [
            attrs
            for name, attrs in self.elements
            if name == tag and cls in (attrs.get("class") or "").split()
        ]


def parse(page: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == []
    assert parser.stack == []
    return parser


def svgs_of(page: str) -> list[ET.Element]:
    """Each inline SVG of the page, parsed as XML: it must also stand alone as an image."""
    return [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S)]


def test_the_strict_parser_can_fail() -> None:
    with pytest.raises(AssertionError):
        parse("<html><body><div><span></div></body></html>")


# --------------------------------------------------------------------------------------------
# The verdict


def test_a_clean_run_passes() -> None:
    assert make_report().passed is True


def test_a_failing_invariant_fails_the_run() -> None:
    report = make_report(
        invariants=[
            InvariantResult("exactly-once", True, "ok"),
            InvariantResult("balance", False, "off by 10"),
        ]
    )
    assert report.passed is False
    assert report.failure_reasons() == ["invariant balance failed: off by 10"]


def test_a_failing_steady_state_check_fails_the_run() -> None:
    report = make_report(
        steady_state=[SteadyStateResult("throughput", "after", False, 10.0, ">= 500/s", "slow")]
    )
    assert report.passed is False


def test_an_aborted_run_fails_even_when_every_check_passed() -> None:
    report = make_report(aborted="blast radius exceeded")
    assert report.passed is False
    assert report.failure_reasons() == ["aborted: blast radius exceeded"]


@given(
    st.lists(invariants, max_size=5),
    st.lists(steady_states, max_size=5),
    st.none() | st.text(min_size=1, max_size=10),
)
def test_passed_is_exactly_the_rule(
    invariant_list: list[InvariantResult],
    steady_list: list[SteadyStateResult],
    aborted: str | None,
) -> None:
    report = make_report(invariants=invariant_list, steady_state=steady_list, aborted=aborted)
    expected = (
        aborted is None
        and all(i.passed for i in invariant_list)
        and all(s.passed for s in steady_list)
    )
    assert report.passed is expected
    assert report.compute_passed() is expected
    assert (report.failure_reasons() == []) is expected


def test_the_constructor_refuses_a_verdict_the_evidence_contradicts() -> None:
    failing = make_report(invariants=[InvariantResult("balance", False, "off")])
    fields = {name: getattr(failing, name) for name in failing.__dataclass_fields__}
    with pytest.raises(InvalidReport, match=r"passed is True"):
        Report(**{**fields, "passed": True})
    with pytest.raises(InvalidReport, match=r"passed is False"):
        Report(**{**fields, "passed": False, "invariants": []})


def test_an_abort_must_say_why() -> None:
    with pytest.raises(InvalidReport, match="aborted"):
        make_report(aborted="")


@pytest.mark.parametrize(
    "make",
    [
        lambda: FaultRecord("kill", "x", 5.0, 4.0, {}),
        lambda: FaultRecord("kill", "x", math.nan, None, {}),
        lambda: Sample(math.inf, 0, 0, 0, 0, "running"),
        lambda: SteadyStateResult("t", "during", True, 1.0, "", ""),  # type: ignore[arg-type]
        lambda: SteadyStateResult("t", "after", True, math.nan, "", ""),
        lambda: make_report(duration_s=-1.0),
    ],
)
def test_invalid_values_are_refused_at_construction(make: Any) -> None:
    with pytest.raises(InvalidReport):
        make()


# --------------------------------------------------------------------------------------------
# JSON


@settings(max_examples=150)
@given(reports)
def test_json_text_round_trip(report: Report) -> None:
    assert Report.from_json(report.to_json()) == report
    assert Report.from_dict(report.to_dict()) == report


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(report=reports)
def test_json_file_round_trip(report: Report, tmp_path: Path) -> None:
    path = write_json(report, tmp_path / "report.json")
    assert read_json(path) == report


def test_json_has_the_keys_machines_rely_on(tmp_path: Path) -> None:
    report = make_report(
        faults=[
            FaultRecord("kill_actor", "ledger-0", 10.0, 12.5, {"signal": "KILL"}),
            FaultRecord("partition", "etcd", 20.0, None, {}),
        ]
    )
    path = write_json(report, tmp_path / "report.json")
    text = path.read_text()
    data = json.loads(text)
    for key in ("scenario", "seed", "passed", "faults", "invariants", "code_version"):
        assert key in data
    assert data["format_version"] == FORMAT_VERSION
    assert data["scenario"] == "kill-ledger"
    assert data["seed"] == 42
    assert data["passed"] is True
    assert data["code_version"] == "abc1234"
    assert data["faults"][1]["healed_at"] is None
    for fault in data["faults"]:
        assert {"kind", "target", "injected_at", "healed_at"} <= fault.keys()
    for invariant in data["invariants"]:
        assert {"name", "passed", "detail"} <= invariant.keys()
    # indent=2 and sorted keys, at every level.
    assert text.startswith('{\n  "')
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_writing_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_json(make_report(), tmp_path / "report.json")
    write_html(make_report(), tmp_path / "report.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_a_value_json_cannot_hold_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    report = make_report(job={"ratio": math.nan})
    with pytest.raises(InvalidReport, match="cannot be written as JSON"):
        write_json(report, tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("seed"), r"report\.seed is missing"),
        (lambda d: d["faults"][0].update(injected_at="soon"), r"faults\[0\]\.injected_at"),
        (lambda d: d["samples"][3].update(committed=True), r"samples\[3\]\.committed"),
        (lambda d: d["steady_state"][1].update(phase="during"), r"steady_state\[1\]\.phase"),
        (lambda d: d.update(format_version=99), "version 99"),
        (lambda d: d.update(invariants="none"), r"report\.invariants must be a list"),
        # A hand-edited verdict that the evidence does not support.
        (lambda d: d["invariants"][0].update(passed=False), "passed is True"),
    ],
)
def test_reading_a_bad_report_names_the_problem(mutate: Any, message: str, tmp_path: Path) -> None:
    data = make_report().to_dict()
    mutate(data)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidReport, match=message):
        read_json(path)


def test_reading_text_that_is_not_json_raises_invalid_report(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("{not json")
    with pytest.raises(InvalidReport, match="not valid JSON"):
        read_json(path)


def test_to_dict_shares_nothing_mutable() -> None:
    report = make_report()
    data = report.to_dict()
    data["faults"][0]["params"]["signal"] = "TERM"
    data["job"]["events"] = 0
    assert report.faults[0].params == {"signal": "KILL"}
    assert report.job == {"events": 10_000}


# --------------------------------------------------------------------------------------------
# HTML


def test_html_shows_the_verdict_and_the_run_identity() -> None:
    page = render_html(make_report())
    parsed = parse(page)
    text = "".join(parsed.text)
    assert "PASSED" in text
    assert "FAILED" not in text
    for expected in ("kill-ledger", "42", "abc1234", "1 min 00 s", "--seed 42", "2024-07-03"):
        assert expected in text
    header = parsed.with_class("header", "verdict")
    assert header
    assert "passed" in (header[0]["class"] or "")


def test_html_of_a_failed_run_says_failed_and_why() -> None:
    page = render_html(make_report(aborted="blast radius exceeded"))
    parsed = parse(page)
    text = "".join(parsed.text)
    assert "FAILED" in text
    assert "PASSED" not in text
    assert "aborted: blast radius exceeded" in text
    assert "failed" in (parsed.with_class("header", "verdict")[0]["class"] or "")


def test_html_has_one_band_per_fault_and_one_line_per_series() -> None:
    report = make_report(
        faults=[
            FaultRecord("kill_actor", "ledger-0", 10.0, 12.5, {}),
            FaultRecord("partition", "etcd", 20.0, 30.0, {}),
            FaultRecord("disk_full", "store", 25.0, None, {}),
        ]
    )
    parsed = parse(render_html(report))
    assert len(parsed.with_class("rect", "fault-band")) == 3
    assert len(parsed.with_class("polyline", "series")) == 2
    assert parsed.with_class("polyline", "series-read")
    assert parsed.with_class("polyline", "series-committed")
    assert len(parsed.with_class("path", "restore-marker")) == 1
    assert parsed.with_class("polyline", "spark-line")


def test_html_escapes_every_string_from_the_report() -> None:
    report = make_report(
        scenario=MALICIOUS,
        scenario_file=MALICIOUS,
        code_version=MALICIOUS,
        replay=MALICIOUS,
        faults=[FaultRecord(MALICIOUS, MALICIOUS, 1.0, None, {MALICIOUS: MALICIOUS}, MALICIOUS)],
        invariants=[InvariantResult(MALICIOUS, False, MALICIOUS, {MALICIOUS: 1})],
        steady_state=[SteadyStateResult(MALICIOUS, "after", True, 1.0, MALICIOUS, MALICIOUS)],
        journal=[JournalEvent(1.0, MALICIOUS, MALICIOUS), JournalEvent(2.0, "restore", MALICIOUS)],
        job={MALICIOUS: MALICIOUS},
        aborted=MALICIOUS,
    )
    page = render_html(report)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = parse(page)
    assert not [tag for tag, _ in parsed.elements if tag == "script"]


def test_html_escapes_quotes_in_attributes() -> None:
    long_detail = '" onmouseover="alert(1)' + "x" * 1000
    page = render_html(make_report(invariants=[InvariantResult("i", True, long_detail)]))
    parsed = parse(page)
    assert all("onmouseover" not in attrs for _, attrs in parsed.elements)


def test_html_without_samples() -> None:
    parsed = parse(render_html(make_report(samples=[])))
    assert parsed.with_class("polyline", "series") == []
    text = "".join(parsed.text)
    assert "no progress samples were recorded" in text
    assert len(parsed.with_class("rect", "fault-band")) == 1


def test_html_with_one_sample_draws_dots() -> None:
    parsed = parse(render_html(make_report(samples=[Sample(1.0, 10, 5, 0, 0, "running")])))
    assert len(parsed.with_class("polyline", "series")) == 2
    assert len(parsed.with_class("circle", "series-dot")) == 2
    assert "at least two samples" in "".join(parsed.text)


def test_an_unhealed_fault_is_drawn_to_the_end_of_the_run() -> None:
    report = make_report(faults=[FaultRecord("etcd_pause", "etcd-0", 40.0, None, {})])
    parsed = parse(render_html(report))
    (band,) = parsed.with_class("rect", "fault-band")
    (plot,) = parsed.with_class("rect", "plot-area")
    band_end = float(band["x"] or 0) + float(band["width"] or 0)
    plot_end = float(plot["x"] or 0) + float(plot["width"] or 0)
    assert band_end == pytest.approx(plot_end, abs=0.2)
    assert "unhealed" in (band["class"] or "")
    assert "not healed" in "".join(parsed.text)


def test_an_instantaneous_fault_is_still_visible() -> None:
    report = make_report(faults=[FaultRecord("kill_actor", "ledger-0", 10.0, 10.0, {})])
    (band,) = parse(render_html(report)).with_class("rect", "fault-band")
    assert float(band["width"] or 0) >= 2.0


def test_html_with_thousands_of_samples_stays_bounded() -> None:
    many = [Sample(i * 0.5, i * 100, i * 95, i // 20, 0, "running") for i in range(20_000)]
    page = render_html(make_report(samples=many, duration_s=10_000.0))
    parsed = parse(page)
    for line in parsed.with_class("polyline", "series"):
        points = (line["points"] or "").split()
        # Decimated to about two points per pixel column of the plot.
        assert 100 < len(points) <= 2 * 960 + 2
    assert len(page) < 500_000


def test_html_with_hundreds_of_samples_keeps_them_all() -> None:
    report = make_report(samples=[Sample(i * 0.5, i, i, 0, 0, "running") for i in range(400)])
    for line in parse(render_html(report)).with_class("polyline", "series"):
        assert len((line["points"] or "").split()) == 400


def test_long_details_are_truncated_with_the_full_text_in_the_title() -> None:
    detail = "mismatch: " + "account 17 expected 1000 got 990; " * 200
    parsed = parse(render_html(make_report(invariants=[InvariantResult("b", False, detail)])))
    titled = [attrs for _, attrs in parsed.elements if attrs.get("title") == detail]
    assert titled, "the full detail must be in a title attribute"
    assert "truncated" in (titled[0].get("class") or "")
    assert detail not in "".join(parsed.text)


def test_a_run_that_checked_no_invariant_is_flagged() -> None:
    page = render_html(make_report(invariants=[]))
    assert "No invariant was checked" in page
    assert "No invariant was checked" not in render_html(make_report())


def test_write_html_writes_the_rendered_page(tmp_path: Path) -> None:
    report = make_report()
    path = write_html(report, tmp_path / "report.html")
    assert path.read_text(encoding="utf-8") == render_html(report)


def test_control_characters_and_lone_surrogates_cannot_break_the_page(tmp_path: Path) -> None:
    ansi = "\x1b[31mred\x1b[0m \x00 \x7f"
    undecodable = "run-\udcff.yaml"
    report = make_report(
        scenario=ansi,
        scenario_file=undecodable,
        faults=[FaultRecord(ansi, undecodable, 1.0, 2.0, {ansi: undecodable})],
        journal=[JournalEvent(1.5, "restore", ansi + undecodable)],
    )
    path = write_html(report, tmp_path / "report.html")
    page = path.read_text(encoding="utf-8")
    assert "\u241b[31mred" in page  # ESC shown as its control picture
    assert "\x1b" not in page
    assert "\x00" not in page
    assert "\ufffd" in page
    assert len(svgs_of(page)) == 2
    parse(page)
    # JSON keeps the exact strings.
    assert read_json(write_json(report, tmp_path / "report.json")) == report


def test_the_page_fetches_nothing() -> None:
    parsed = parse(render_html(make_report()))
    for _, attrs in parsed.elements:
        assert "src" not in attrs
        assert not (attrs.get("href") or "").startswith(("http", "//"))
    assert not [tag for tag, _ in parsed.elements if tag in ("script", "link", "img", "iframe")]


def test_samples_a_denormal_interval_apart_are_one_instant_not_an_infinite_rate() -> None:
    # Found by the property below: 1 event over 2.2e-311 s was an infinite rate, and the
    # axis ceiling of infinity raised OverflowError instead of drawing a page.
    samples = [Sample(0.0, 0, 0, 0, 0, ""), Sample(2.225073858507e-311, 0, 1, 0, 0, ""),
               Sample(1.0, 0, 11, 0, 0, "")]
    page = render_html(make_report(samples=samples, faults=[]))
    assert len(svgs_of(page)) == 2
    assert len(parse(page).with_class("polyline", "spark-line")) == 1  # one finite rate: 10/s


@settings(max_examples=60, deadline=None)
@given(reports)
def test_any_report_renders_a_well_formed_page(report: Report) -> None:
    page = render_html(report)
    parsed = parse(page)
    assert len(svgs_of(page)) == 2
    assert "<script" not in page.lower()
    assert len(parsed.with_class("rect", "fault-band")) == len(report.faults)
    assert len(parsed.with_class("polyline", "series")) == (2 if report.samples else 0)
    assert ("PASSED" if report.passed else "FAILED") in "".join(parsed.text)


# --------------------------------------------------------------------------------------------
# Chart helpers


def test_labels_use_their_full_text_when_there_is_room() -> None:
    placed = _place_labels([100.0, 400.0, 420.0], ["#1 a", "#2 b", "#3 c"], ["#1", "#2", "#3"])
    assert placed == [(0, "#1 a"), (0, "#2 b"), (1, "#3 c")]


def test_crowded_labels_are_cut_and_never_overlap_in_a_row() -> None:
    starts = [64.0 + 25 * i for i in range(30)]
    fulls = [f"#{i + 1} kind_{i}_with_a_very_long_name → target-{i}" for i in range(30)]
    shorts = [f"#{i + 1}" for i in range(30)]
    placed = _place_labels(starts, fulls, shorts)
    rows = {row for row, _ in placed}
    assert rows <= {0, 1, 2, 3}
    for row in rows:
        spans = sorted(
            (start + 3, start + 3 + len(text) * 6.4)
            for start, (r, text) in zip(starts, placed, strict=True)
            if r == row
        )
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert end <= next_start
    for (_, text), short in zip(placed, shorts, strict=True):
        assert text.startswith(short)


def test_throughput_is_committed_events_per_second_between_samples() -> None:
    samples = [
        Sample(0.0, 0, 0, 0, 0, "running"),
        Sample(2.0, 300, 100, 0, 0, "running"),
        Sample(2.0, 300, 100, 0, 0, "running"),  # same instant: no rate
        Sample(3.0, 400, 100, 0, 0, "restoring"),
    ]
    assert _throughput(samples) == [(2.0, 50.0), (3.0, 0.0)]


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=3000), st.integers(1, 200))
def test_decimation_keeps_extremes_and_is_bounded(values: list[float], buckets: int) -> None:
    points = [(float(i), v) for i, v in enumerate(values)]
    kept = _decimate(points, buckets)
    assert len(kept) <= max(len(points), 2 * buckets + 2)
    assert kept[0] == points[0]
    assert kept[-1] == points[-1]
    assert max(v for _, v in kept) == max(values)
    assert min(v for _, v in kept) == min(values)
    assert [t for t, _ in kept] == sorted(t for t, _ in kept)


@given(
    st.floats(-1e6, 1e6),
    st.floats(1e-3, 1e7),
    st.integers(2, 12),
)
@example(1.0, 4004005.0, 2)  # found by this property: a step longer than the span, no tick
def test_ticks_are_round_and_inside_the_domain(lo: float, span: float, target: int) -> None:
    hi = lo + span
    ticks, step = _nice_ticks(lo, hi, target)
    assert 1 <= len(ticks) <= 3 * target + 2
    assert all(lo - step * 1e-6 <= t <= hi + step * 1e-6 for t in ticks)
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    assert round(mantissa, 6) in (1.0, 2.0, 5.0, 10.0)
