"""Where the mule runs its model compiled with XLA: the warm-up's race, decided on a fake clock.

Each fake call advances the clock by the cost the test gives it, so the race has a known
winner at each batch size whatever the machine is doing (tests/model runs the real XLA)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from app.inference import batch_costs, model_runner
from app.inference.model_runner import COMPILE_BUDGET_S, COMPILE_UP_TO_MS, ModelRunner
from tests.doubles import TOY_SPEC

BUCKETS = (1, 2, 4, 8)


class Clock:
    def __init__(self):
        self.seconds = 0.0

    def perf_counter(self) -> float:
        return self.seconds


class CostedModel:
    """The toy model's answers, costing `costs_ms[batch size]` of fake time per call."""

    def __init__(self, clock: Clock, costs_ms: dict[int, float], answer_offset: float = 0.0, fails: bool = False,
                 first_call_s: float = 0.0):
        self.clock, self.costs_ms, self.offset, self.fails = clock, costs_ms, answer_offset, fails
        self.first_call_s = first_call_s  # what compiling a shape costs, on its first call
        self.sizes: list[int] = []  # the batch size of each call

    def __call__(self, batch):
        (rows,) = batch
        if self.fails:
            raise RuntimeError("XLA compilation failed: unsupported op")
        self.clock.seconds += self.costs_ms[len(rows)] / 1000 + (0 if len(rows) in self.sizes else self.first_call_s)
        self.sizes.append(len(rows))
        return [rows.sum(axis=1, keepdims=True) + self.offset, rows * 2]


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(model_runner, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def raced(clock: Clock, plain_ms: dict[int, float], compiled: CostedModel | None) -> tuple[ModelRunner, CostedModel]:
    plain = CostedModel(clock, plain_ms)
    runner = ModelRunner(TOY_SPEC, plain, BUCKETS, compiler=(lambda: compiled) if compiled else None)
    runner.warmup(repeats=3)
    runner.compile_where_faster(repeats=5)
    return runner, plain


def test_each_batch_size_runs_whichever_call_the_warm_up_timed_faster(clock):
    compiled = CostedModel(clock, {1: 0.3, 2: 0.9, 4: 2.0, 8: 3.0})
    runner, plain = raced(clock, {1: 1.0, 2: 1.2, 4: 1.5, 8: 6.0}, compiled)
    assert runner.compiled_buckets == (1, 2)
    assert runner.batch_costs_ms == pytest.approx({1: 0.3, 2: 0.9, 4: 1.5, 8: 6.0})  # the cost of what each size runs
    assert 8 not in compiled.sizes  # over COMPILE_UP_TO_MS: never compiled
    assert 6.0 > COMPILE_UP_TO_MS

    buffer = runner.new_buffer()
    buffer[0][:3] = np.arange(12, dtype=np.float32).reshape(3, 4)
    compiled.sizes.clear()
    plain.sizes.clear()
    runner.run_padded(buffer, 1)
    runner.run_padded(buffer, 2)
    runner.run_padded(buffer, 3)  # padded to 4: the graph won there
    assert compiled.sizes == [1, 2] and plain.sizes == [4]


@pytest.mark.parametrize("compiled", [
    pytest.param({"answer_offset": 0.5}, id="answers-differently"),
    pytest.param({"fails": True}, id="does-not-compile"),
])
def test_a_compiled_call_that_fails_or_answers_differently_is_never_used(clock, compiled):
    faster = CostedModel(clock, dict.fromkeys(BUCKETS, 0.1), **compiled)
    runner, plain = raced(clock, dict.fromkeys(BUCKETS, 1.0), faster)
    assert runner.compiled_buckets == ()
    assert runner.batch_costs_ms == pytest.approx(dict.fromkeys(BUCKETS, 1.0))
    tried = len(faster.sizes)
    runner.run_padded(runner.new_buffer(), 1)
    assert len(faster.sizes) == tried and plain.sizes[-1] == 1
    runner.use_compiled((1, 2))  # nor when a respawn recalls sizes: the compiler was dropped
    assert runner.compiled_buckets == ()


def test_the_last_digits_may_differ_as_fused_float_arithmetic_does(clock):
    close = CostedModel(clock, dict.fromkeys(BUCKETS, 0.1), answer_offset=1e-6)
    runner, _ = raced(clock, dict.fromkeys(BUCKETS, 1.0), close)
    assert runner.compiled_buckets == BUCKETS


def test_a_respawned_mule_compiles_the_sizes_its_predecessor_chose_without_timing(clock):
    compiled = CostedModel(clock, dict.fromkeys(BUCKETS, 0.1))
    runner = ModelRunner(TOY_SPEC, CostedModel(clock, dict.fromkeys(BUCKETS, 1.0)), BUCKETS,
                         compiler=lambda: compiled)
    runner.warmup(repeats=0)
    runner.use_compiled((1, 4))
    assert runner.compiled_buckets == (1, 4) and compiled.sizes == [1, 4]  # one compiling call each
    runner.run_padded(runner.new_buffer(), 3)
    assert compiled.sizes == [1, 4, 4]


def test_without_a_compiler_nothing_is_raced(clock):
    runner, plain = raced(clock, dict.fromkeys(BUCKETS, 1.0), None)
    assert runner.compiled_buckets == () and len(plain.sizes) == len(BUCKETS) * 4  # warm-up: 1 + 3 each


def test_the_sizes_that_run_compiled_are_kept_for_the_next_mule_with_the_costs(tmp_path):
    model, costs = tmp_path / "model.keras", tmp_path / "costs"
    model.write_bytes(b"weights")
    timings = batch_costs.Timings({1: 0.3, 2: 0.9, 4: 1.5}, compiled=(1, 2))
    batch_costs.remember(costs, model, (1, 2, 4), timings)
    assert batch_costs.recall(costs, model, (1, 2, 4)) == timings
    saved = next(costs.iterdir())
    older = json.loads(saved.read_text())
    del older["compiled"]  # written before XLA was raced: its successor races afresh
    saved.write_text(json.dumps(older))
    assert batch_costs.recall(costs, model, (1, 2, 4)) is None


def test_once_xla_lost_at_two_sizes_in_a_row_larger_ones_are_not_compiled(clock):
    compiled = CostedModel(clock, {1: 0.5, 2: 1.5, 4: 2.0, 8: 0.1})
    runner, _ = raced(clock, dict.fromkeys(BUCKETS, 1.0), compiled)
    assert runner.compiled_buckets == (1,)
    assert 8 not in compiled.sizes  # what XLA loses grows with the rows: not raced at 8
    assert runner.batch_costs_ms == pytest.approx({1: 0.5, 2: 1.0, 4: 1.0, 8: 1.0})


def test_the_race_stops_trying_new_sizes_once_compiling_has_taken_its_budget(clock):
    slow = CostedModel(clock, dict.fromkeys(BUCKETS, 0.1), first_call_s=COMPILE_BUDGET_S / 2 + 1)
    runner, _ = raced(clock, dict.fromkeys(BUCKETS, 1.0), slow)
    assert runner.compiled_buckets == (1, 2)  # 1 and 2 took the budget: 4 and 8 never compiled
    assert set(slow.sizes) == {1, 2}


def test_a_respawned_mule_whose_compile_fails_serves_with_the_graph(clock):
    plain = CostedModel(clock, dict.fromkeys(BUCKETS, 1.0))
    runner = ModelRunner(TOY_SPEC, plain, BUCKETS,
                         compiler=lambda: CostedModel(clock, dict.fromkeys(BUCKETS, 0.1), fails=True))
    runner.warmup(repeats=0)
    runner.use_compiled((1, 4))
    assert runner.compiled_buckets == ()
    (total, _) = runner.run_padded(runner.new_buffer(), 1)
    assert plain.sizes[-1] == 1 and total.shape == (1, 1)
