"""MODEL_CONCURRENCY=auto: the warm-up race between one model call at a time and several.

The models here stand in for what decides the race on a real machine: one whose calls share
nothing (each sleeps, as a call waiting on cores of its own would), one whose calls exclude each
other (a lock: a model that already fills every core) and one that fits two at once (a
semaphore of two). A call lasts 5 ms per row of its bucket, 10 ms or more for every size the
race runs here: long enough that the threads' start-up and a busy test machine's scheduling
noise stay far from the 10 % the race asks for."""

from __future__ import annotations

import threading
import time

import pytest

from app.config import Settings
from app.inference import batch_costs
from app.inference.model_runner import CONCURRENCY_GAIN, INLINE_CALL_MS, ModelRunner, rows_in_model
from tests.doubles import TOY_SPEC

BUCKETS = (1, 2, 4, 8)
ROW_S = 0.005


class Lasting:
    """The toy model's answers, each call taking ROW_S per row; at most `at_once` calls run together."""

    def __init__(self, at_once: int | None):
        self._gate = threading.Semaphore(at_once) if at_once else None
        self.calls = 0
        self.sizes: set[int] = set()

    def __call__(self, batch):
        (rows,) = batch
        self.calls += 1
        self.sizes.add(len(rows))
        if self._gate is None:
            time.sleep(ROW_S * len(rows))
        else:
            with self._gate:
                time.sleep(ROW_S * len(rows))
        return [rows.sum(axis=1, keepdims=True), rows * 2]


def warmed(model) -> ModelRunner:
    runner = ModelRunner(TOY_SPEC, model, BUCKETS)
    runner.batch_costs_ms = {size: ROW_S * 1000 * size for size in BUCKETS}  # as warmup() would time it
    return runner


@pytest.mark.parametrize(("at_once", "most", "chosen"), [
    (None, 2, 2),  # calls that share nothing: as many as allowed (8 rows as 2 x 4)
    (None, 3, 3),  # 3 x 2 rows: 6 rows at a time, each in 2 rows' time, 1.5 x two calls' rate
    (1, 2, 1),  # calls that exclude each other: no gain, one
    (1, 4, 1),
    (2, 4, 2),  # room for two: a third gains nothing
])
def test_the_race_keeps_another_call_only_where_it_gains(at_once, most, chosen):
    runner = warmed(Lasting(at_once))
    assert runner.choose_concurrency(8, most) == chosen
    assert runner.concurrency == chosen
    assert runner.warmup_seconds > 0


def test_rows_are_not_split_into_calls_cheap_enough_for_the_loop():
    """Those run on the mule's loop one at a time: no thread would ever run them."""
    model = Lasting(None)
    runner = warmed(model)
    runner.batch_costs_ms = {1: 1.0, 2: INLINE_CALL_MS, 4: INLINE_CALL_MS + 1, 8: INLINE_CALL_MS + 2}
    assert runner.choose_concurrency(2, most=4) == 1
    assert model.calls == 0
    assert runner.choose_concurrency(8, most=4) == 2  # 2 x 4 rows raced, 3 x 2 not
    assert model.calls > 0 and model.sizes <= {4, 8}


def test_one_core_or_an_untimed_size_is_not_raced():
    model = Lasting(None)
    runner = warmed(model)
    assert runner.choose_concurrency(8, most=1) == 1
    runner.batch_costs_ms = {}
    assert runner.choose_concurrency(8, most=2) == 1
    assert model.calls == 0


def test_a_gain_under_the_threshold_is_refused(monkeypatch):
    """8 rows as two calls of 4 at once in 0.95 of the time of one call of 8: 5 % more rows per
    second, not enough."""
    runner = warmed(Lasting(None))
    window = {(1, 8): 1.0, (2, 4): 0.95}
    monkeypatch.setattr(runner, "_window", lambda buffers, size: window[len(buffers), size])
    assert 1 / 0.95 < CONCURRENCY_GAIN
    assert runner.choose_concurrency(8, most=2) == 1
    window[2, 4] = 1 / (CONCURRENCY_GAIN + 0.01)
    assert runner.choose_concurrency(8, most=2) == 2


def test_the_choice_is_kept_for_a_respawned_mule(tmp_path):
    model_file = tmp_path / "model.keras"
    model_file.write_bytes(b"weights")
    timings = batch_costs.Timings({1: 10.0, 8: 40.0}, (1,), concurrency=2)
    batch_costs.remember(tmp_path / "costs", model_file, (1, 8), timings)
    assert batch_costs.recall(tmp_path / "costs", model_file, (1, 8)) == timings


def test_the_rows_raced_are_half_the_worker_slots_up_to_the_batch_limit():
    costs = {1: 10.0, 2: 12.0, 4: 20.0, 8: 40.0, 16: 64.0}  # 16 rows cost least per row
    assert rows_in_model(Settings(workers=4, threads=4, max_batch_size=16), costs) == 8
    assert rows_in_model(Settings(workers=8, threads=8, max_batch_size=16), costs) == 16
    assert rows_in_model(Settings(workers=8, threads=8, max_batch_size=16, batch_autotune=False), costs) == 16
    assert rows_in_model(Settings(workers=1, threads=1), costs) == 1
