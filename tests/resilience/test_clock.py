"""The project clock: skews through the control file, monotonic never backwards.

Real clocks and real files; the skewed readings are compared with the system clock
read around them, so the checks are bounds that hold on a slow machine too.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from resilience.clock import ProjectClock, Skew, skew, unskew
from resilience.testing import wait_until

# A skew is re-read at most every 50 ms; waiting for it is waiting for a condition.
SEEN_S = 5.0


def test_without_a_skew_it_is_the_system_clock(tmp_path: Path) -> None:
    clock = ProjectClock(tmp_path, "coordinator")
    before_m, before_w = time.monotonic(), time.time()
    m, w = clock.monotonic(), clock.time()
    assert before_m <= m <= time.monotonic()
    assert before_w <= w <= time.time()
    assert ProjectClock(None, "x").current_skew() is None


def test_an_offset_moves_both_clocks_and_is_seen_by_every_instance(tmp_path: Path) -> None:
    a, b = ProjectClock(tmp_path, "task:a"), ProjectClock(tmp_path, "task:a")
    other = ProjectClock(tmp_path, "task:b")
    a.monotonic()
    skew(tmp_path, "task:a", offset_s=100)
    wait_until(lambda: a.current_skew() is not None and b.current_skew() is not None,
               timeout_s=SEEN_S)
    assert a.monotonic() >= time.monotonic() + 99
    assert b.time() >= time.time() + 99
    assert other.monotonic() <= time.monotonic()  # another component is not skewed


def test_a_rate_scales_elapsed_time(tmp_path: Path) -> None:
    clock = ProjectClock(tmp_path, "coordinator")
    skew(tmp_path, "coordinator", rate=0.1)
    wait_until(lambda: clock.current_skew() is not None, timeout_s=SEEN_S)
    c0, r0 = clock.monotonic(), time.monotonic()
    wait_until(lambda: time.monotonic() - r0 >= 0.5, timeout_s=SEEN_S)
    c1, r1 = clock.monotonic(), time.monotonic()
    # A tenth of real speed: 0.5 s or more real is at most ~0.1 x that on the clock.
    assert c1 - c0 <= 0.1 * (r1 - r0) + 0.05  # (slack: a preempted read; rate 1 gives 0.5)
    assert c1 > c0


def test_when_a_skew_ends_monotonic_goes_on_from_where_it_stands(tmp_path: Path) -> None:
    clock = ProjectClock(tmp_path, "coordinator")
    skew(tmp_path, "coordinator", offset_s=3600)
    wait_until(lambda: clock.monotonic() > time.monotonic() + 3000, timeout_s=SEEN_S)
    ahead = clock.monotonic()
    wall_ahead = clock.time()
    unskew(tmp_path, "coordinator")
    wait_until(lambda: clock.current_skew() is None, timeout_s=SEEN_S)
    after = clock.monotonic()
    assert after >= ahead  # no step back...
    assert after < time.monotonic() + 3600 + 1  # ...and no second jump
    r0, c0 = time.monotonic(), clock.monotonic()
    wait_until(lambda: time.monotonic() - r0 >= 0.3, timeout_s=SEEN_S)
    assert clock.monotonic() - c0 >= 0.3  # real speed again, not held still
    assert clock.time() < wall_ahead - 3000  # a wall clock steps back, as NTP may


def test_healing_a_slow_clock_is_not_a_leap_forward(tmp_path: Path) -> None:
    clock = ProjectClock(tmp_path, "coordinator")
    skew(tmp_path, "coordinator", rate=0.0)  # stopped
    wait_until(lambda: clock.current_skew() is not None, timeout_s=SEEN_S)
    stopped = clock.monotonic()
    wait_until(lambda: time.monotonic() - stopped >= 0.5, timeout_s=SEEN_S)
    assert clock.monotonic() - stopped < 0.1
    unskew(tmp_path, "coordinator")
    wait_until(lambda: clock.current_skew() is None, timeout_s=SEEN_S)
    # A leap of the ~0.5 s it was stopped would expire leases and time out waits at once.
    assert clock.monotonic() - stopped < 0.4


def test_a_damaged_control_file_means_the_system_clock(tmp_path: Path) -> None:
    clock = ProjectClock(tmp_path, "coordinator")
    control = tmp_path / ".resilience" / "clock" / "coordinator"
    control.parent.mkdir(parents=True)
    control.write_text('{"offset_s": 5')
    assert clock.current_skew() is None
    assert clock.time() <= time.time()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rate": -1.0}, "rate must be >= 0"),
    ({"rate": float("nan")}, "rate must be >= 0"),
    ({"offset_s": float("inf")}, "offset_s must be finite"),
])
def test_impossible_skews_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Skew(**kwargs)


@pytest.mark.parametrize("component", ["", "../etc", ".hidden", "a/b"])
def test_component_names_cannot_escape_the_control_folder(tmp_path: Path,
                                                          component: str) -> None:
    with pytest.raises(ValueError, match="not a clock component name"):
        skew(tmp_path, component, rate=2)
