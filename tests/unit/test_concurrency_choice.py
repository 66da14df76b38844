"""MODEL_CONCURRENCY=auto: the race of model calls at once on the server's own load, on a made-up
clock. `serve` plays a mule under a given load: each count of calls at once has a rate at which
it turns rows into answers, and between batches the model waits for the clients for a while."""

from __future__ import annotations

import pytest

from app.inference import concurrency
from app.inference.concurrency import GAIN, PAIRS, LiveRace

ROWS = 8  # per batch


def serve(race: LiveRace, rate: dict[int, float], seconds: float, gap_s: float = 0.001,
          drift: float = 0.0) -> list[int]:
    """Run `race` for `seconds` of made-up time with batches of ROWS rows, `count` at once, each
    lasting count * ROWS / rate[count] (times (1 + drift) per second elapsed: a machine slowing
    down), `gap_s` of idle model between rounds. Returns the count of each round."""
    now, counts = 0.0, []
    while now < seconds:
        if not race.may_start(now, running=0):
            raise AssertionError("nothing runs, yet the race holds the next batch")
        count = race.concurrency
        counts.append(count)
        for running in range(count):
            race.started(now, running)
        took = count * ROWS / rate[count] * (1 + drift * now)
        for running in reversed(range(count)):
            race.finished(now + took, ROWS, running)
        now += took + gap_s
    return counts


def test_two_calls_that_serve_more_are_kept():
    race = LiveRace(most=2)
    serve(race, {1: 100.0, 2: 150.0}, seconds=60)
    assert race.decided and race.concurrency == 2 and race.gains == {2: pytest.approx(1.5, abs=0.01)}


def test_a_third_call_that_adds_nothing_is_not_kept():
    race = LiveRace(most=4)
    serve(race, {1: 100.0, 2: 150.0, 3: 152.0, 4: 300.0}, seconds=120)
    assert race.decided and race.concurrency == 2
    assert race.gains == {2: pytest.approx(1.5, abs=0.01), 3: pytest.approx(152 / 150, abs=0.01)}


@pytest.mark.parametrize(("gain", "kept"), [(1.0, 1), (0.8, 1), (GAIN - 0.01, 1), (GAIN + 0.01, 2)])
def test_only_a_gain_of_at_least_the_threshold_changes_the_count(gain, kept):
    race = LiveRace(most=2)
    serve(race, {1: 100.0, 2: 100.0 * gain}, seconds=60)
    assert race.decided and race.concurrency == kept


def test_a_machine_that_slows_down_does_not_favour_either_count():
    """3 % slower per second: whichever count ran second in a pair would look slower, if it were
    always the same one."""
    race = LiveRace(most=2)
    serve(race, {1: 100.0, 2: 100.0}, seconds=40, drift=0.03)
    assert race.decided and race.concurrency == 1
    assert abs(race.gains[2] - 1) < 0.05


def test_windows_alternate_and_each_count_gets_its_turn_first():
    race = LiveRace(most=2, window_s=1.0)
    counts = serve(race, {1: 100.0, 2: 100.0}, seconds=2 * PAIRS * 1.2)
    runs = [counts[0]]
    for count in counts[1:]:
        if count != runs[-1]:
            runs.append(count)
    assert runs[:5] == [1, 2, 1, 2, 1]  # windows: 1 | 2 2 | 1 1 | 2 2 | 1 ...


def test_an_idle_model_sets_no_pace_and_never_changes_count():
    """Clients that keep the model idle a third of the time: their pace, not the model's."""
    race = LiveRace(most=2)
    took = ROWS / 100.0
    counts = serve(race, {1: 100.0, 2: 200.0}, seconds=120, gap_s=took / 2)
    assert not race.decided and set(counts) <= {1, 2} and race.concurrency in (1, 2)
    assert race.gains == {}


def test_a_window_waits_for_its_batches_before_the_next_starts():
    race = LiveRace(most=2, window_s=1.0)
    race.started(0.0, 0)
    race.finished(0.5, ROWS, 0)
    race.started(0.5, 0)
    assert race.may_start(0.9, running=1)  # the window is still open
    assert not race.may_start(1.1, running=1)  # its time is up: the running batch finishes first
    race.finished(1.2, ROWS, 0)
    assert race.may_start(1.2, running=0)


def test_one_core_or_a_count_at_the_most_is_decided_at_once():
    assert LiveRace(most=1).decided
    race = LiveRace(most=2, best=2)
    assert race.decided and race.concurrency == 2 and race.may_start(0.0, running=5)


def test_the_window_length_is_read_when_a_race_begins(monkeypatch):
    monkeypatch.setattr(concurrency, "WINDOW_S", 0.25)
    assert LiveRace(most=2).window_s == 0.25
