"""The rollback gate, pure: verdicts of windows and the decisions they add up to."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import InvalidModelConfig
from resilience.models import GateConfig, GateState, Verdict, WindowAccumulator, judge


def _window(rng: random.Random, n: int, *, base_rate: float, serving_noise: float,
            control_noise: float, flip: float = 0.0, bins: int = 10) -> WindowAccumulator:
    """`n` labels drawn at `base_rate`; both models see the truth through noise of their own,
    the serving one also flips a share `flip` of its beliefs (a poisoned model)."""
    acc = WindowAccumulator(bins=bins)
    for _ in range(n):
        label = rng.random() < base_rate
        truth = 0.9 if label else 0.1
        control = min(max(truth + rng.gauss(0, control_noise), 0.01), 0.99)
        serving = min(max(truth + rng.gauss(0, serving_noise), 0.01), 0.99)
        if rng.random() < flip:
            serving = 1.0 - serving
        acc.add(label, serving, control)
    return acc


def test_a_poisoned_serving_version_fails_a_window_and_a_twin_passes() -> None:
    rng = random.Random(7)
    config = GateConfig()
    bad = judge(_window(rng, 500, base_rate=0.05, serving_noise=0.05, control_noise=0.05,
                        flip=0.3).close(), config)
    assert bad.outcome == "fail", bad
    assert "worse than the control" in bad.reason
    twin = judge(_window(rng, 500, base_rate=0.05, serving_noise=0.05,
                         control_noise=0.05).close(), config)
    assert twin.outcome == "pass", twin


def test_too_few_labels_is_inconclusive_never_a_pass_or_a_fail() -> None:
    rng = random.Random(3)
    config = GateConfig(min_labels=200)
    # Even a flagrantly bad model: 150 labels say nothing yet.
    verdict = judge(_window(rng, 150, base_rate=0.05, serving_noise=0.05, control_noise=0.05,
                            flip=0.9).close(), config)
    assert verdict.outcome == "inconclusive"
    assert "150 labels" in verdict.reason
    empty = judge(WindowAccumulator().close(), config)
    assert empty.outcome == "inconclusive"


def test_a_score_that_is_not_a_probability_fails_however_few_labels() -> None:
    acc = WindowAccumulator()
    acc.add(True, 0.9, 0.9)
    acc.add(False, math.nan, 0.1)
    verdict = judge(acc.close(), GateConfig())
    assert verdict.outcome == "fail"
    assert verdict.evidence["invalid_scores"] == 1


def test_a_shift_of_the_label_rate_moves_both_models_alike_and_rolls_nothing_back() -> None:
    # A festival: five times the fraud rate. Both models suffer; their difference does not.
    rng = random.Random(11)
    config = GateConfig()
    for rate in (0.02, 0.10, 0.50):
        verdict = judge(_window(rng, 500, base_rate=rate, serving_noise=0.08,
                                control_noise=0.08).close(), config)
        assert verdict.outcome == "pass", (rate, verdict)


def test_scores_that_moved_away_without_a_better_loss_fail_on_the_distribution() -> None:
    acc = WindowAccumulator()
    rng = random.Random(5)
    for _ in range(500):
        label = rng.random() < 0.5
        # Serving squeezes every score towards 0.5: no worse on average loss by much, but
        # its distribution has nothing to do with the control's.
        control = 0.95 if label else 0.05
        serving = 0.55 if label else 0.45
        acc.add(label, serving, control)
    verdict = judge(acc.close(), GateConfig(margin=1.0))  # loss alone would let it pass
    assert verdict.outcome == "fail"
    assert "PSI" in verdict.reason


def _verdict(outcome: str) -> Verdict:
    return Verdict(outcome, outcome)  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(["pass", "fail", "inconclusive"]), max_size=60),
       st.integers(1, 5), st.integers(1, 5))
def test_the_gate_rolls_back_exactly_after_n_consecutive_failures(
        outcomes: list[str], failures: int, passes: int) -> None:
    config = GateConfig(failures_to_rollback=failures, passes_to_confirm=passes)
    state = GateState()
    run_fail = run_pass = 0
    for outcome in outcomes:
        state, decision = state.step(_verdict(outcome), config)
        # A reference count, written plainly: inconclusive windows change nothing.
        if outcome == "fail":
            run_fail, run_pass = run_fail + 1, 0
        elif outcome == "pass":
            run_pass, run_fail = run_pass + 1, 0
        expected = "hold"
        if run_fail >= failures:
            expected, run_fail, run_pass = "rollback", 0, 0
        elif run_pass >= passes:
            expected, run_fail, run_pass = "confirm", 0, 0
        assert decision == expected, (outcomes, decision)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_healthy_noisy_windows_fail_almost_never_and_never_roll_back(seed: int) -> None:
    """Two healthy versions, noisy in their own ways, over 200 windows: no rollback, and
    failing windows stay rare (the figure over 1,000s of windows is in BENCHMARKS.md)."""
    rng = random.Random(seed)
    config = GateConfig()
    state = GateState()
    fails = 0
    for _ in range(200):
        verdict = judge(_window(rng, 300, base_rate=rng.choice([0.02, 0.05, 0.2]),
                                serving_noise=0.1, control_noise=0.1).close(), config)
        fails += verdict.outcome == "fail"
        state, decision = state.step(verdict, config)
        assert decision != "rollback", (seed, verdict)
    assert fails <= 2, (seed, fails)


def test_an_accumulator_survives_its_json() -> None:
    acc = _window(random.Random(1), 50, base_rate=0.3, serving_noise=0.1, control_noise=0.1)
    again = WindowAccumulator.from_json(acc.to_json())
    assert again.close() == acc.close()
    state = GateState(2, 0, 5)
    assert GateState.from_json(state.to_json()) == state


@pytest.mark.parametrize("bad", [
    {"window_labels": 0}, {"min_labels": 600, "window_labels": 500}, {"margin": -1.0},
    {"z": math.inf}, {"failures_to_rollback": True}, {"bins": 1.5},
])
def test_a_wrong_gate_setting_is_refused_at_once(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidModelConfig):
        GateConfig(**bad)  # type: ignore[arg-type]
