"""app.inference.batching.BatchPolicy: when the next batch runs and what goes in it."""

from __future__ import annotations

import itertools
import random

import pytest

from app.inference.batching import BatchPolicy, Pending, efficient_batch

FAR = 1e9  # a deadline no test reaches


class Conn:
    """Stands in for a worker's connection; compared by identity, like the real ones."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Conn({self.name})"


_seq = itertools.count()


def pending(rows: int = 1, arrival: float = 0.0, deadline: float = FAR, conn: object | None = None) -> Pending:
    seq = next(_seq)
    return Pending(conn=conn if conn is not None else Conn(f"c{seq}"), slot=seq, seq=seq, rows=rows,
                   deadline=deadline, arrival=arrival)


def policy(max_batch: int = 8, timeout_s: float = 0.0, max_queue_rows: int = 64) -> BatchPolicy:
    return BatchPolicy(max_batch=max_batch, timeout_s=timeout_s, max_queue_rows=max_queue_rows)


def test_empty_queue_waits_for_a_message():
    decision = policy().decide(now=5.0)
    assert decision.batch == [] and decision.expired == [] and decision.wait is None


def test_lone_request_runs_at_once_without_timeout():
    p = policy(timeout_s=0.0)
    request = pending(rows=1, arrival=10.0)
    assert p.admit(request)
    decision = p.decide(now=10.0)
    assert decision.batch == [request]
    assert decision.wait is None
    assert p.queued_rows == 0 and not p.queue


def test_everything_queued_runs_together_without_timeout():
    p = policy(max_batch=8, timeout_s=0.0)
    requests = [pending(rows=2, arrival=1.0 + i / 100) for i in range(3)]
    for r in requests:
        p.admit(r)
    decision = p.decide(now=1.05)
    assert decision.batch == requests
    assert p.queued_rows == 0


def test_partial_batch_waits_for_the_timeout():
    p = policy(max_batch=8, timeout_s=0.010)
    first = pending(rows=2, arrival=100.000)
    p.admit(first)
    decision = p.decide(now=100.003)
    assert decision.batch == []
    assert decision.wait == pytest.approx(0.007)
    assert p.queued_rows == 2

    second = pending(rows=3, arrival=100.005)
    p.admit(second)
    decision = p.decide(now=100.006)
    assert decision.batch == []
    assert decision.wait == pytest.approx(0.004)  # counted from the oldest request

    decision = p.decide(now=100.010)  # the oldest is now timeout old
    assert decision.batch == [first, second]
    assert decision.wait is None
    assert p.queued_rows == 0


def test_full_batch_runs_before_the_timeout():
    p = policy(max_batch=4, timeout_s=1.0)
    requests = [pending(rows=2, arrival=0.0), pending(rows=2, arrival=0.001)]
    for r in requests:
        p.admit(r)
    decision = p.decide(now=0.002)
    assert decision.batch == requests
    assert decision.wait is None


def test_batch_runs_early_when_the_next_request_would_not_fit():
    # 3 + 3 rows do not fit in 4: the first request is a batch already, waiting adds nothing.
    p = policy(max_batch=4, timeout_s=1.0)
    first, second = pending(rows=3, arrival=0.0), pending(rows=3, arrival=0.0)
    p.admit(first)
    p.admit(second)
    decision = p.decide(now=0.001)
    assert decision.batch == [first]
    assert p.queue[0] is second and p.queued_rows == 3
    decision = p.decide(now=0.002)  # the second alone is partial again: it waits
    assert decision.batch == [] and decision.wait == pytest.approx(0.998)


def test_batches_never_exceed_max_batch_and_keep_fifo_order():
    rng = random.Random(7)
    p = policy(max_batch=8, timeout_s=0.0, max_queue_rows=10_000)
    requests = [pending(rows=rng.randint(1, 8), arrival=i * 0.001) for i in range(200)]
    for r in requests:
        assert p.admit(r)
    taken: list[Pending] = []
    now = 1.0
    while p.queue:
        before = p.queued_rows
        decision = p.decide(now)
        assert decision.batch, "a non-empty queue without a timeout always yields a batch"
        rows = sum(r.rows for r in decision.batch)
        assert rows <= 8
        # greedy: the next request would not have fitted
        if p.queue:
            assert rows + p.queue[0].rows > 8
        assert p.queued_rows == before - rows
        taken.extend(decision.batch)
        now += 0.01
    assert [r.seq for r in taken] == [r.seq for r in requests]  # whole requests, FIFO, none lost
    assert p.queued_rows == 0


def test_request_of_exactly_max_batch_rows():
    p = policy(max_batch=4, timeout_s=1.0)
    big = pending(rows=4, arrival=0.0)
    p.admit(big)
    assert p.decide(now=0.0).batch == [big]


def test_expired_requests_are_returned_and_not_run():
    p = policy(max_batch=8, timeout_s=0.0)
    late = pending(rows=2, arrival=0.0, deadline=5.0)
    on_time = pending(rows=1, arrival=0.1, deadline=50.0)
    exactly = pending(rows=3, arrival=0.2, deadline=10.0)
    for r in (late, on_time, exactly):
        p.admit(r)
    decision = p.decide(now=10.0)
    assert decision.expired == [late, exactly]  # deadline <= now counts as expired
    assert decision.batch == [on_time]
    assert p.queued_rows == 0


def test_only_expired_requests():
    p = policy(timeout_s=0.5)
    late = pending(rows=2, arrival=0.0, deadline=1.0)
    p.admit(late)
    decision = p.decide(now=2.0)
    assert decision.expired == [late]
    assert decision.batch == [] and decision.wait is None
    assert p.queued_rows == 0 and not p.queue


def test_expired_requests_leave_room_for_a_full_batch():
    p = policy(max_batch=4, timeout_s=1.0)
    late = pending(rows=4, arrival=0.0, deadline=0.5)
    a, b = pending(rows=2, arrival=0.1), pending(rows=1, arrival=0.2)
    for r in (late, a, b):
        p.admit(r)
    decision = p.decide(now=0.6)
    assert decision.expired == [late]
    assert decision.batch == []  # 3 rows of 4, oldest 0.5 s old of 1 s
    assert decision.wait == pytest.approx(0.5)
    assert p.queued_rows == 3


def test_admit_refuses_past_max_queue_rows():
    p = policy(max_batch=8, max_queue_rows=10)
    assert p.admit(pending(rows=6))
    assert p.admit(pending(rows=4))  # exactly at the bound
    assert p.queued_rows == 10
    refused = pending(rows=1)
    assert not p.admit(refused)
    assert refused not in p.queue
    assert p.queued_rows == 10 and len(p.queue) == 2


def test_admit_after_room_is_made():
    p = policy(max_batch=8, max_queue_rows=8)
    assert p.admit(pending(rows=8))
    assert not p.admit(pending(rows=1))
    assert len(p.decide(now=0.0).batch) == 1
    assert p.admit(pending(rows=8))


def test_drop_removes_a_dead_connections_requests():
    p = policy(max_batch=8, timeout_s=1.0)
    dead, alive = Conn("dead"), Conn("alive")
    requests = [
        pending(rows=2, conn=dead), pending(rows=3, conn=alive), pending(rows=1, conn=dead), pending(rows=4, conn=alive)
    ]
    for r in requests:
        p.admit(r)
    assert p.queued_rows == 10
    gone = p.drop(dead)
    assert gone == [requests[0], requests[2]]
    assert list(p.queue) == [requests[1], requests[3]]
    assert p.queued_rows == 7
    assert p.drop(dead) == []
    assert p.queued_rows == 7


def test_drop_compares_connections_by_identity():
    class Equal:
        def __eq__(self, other):
            return True

        __hash__ = object.__hash__

    p = policy()
    mine = pending(conn=Equal())
    p.admit(mine)
    assert p.drop(Equal()) == []
    assert list(p.queue) == [mine]


# --- the batch limit chosen from measured batch costs ---------------------------------------

def test_efficient_batch_stops_where_the_cost_per_row_rises_again():
    # MobileNetV2 on a 2-core CPU: cheapest per row at 4, dearer at 8 and 16 (cache misses)
    costs = {1: 15.0, 2: 22.8, 4: 39.2, 8: 87.9, 16: 204.6}
    assert efficient_batch(costs) == 4


def test_efficient_batch_takes_the_largest_when_bigger_is_always_cheaper():
    # a GPU-like cost: a fixed overhead per call, little per row
    assert efficient_batch({1: 5.0, 2: 5.2, 4: 5.6, 8: 6.4, 16: 8.0}) == 16


def test_efficient_batch_prefers_the_larger_of_near_ties():
    assert efficient_batch({1: 10.0, 2: 16.0, 4: 32.0, 8: 65.0}) == 8  # 8.1 ms/row is within 5% of 8.0
    assert efficient_batch({1: 10.0, 2: 16.0, 4: 32.0, 8: 68.0}) == 4  # 8.5 ms/row is not
    assert efficient_batch({1: 10.0, 2: 16.0, 4: 32.0, 8: 68.0}, tolerance=0.1) == 8


def test_efficient_batch_without_measurements():
    assert efficient_batch({}) is None
    assert efficient_batch({1: 0.0}) is None


def test_a_lowered_limit_splits_a_long_queue_into_batches_of_that_size():
    p = policy(max_batch=16, timeout_s=0.0)
    p.max_batch = 4
    requests = [pending(rows=1, arrival=i / 100) for i in range(10)]
    for r in requests:
        p.admit(r)
    sizes = []
    while p.queue:
        sizes.append(len(p.decide(now=1.0).batch))
    assert sizes == [4, 4, 2]


def test_only_requests_of_the_oldest_ones_shape_share_a_batch():
    p = policy(max_batch=8)
    a, b, c, d = (pending(arrival=i / 10) for i in range(4))
    a.shape, b.shape, c.shape, d.shape = (3,), (5,), (3,), (5,)
    for r in (a, b, c, d):
        p.admit(r)
    first = p.decide(now=1.0)
    assert first.batch == [a, c] and list(p.queue) == [b, d] and p.queued_rows == 2
    assert p.decide(now=1.0).batch == [b, d] and p.queued_rows == 0


BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)
CPU_LIKE = {n: 5.0 + 10.0 * n for n in BUCKETS}  # every row, padding or not, costs 10 ms
GPU_LIKE = {n: 10.0 + 0.1 * n for n in BUCKETS}  # the call costs, rows hardly do


def queued(p: BatchPolicy, rows: list[int]) -> list[Pending]:
    requests = [pending(rows=r, arrival=i / 100) for i, r in enumerate(rows)]
    for r in requests:
        assert p.admit(r)
    return requests


def test_with_measured_costs_a_batch_that_would_be_padded_leaves_the_newest_for_the_next():
    p = policy(max_batch=16)
    p.costs_ms = CPU_LIKE
    requests = queued(p, [1] * 13)  # 13 rows would run padded to 16: 3 rows of the call wasted
    assert p.decide(now=1.0).batch == requests[:12]
    assert list(p.queue) == requests[12:] and p.queued_rows == 1  # the 13th leads the next batch
    assert p.decide(now=1.0).batch == requests[12:]


def test_padding_stays_when_it_is_cheaper_than_another_call():
    p = policy(max_batch=16)
    p.costs_ms = GPU_LIKE
    requests = queued(p, [1] * 13)
    assert p.decide(now=1.0).batch == requests  # padded to 16: one call instead of two


def test_without_measured_costs_batches_are_padded_as_before():
    p = policy(max_batch=16)
    requests = queued(p, [1] * 13)
    assert p.decide(now=1.0).batch == requests


def test_requests_of_several_rows_are_kept_whole():
    p = policy(max_batch=16)
    p.costs_ms = CPU_LIKE
    requests = queued(p, [4, 4, 1])  # 9 rows would run padded to 12; the first two fill 8
    assert p.decide(now=1.0).batch == requests[:2]
    assert p.decide(now=1.0).batch == requests[2:]


def test_with_any_costs_every_request_runs_once_in_arrival_order():
    rng = random.Random(7)
    for _ in range(300):
        p = policy(max_batch=16)
        p.costs_ms = {n: rng.uniform(1.0, 50.0) * n ** rng.uniform(0.2, 1.3) for n in BUCKETS}
        requests = queued(p, [rng.randint(1, 6) for _ in range(rng.randint(1, 12))])
        ran = []
        while p.queue:
            batch = p.decide(now=1.0).batch
            assert batch and sum(r.rows for r in batch) <= 16
            ran += batch
        assert ran == requests and p.queued_rows == 0
