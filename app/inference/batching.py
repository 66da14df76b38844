"""When to run the next batch and what goes in it. Pure logic, no I/O, so it is unit-tested alone.

The policy never makes low load slower: when the model is idle, whatever is queued runs at once
(a lone request is a batch of one). Requests that arrive while a batch runs queue up and form
the next batch, up to MAX_BATCH_SIZE rows. BATCH_TIMEOUT_MS > 0 lets a user trade latency for
fuller batches: a partial batch then waits until its oldest request is that old.

"Up to MAX_BATCH_SIZE" is not always best: on a CPU the time per row of a batch, T(n)/n, falls
and then rises again once a batch's activations no longer fit in cache (MobileNetV2 on a 2-core
machine: 9.8 ms per row at 4, 12.8 ms at 16). `efficient_batch` picks the limit from the costs the
model runner measured at warm-up, so a long queue runs as several cheap batches, not one dear one.

The same costs decide between padding and splitting. A batch is padded up to a bucket size, and
padding rows cost as much as real ones on a CPU: 13 rows padded to 16 waste a fifth of the call.
So when T(n) is known the batch is the longest run of queued requests, oldest first, whose cost
per real row is near the cheapest such run's: 12 of 13 run now and the 13th leads the next batch,
while on a GPU, where padding is nearly free, the 13 still run together.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


def per_row_ms(costs_ms: dict[int, float]) -> dict[int, float]:
    """Batch size -> time per row, from batch size -> time per call (sizes never timed left out)."""
    return {size: ms / size for size, ms in costs_ms.items() if ms > 0}


TOLERANCE = 0.05  # costs this close count as equal: the noise of a warm-up's timing


def efficient_batch(costs_ms: dict[int, float], tolerance: float = TOLERANCE) -> int | None:
    """The largest batch size whose time per row is within `tolerance` of the cheapest one; None
    when nothing was measured."""
    per_row = per_row_ms(costs_ms)
    return _largest_near_cheapest(per_row, tolerance) if per_row else None


def _largest_near_cheapest(cost_by_size: dict[int, float], tolerance: float) -> int:
    """Ties (within `tolerance`) go to the larger size: it costs the same per row and leaves fewer
    requests waiting for the next call."""
    cheapest = min(cost_by_size.values())
    return max(size for size, cost in cost_by_size.items() if cost <= cheapest * (1 + tolerance))


@dataclass
class Pending:
    """One queued request (or chunk): its rows sit in shared-memory slot `slot`."""

    conn: object
    slot: int
    seq: int
    rows: int
    deadline: float
    arrival: float
    shape: tuple[int, ...] = ()  # sizes of its variable dimensions: only equal shapes share a batch
    version: int = 1  # the model version its rows were written for: versions never share a batch

    @property
    def key(self) -> tuple[int, tuple[int, ...]]:
        return self.version, self.shape


@dataclass
class Decision:
    batch: list[Pending] = field(default_factory=list)
    expired: list[Pending] = field(default_factory=list)
    wait: float | None = None  # seconds until the policy wants to look again; None = until a message


class BatchPolicy:
    def __init__(self, max_batch: int, timeout_s: float, max_queue_rows: int):
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.max_queue_rows = max_queue_rows
        self.costs_ms: dict[int, float] = {}  # bucket size -> ms per call; empty: always pad
        self.queue: deque[Pending] = deque()
        self.queued_rows = 0

    def admit(self, request: Pending) -> bool:
        """Queue a request, or refuse it (the caller answers 503) when the queue bound is reached."""
        if self.queued_rows + request.rows > self.max_queue_rows:
            return False
        self.queue.append(request)
        self.queued_rows += request.rows
        return True

    def drop(self, conn: object) -> list[Pending]:
        """Forget the requests of a connection that hung up (its worker died)."""
        gone = [p for p in self.queue if p.conn is conn]
        if gone:
            self.queue = deque(p for p in self.queue if p.conn is not conn)
            self.queued_rows -= sum(p.rows for p in gone)
        return gone

    def decide(self, now: float) -> Decision:
        """Take the next batch if it should run now: the oldest request and those queued after it
        with the same shape (FIFO, whole requests, up to max_batch rows). Requests of another
        shape wait for a later batch, and their presence makes this one run at once."""
        decision = Decision()
        decision.expired = [p for p in self.queue if p.deadline <= now]
        if decision.expired:
            self.queue = deque(p for p in self.queue if p.deadline > now)
            self.queued_rows -= sum(p.rows for p in decision.expired)
        if not self.queue:
            return decision
        key = self.queue[0].key
        rows, batch = 0, []
        for pending in self.queue:
            if pending.key != key:
                continue
            if batch and rows + pending.rows > self.max_batch:
                break  # (an oversized first request still runs alone rather than stall the queue)
            rows += pending.rows
            batch.append(pending)
        oldest = self.queue[0].arrival
        full = rows >= self.max_batch or len(batch) < len(self.queue)
        if full or self.timeout_s <= 0 or now - oldest >= self.timeout_s:
            batch = self._cheapest_run(batch)
            rows = sum(p.rows for p in batch)
            taken = {id(p) for p in batch}
            self.queue = deque(p for p in self.queue if id(p) not in taken)
            self.queued_rows -= rows
            decision.batch = batch
        else:
            decision.wait = oldest + self.timeout_s - now
        return decision

    def _cheapest_run(self, batch: list[Pending]) -> list[Pending]:
        """The longest leading part of `batch` whose model time per real row, padding included,
        is near the cheapest leading part's (see the module's docstring)."""
        if not self.costs_ms or len(batch) == 1:
            return batch
        sizes = sorted(self.costs_ms)
        per_row, rows = {}, 0
        for count, pending in enumerate(batch, start=1):
            rows += pending.rows
            bucket = next((size for size in sizes if size >= rows), None)
            if bucket is None:  # beyond the buckets the runner calls in chunks: no single cost
                break
            per_row[count] = self.costs_ms[bucket] / rows
        return batch[:_largest_near_cheapest(per_row, TOLERANCE)] if per_row else batch
