"""MODEL_CONCURRENCY=auto: the warm-up race between one model call at a time and several.

The models here stand in for what decides the race on a real machine: one whose calls share
nothing (each sleeps, as a call waiting on cores of its own would), one whose calls exclude each
other (a lock: a model that already fills every core) and one that fits two at once (a
semaphore of two). Each call lasts 20 ms, long enough that the threads' start-up and a busy
test machine's scheduling noise stay far from the 10 % the race asks for."""

from __future__ import annotations

import threading
import time

import pytest

from app.inference import batch_costs
from app.inference.model_runner import CONCURRENCY_GAIN, INLINE_CALL_MS, ModelRunner
from tests.doubles import TOY_SPEC

BUCKETS = (1, 2, 4, 8)
CALL_S = 0.020


class Lasting:
    """The toy model's answers, each call taking CALL_S; at most `at_once` calls run together."""

    def __init__(self, at_once: int | None):
        self._gate = threading.Semaphore(at_once) if at_once else None
        self.calls = 0

    def __call__(self, batch):
        (rows,) = batch
        self.calls += 1
        if self._gate is None:
            time.sleep(CALL_S)
        else:
            with self._gate:
                time.sleep(CALL_S)
        return [rows.sum(axis=1, keepdims=True), rows * 2]


def warmed(model) -> ModelRunner:
    runner = ModelRunner(TOY_SPEC, model, BUCKETS)
    runner.batch_costs_ms = dict.fromkeys(BUCKETS, CALL_S * 1000)  # as warmup() would time it
    return runner


@pytest.mark.parametrize(("at_once", "most", "chosen"), [
    (None, 2, 2),  # calls that share nothing: as many as allowed
    (None, 3, 3),
    (1, 2, 1),  # calls that exclude each other: no gain, one
    (1, 4, 1),
    (2, 4, 2),  # room for two: a third gains nothing
])
def test_the_race_keeps_another_call_only_where_it_gains(at_once, most, chosen):
    runner = warmed(Lasting(at_once))
    assert runner.choose_concurrency(8, most) == chosen
    assert runner.concurrency == chosen
    assert runner.warmup_seconds > 0


def test_a_call_cheap_enough_for_the_loop_is_not_raced():
    model = Lasting(None)
    runner = warmed(model)
    runner.batch_costs_ms = {1: 1.0, 2: 2.0, 4: INLINE_CALL_MS, 8: INLINE_CALL_MS + 1}
    assert runner.choose_concurrency(4, most=4) == 1
    assert model.calls == 0
    assert runner.choose_concurrency(8, most=2) == 2  # the limit's bucket costs more: raced
    assert model.calls > 0


def test_one_core_or_an_untimed_size_is_not_raced():
    model = Lasting(None)
    runner = warmed(model)
    assert runner.choose_concurrency(8, most=1) == 1
    runner.batch_costs_ms = {}
    assert runner.choose_concurrency(8, most=2) == 1
    assert model.calls == 0


def test_a_gain_under_the_threshold_is_refused(monkeypatch):
    """Two calls at once that take 1.9 x as long as one: 5 % more rows per second, not enough."""
    runner = warmed(Lasting(None))
    window = {1: 1.0, 2: 1.9}
    monkeypatch.setattr(runner, "_window", lambda buffers, size: window[len(buffers)])
    assert 2 / 1.9 < CONCURRENCY_GAIN
    assert runner.choose_concurrency(8, most=2) == 1
    window[2] = 2 / (CONCURRENCY_GAIN + 0.01)
    assert runner.choose_concurrency(8, most=2) == 2


def test_the_choice_is_kept_for_a_respawned_mule(tmp_path):
    model_file = tmp_path / "model.keras"
    model_file.write_bytes(b"weights")
    timings = batch_costs.Timings({1: 10.0, 8: 40.0}, (1,), concurrency=2)
    batch_costs.remember(tmp_path / "costs", model_file, (1, 8), timings)
    assert batch_costs.recall(tmp_path / "costs", model_file, (1, 8)) == timings
