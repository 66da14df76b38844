"""MODEL_CONCURRENCY=auto: how many batches the mule runs in the model at once, chosen under load.

Whether a second call adds throughput depends on the model, the machine and what else runs on
its cores. MobileNetV2 on a 2-core AMD EPYC VM (family 25 model 17) served 1.14 x / 1.24 x the
in-process ceiling at 16 / 32 clients with two calls at once against 0.92 x / 1.07 x with one, in
the same hour; on another 2-core AMD EPYC VM two were slower (61 against 73 req/s). Timed alone at warm-up, two
calls of half the rows gained only 1.02-1.10 x there: the gain comes from filling the gaps the
workers' decoding and the mule's own loop leave, which only the live server has. So the mule
races the counts on its own traffic: alternating windows of each count, each timed from its
first batch's start to its last batch's end, and the next count is kept only for a median gain
in rows per second of at least GAIN over PAIRS pairs. A window in which the model sat idle more
than MOST_IDLE of the time measured the clients, not the model, and is timed again; so a server
that is never busy never changes count. The race is pure bookkeeping on the times the mule
passes in, so it is tested on a made-up clock.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

WINDOW_S = 3.0  # batches start for this long per window; a window ends when they have all finished
PAIRS = 5  # windows of each count; alternating, so a slow spell of the machine hits both alike
# A saturated server's latency is its clients over its throughput (Little's law): more rows per
# second is also less waiting, and at light load the count hardly matters (batches rarely meet in
# the model). So the bar only has to clear the noise of a median of PAIRS ratios (about 5 % on a
# shared 2-core VM whose speed swings 15 % from one window to the next).
GAIN = 1.05
# of a window's time with no batch in the model: past this, the clients set the pace, not the model
# (MobileNetV2 with one call at a time measured 1-2 % at 32 clients; at one client the model
# waits out each request's decode and HTTP, about a fifth of a 26 ms round trip)
MOST_IDLE = 0.05
LEAST_BATCHES = 3  # a window of fewer batches says too little
MOST_CONCURRENCY = 4  # nor more than one model thread per core


def most_model_threads() -> int:
    """The most model calls MODEL_CONCURRENCY=auto runs at once: one per core, at most MOST_CONCURRENCY."""
    return max(1, min(MOST_CONCURRENCY, len(os.sched_getaffinity(0))))


@dataclass
class _Window:
    """One window's batches: `count` at once, from the first one's start to the last one's end."""

    count: int
    start: float
    rows: int = 0
    batches: int = 0
    end: float = 0.0
    idle_s: float = 0.0
    idle_since: float | None = None


@dataclass
class LiveRace:
    """Which count the mule runs now (`concurrency`), and when it may start a batch (`may_start`)."""

    most: int
    best: int = 1
    window_s: float = field(default_factory=lambda: WINDOW_S)
    trying: int | None = None
    decided: bool = False
    gains: dict[int, float] = field(default_factory=dict)
    _rates: dict[int, list[float]] = field(default_factory=dict)
    _window: _Window | None = None
    _closed: bool = False  # the window's time is up: its batches finish, no new ones start

    def __post_init__(self) -> None:
        self._next_candidate()

    @property
    def concurrency(self) -> int:
        """Model calls to run at once now: the window's count while it runs, else the next one's."""
        if self._window is not None:
            return self._window.count
        return self.best if self.decided else self._next_count()

    def may_start(self, now: float, running: int) -> bool:
        """Whether a batch may start now: not while a finished window's batches drain (their
        time would run into the next window's)."""
        window = self._window
        if self.decided or window is None:
            return True
        if not self._closed and now - window.start >= self.window_s:
            self._closed = True
        if self._closed:
            if running:
                return False
            self._end_window()
        return True

    def started(self, now: float, running: int) -> None:
        """A batch was handed to the model; `running`: batches in it before this one."""
        if self.decided:
            return
        if self._window is None:
            self._window = _Window(self._next_count(), now)
        window = self._window
        if window.idle_since is not None:
            window.idle_s += now - window.idle_since
            window.idle_since = None
        window.batches += 1

    def finished(self, now: float, rows: int, running: int) -> None:
        """A batch of `rows` rows came back; `running`: batches still in the model."""
        window = self._window
        if self.decided or window is None:
            return
        window.rows += rows
        window.end = now
        if not running:
            window.idle_since = now

    def _end_window(self) -> None:
        window, self._window, self._closed = self._window, None, False
        busy = window.end - window.start
        if window.batches < LEAST_BATCHES or busy <= 0 or window.idle_s > MOST_IDLE * busy:
            return  # the clients, not the model, set its pace: timed again
        log.info("concurrency race: %d call(s) at once, %d rows in %.2f s (%.1f rows/s), model idle %.1f %%",
                 window.count, window.rows, busy, window.rows / busy, 100 * window.idle_s / busy)
        self._rates.setdefault(window.count, []).append(window.rows / busy)
        best, trying = self._rates.get(self.best, []), self._rates.get(self.trying, [])
        if min(len(best), len(trying)) < PAIRS:
            return
        gain = statistics.median(t / b for t, b in zip(trying, best))
        self.gains[self.trying] = round(gain, 3)
        if gain >= GAIN:
            self.best = self.trying
        if gain < GAIN or not self._next_candidate():
            self.decided = True
            log.info("%d model call(s) at once: rows per second under load with n calls at once against the"
                     " best fewer, by n: %s (more only from %.2f x)", self.best, self.gains, GAIN)
            return
        self._rates = {self.best: []}

    def _next_candidate(self) -> bool:
        self.trying = self.best + 1 if self.best < self.most else None
        self.decided = self.trying is None
        return not self.decided

    def _next_count(self) -> int:
        """The count of the next window: each pair times both counts, in turns (best first in
        even pairs, last in odd ones), so a machine speeding up or slowing down favours neither."""
        done_best = len(self._rates.get(self.best, []))
        done_trying = len(self._rates.get(self.trying, []))
        if done_best != done_trying:
            return self.best if done_best < done_trying else self.trying
        return self.best if done_best % 2 == 0 else self.trying
