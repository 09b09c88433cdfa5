"""`ModelBook` as pure logic: versions, gate verdicts, rollbacks that rewind the learner,
pruning that never forgets an unpublished version, and state that survives its snapshot.

The learner here is a two-weight logistic regression over one continuous feature, fed a
seeded stream where P(fraud | x) = sigmoid(1.5 x - 4) for x ~ N(0, 1) (about 3 % fraud);
poisoning flips a share of the labels for a stretch. Every random stream prints its seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest

from resilience.models import BookConfig, ModelBook

CONFIG = BookConfig()


class TinyLearner:
    def initial(self) -> list[float]:
        return [0.0, 0.0]

    def score(self, w: Sequence[float], f: Any) -> float:
        z = w[0] + w[1] * f
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def learn(self, w: list[float], f: Any, label: bool) -> None:
        g = 0.02 * (label - self.score(w, f))
        w[0] += g
        w[1] += g * f


def _stream(seed: int, n: int, poison: tuple[int, int, float] | None = None
            ) -> list[tuple[str, float, bool]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = rng.gauss(0.0, 1.0)
        label = rng.random() < 1.0 / (1.0 + math.exp(4.0 - 1.5 * x))
        if poison is not None and poison[0] <= i < poison[1] and rng.random() < poison[2]:
            label = not label
        out.append((f"k{i}", x, label))
    return out


def _feed(book: ModelBook, events: Sequence[tuple[str, float, bool]], delay: int = 50
          ) -> list[tuple[float, int]]:
    """Score each event, and release its label `delay` events later; the scores given."""
    return [_feed_one(book, events, i, delay) for i in range(len(events))]


def _moves(book: ModelBook) -> list[dict[str, Any]]:
    events, _ = book.drain()
    return [e for e in events if e["kind"] == "move"]


@pytest.mark.parametrize("seed", [3, 17, 29])
def test_a_healthy_noisy_stream_confirms_versions_and_rolls_nothing_back(seed: int) -> None:
    print(f"seed {seed}")
    book = ModelBook("m", TinyLearner(), CONFIG)
    _feed(book, _stream(seed, 60_000))
    st = book.status()
    assert st["windows"] >= 40, st  # the gate judged many windows
    assert st["rollbacks"] == 0, st["verdicts"]
    assert not st["bad"]
    assert st["last_good"] > 1  # versions were confirmed along the way
    assert st["published"] == 1 + book.learned // CONFIG.publish_every


def test_poisoned_labels_are_rolled_back_the_learner_rewound_and_the_labels_quarantined(
        ) -> None:
    seed = 5
    print(f"seed {seed}")
    book = ModelBook("m", TinyLearner(), CONFIG)
    events = _stream(seed, 40_000, poison=(20_000, 30_000, 0.4))
    _feed(book, events[:20_000])
    assert book.rollbacks == 0
    good_before = book.last_good
    rollback = None
    for i in range(20_000, 40_000):
        _feed_one(book, events, i)
        if book.rollbacks and rollback is None:
            rollback = i
            # At the verdict: serving is the good version again, and so is the learner.
            assert book.serving == book.last_good
            assert book.weights == book.versions[book.last_good]
            assert book.learned == book.trained_at[book.last_good]
            assert book.serving >= good_before
            break
    assert rollback is not None, "poisoned labels were never rolled back"
    assert rollback - 20_000 < 6_000, rollback  # within the poisoned stretch, and early
    events_out, quarantined = book.drain()
    [move] = [e for e in events_out if e["kind"] == "move" and e["why"].startswith("rolled")]
    marked = move["evidence"]["marked_bad"]
    # Every version published since the good one, and nothing else, is marked bad.
    assert marked == list(range(move["to"] + 1, book.next_version))
    assert move["evidence"]["position"] == rollback
    assert set(marked) <= book.bad
    # The labels the bad lineage learned from are handed over for review, each once.
    assert quarantined
    assert len({q["key"] for q in quarantined}) == len(quarantined)
    assert all(q["rolled_back"] == marked for q in quarantined)
    # A bad version never serves again.
    scores = []
    for i in range(rollback + 1, 40_000):
        scores.append(_feed_one(book, events, i))
    assert not {v for _, v in scores} & set(marked)


def _feed_one(book: ModelBook, events: Sequence[tuple[str, float, bool]], i: int,
              delay: int = 50) -> tuple[float, int]:
    key, x, _ = events[i]
    book.position = i
    out = book.score(key, x)
    if i >= delay:
        k, _, label = events[i - delay]
        book.label(k, label, ref=i - delay)
    return out


def test_a_book_restored_from_its_state_goes_on_exactly_as_one_never_stopped() -> None:
    seed = 8
    print(f"seed {seed}")
    events = _stream(seed, 30_000, poison=(10_000, 20_000, 0.4))
    straight = ModelBook("m", TinyLearner(), CONFIG)
    expected = _feed(straight, events)
    expected_moves = _moves(straight)

    first = ModelBook("m", TinyLearner(), CONFIG)
    got = _feed(first, events[:15_000])
    moves = _moves(first)
    state = msgpack.unpackb(msgpack.packb(first.to_state(), use_bin_type=True), raw=False,
                            strict_map_key=False)  # as a checkpoint carries it
    second = ModelBook("m", TinyLearner(), CONFIG)
    second.load_state(state)
    for i in range(15_000, 30_000):
        got.append(_feed_one(second, events, i))
    moves += _moves(second)
    assert got == expected
    assert [(m["move_id"], m["alias"], m["to"]) for m in moves] == [
        (m["move_id"], m["alias"], m["to"]) for m in expected_moves]
    # The same book but for the weights kept (which depend on when checkpoints completed).
    assert {k: v for k, v in second.status().items() if k != "versions"} == {
        k: v for k, v in straight.status().items() if k != "versions"}


def test_a_version_is_kept_until_a_completed_checkpoint_carried_it() -> None:
    book = ModelBook("m", TinyLearner(), BookConfig(keep_versions=2))
    _feed(book, _stream(1, 12_000))
    published = book.next_version - 1
    assert published >= 10
    # Nothing was confirmed published: every version's weights are still there.
    assert sorted(book.versions) == list(range(1, published + 1))
    book.published(set(range(1, published + 1)))
    keep = {book.serving, book.last_good, *sorted(book.versions)[-2:]}
    assert set(book.versions) == keep
    assert len(book.versions) <= 4
