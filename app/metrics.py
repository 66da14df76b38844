"""Prometheus metrics: one view of every uWSGI worker and the mule, at GET /metrics.

Counters and histograms use prometheus_client's multiprocess mode: each process writes its own
file under PROMETHEUS_MULTIPROC_DIR (app.launch sets it, empty at each start, before anything
imports prometheus_client), and a scrape sums the files of live and dead processes alike, so no
counter goes backwards when a worker or the mule is restarted. What describes the present (rows
queued, batches in flight, the model's state, memory) is read afresh at scrape time from the
mule's status and /proc instead, so a dead process can never leave a stale value behind.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.inference.backend import Status

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES = ("loading", "ready", "failed")

# --- per request, in the workers ----------------------------------------------------------
STARTED = "kerasrv.started"  # WSGI environ key: when app.fast_lane took a request it hands to Flask
REQUESTS = Counter("kerasrv_requests", "HTTP requests answered by the app, by route and status code.",
                   ["model", "route", "code"])
REQUEST_SECONDS = Histogram("kerasrv_request_duration_seconds",
                            "Time the app took to answer, by route (nginx's access log has the total).",
                            ["model", "route"], buckets=LATENCY_BUCKETS)
PROCESS_STARTS = Counter("kerasrv_process_starts", "Starts of uWSGI workers and of the mule (restarts included).",
                         ["model", "process"])

# --- per batch, in the mule ---------------------------------------------------------------
QUEUE_SECONDS = Histogram("kerasrv_queue_duration_seconds",
                          "Time a request chunk waited in the mule before its batch started.",
                          ["model"], buckets=LATENCY_BUCKETS)
BATCH_SECONDS = Histogram("kerasrv_batch_duration_seconds", "Model compute time per batch.",
                          ["model"], buckets=LATENCY_BUCKETS)
BATCH_ROWS = Histogram("kerasrv_batch_rows", "Rows per batch (before padding); its _count is the batches run.",
                       ["model"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128))
PADDED_ROWS = Counter("kerasrv_padded_rows", "Rows of padding added to reach a warmed batch size.", ["model"])
SHED = Counter("kerasrv_requests_shed", "Request chunks the mule answered without running them, by reason.",
               ["model", "reason"])
FAILED_ROWS = Counter("kerasrv_failed_rows", "Rows in batches whose model call raised.", ["model"])
RELOADS = Counter("kerasrv_model_reloads", "Model versions loaded after the first, by result (a failed one leaves"
                  " the current version serving).", ["model", "result"])
SERIES = (REQUESTS, REQUEST_SECONDS, PROCESS_STARTS, QUEUE_SECONDS, BATCH_SECONDS, BATCH_ROWS, PADDED_ROWS, SHED,
          FAILED_ROWS, RELOADS)


@dataclass(frozen=True)
class MuleMetrics:
    """The mule's series for one model, labelled once."""

    queue_seconds: Histogram
    batch_seconds: Histogram
    batch_rows: Histogram
    padded_rows: Counter
    shed_deadline: Counter
    shed_overload: Counter
    failed_rows: Counter
    reloads_ok: Counter
    reloads_failed: Counter

    @classmethod
    def for_model(cls, model: str) -> MuleMetrics:
        return cls(QUEUE_SECONDS.labels(model), BATCH_SECONDS.labels(model), BATCH_ROWS.labels(model),
                   PADDED_ROWS.labels(model), SHED.labels(model, "deadline"), SHED.labels(model, "overload"),
                   FAILED_ROWS.labels(model), RELOADS.labels(model, "ok"), RELOADS.labels(model, "failed"))


def instrument(app: Flask, model: str) -> None:
    """Count and time every answer the app gives, by route (the rule, not the path: bounded labels)."""

    @app.before_request
    def _start_clock() -> None:
        g.metrics_started = request.environ.get(STARTED, time.perf_counter())

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        count_answer(model, route, response.status_code, g.get("metrics_started"))
        return response


def count_answer(model: str, route: str, status: int, started: float | None) -> None:
    """One answer in kerasrv_requests and, when its start is known, in the duration histogram."""
    requests, seconds = _answer_series(model, route, status)
    requests.inc()
    if started is not None:
        seconds.observe(time.perf_counter() - started)


@functools.cache
def _answer_series(model: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """A route's series, looked up once: `labels()` takes a lock and builds its key on every call
    (the labels are bounded: Flask rules and status codes)."""
    return REQUESTS.labels(model, route, str(status)), REQUEST_SECONDS.labels(model, route)


class _Present(Collector):
    """Gauges computed at scrape time from the mule's status and /proc."""

    def __init__(self, model: str, status: Status, processes: dict[int, str]):
        self.model, self.status, self.processes = model, status, processes

    def collect(self) -> Iterator[Metric]:
        stats = self.status.stats
        state = GaugeMetricFamily("kerasrv_model_state", "1 for the model's current state.", labels=["model", "state"])
        for name in STATES:
            state.add_metric([self.model, name], float(self.status.state == name))
        yield state
        for name, key, text in (
            ("kerasrv_queued_rows", "queued_rows", "Rows waiting in the mule now."),
            ("kerasrv_batches_in_flight", "batches_in_flight", "Batches in the model now."),
            ("kerasrv_batch_limit_rows", "batch_limit", "Largest batch the mule forms (BATCH_AUTOTUNE)."),
            ("kerasrv_model_concurrency", "model_concurrency", "Model calls the mule runs at once."),
            ("kerasrv_model_load_seconds", "load_seconds", "Time the current model took to load, warm-up included."),
            ("kerasrv_model_warmup_seconds", "warmup_seconds", "Time the current model's warm-up took."),
        ):
            if key in stats:
                yield _gauge(name, text, self.model, float(stats[key]))
        memory = GaugeMetricFamily("kerasrv_process_resident_memory_bytes",
                                   "Resident memory of each uWSGI worker and of the mule.",
                                   labels=["model", "process", "pid"])
        for pid, kind in self.processes.items():
            rss = _rss_bytes(pid)
            if rss is not None:
                memory.add_metric([self.model, kind, str(pid)], float(rss))
        yield memory


def _gauge(name: str, text: str, model: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, text, labels=["model"])
    gauge.add_metric([model], value)
    return gauge


def _uwsgi_processes(mule_pid: int | None) -> dict[int, str]:
    """PID -> "worker" or "mule" for the uWSGI master's children: this worker's siblings and itself."""
    master = os.getppid()
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                pid = int(stat.parent.name)
                found[pid] = "mule" if pid == mule_pid else "worker"
        except (OSError, IndexError, ValueError):
            continue
    return found


def _rss_bytes(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


def render(model: str, status: Status) -> bytes:
    """The Prometheus text exposition of every process's counters plus the present gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # under app.launch: every process's files
        multiprocess.MultiProcessCollector(registry)
        processes = _uwsgi_processes(status.stats.get("pid"))
    else:  # one process (tests, a debugger): its own counters are all there is
        for collector in SERIES:
            registry.register(collector)
        processes = {}
    registry.register(_Present(model, status, processes))
    return generate_latest(registry)
