"""The slot/wake-up protocol between worker threads and the mule, with a numpy model (no uWSGI, no TF).

The server runs in a thread on an anonymous mmap standing in for uWSGI's sharedarea.
"""

from __future__ import annotations

import mmap
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.config import Settings
from app.inference import wire
from app.inference.backend import DeadlineExceeded, NotReady, Unavailable
from app.inference.model_runner import ModelLoadError, ModelRunner
from app.inference.mule_client import MuleClient
from app.inference.mule_server import MuleServer
from app.inference.spec import ModelSpec, TensorSpec

SPEC = ModelSpec(
    name="toy",
    input=TensorSpec("input", (4,), "float32"),
    outputs=(TensorSpec("sum", (1,), "float32"), TensorSpec("double", (4,), "float32")),
)


class ToyModel:
    """Sum and doubling of each row; records the (padded) batch sizes it was called with."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[int] = []
        self.delay = delay

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.calls.append(len(batch))
        time.sleep(self.delay)
        return [batch.sum(axis=1, keepdims=True), batch * 2]


def make_settings(tmp_path, **overrides) -> Settings:
    values = dict(workers=2, threads=4, slot_mb=1, max_batch_size=8, batch_buckets=(1, 2, 4, 8),
                  runtime_dir=tmp_path, request_timeout_ms=5000)
    values.update(overrides)
    return Settings(**values)


class Harness:
    def __init__(self, settings: Settings, load):
        self.settings = settings
        self.shm = mmap.mmap(-1, settings.n_slots * settings.slot_bytes)
        self.server = MuleServer(settings, self.shm, load)
        self.server.listen()
        threading.Thread(target=self.server._load_model, daemon=True).start()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.server._stop:
            self.server.step(max_wait=0.05)

    def client(self, worker: int = 0) -> MuleClient:
        return MuleClient(self.settings, self.shm, worker * self.settings.threads)

    def wait_ready(self):
        for _ in range(200):
            if self.server.runner is not None:
                return
            time.sleep(0.01)
        raise AssertionError("mule never became ready")

    def close(self):
        self.server.stop()
        self.thread.join(2)


@pytest.fixture
def toy(tmp_path):
    model = ToyModel()
    harness = Harness(make_settings(tmp_path), lambda s: ModelRunner(SPEC, model, s.batch_buckets))
    harness.model = model
    yield harness
    harness.close()


def deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def in_worker_threads(clients: list[MuleClient], threads: int, call) -> list:
    """Run call(client, i) once on each of `threads` threads of each client, as uWSGI would."""
    pools = [ThreadPoolExecutor(threads) for _ in clients]
    futures = [pools[i % len(clients)].submit(call, clients[i % len(clients)], i)
               for i in range(threads * len(clients))]
    results = [f.result() for f in futures]
    for pool in pools:
        pool.shutdown()
    return results


def test_lone_request_runs_at_once_as_batch_of_one(toy):
    client = toy.client()
    toy.wait_ready()
    rows = np.arange(4, dtype=np.float32)[None]
    started = time.perf_counter()
    result = client.predict(rows, deadline())
    assert time.perf_counter() - started < 0.05
    assert result.batch_size == 1
    np.testing.assert_allclose(result.outputs[0], [[6.0]])
    np.testing.assert_allclose(result.outputs[1], rows * 2)
    assert toy.model.calls[-1] == 1


def test_requests_arriving_during_a_batch_share_the_next_one(tmp_path):
    model = ToyModel(delay=0.1)
    harness = Harness(make_settings(tmp_path), lambda s: ModelRunner(SPEC, model, s.batch_buckets))
    try:
        clients = [harness.client(0), harness.client(1)]
        harness.wait_ready()
        inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]

        results = in_worker_threads(clients, 4, lambda client, i: client.predict(inputs[i], deadline()))
        for i, result in enumerate(results):  # every caller gets its own rows back
            np.testing.assert_allclose(result.outputs[0], [[4.0 * i]])
            np.testing.assert_allclose(result.outputs[1], inputs[i] * 2)
        assert max(r.batch_size for r in results) > 1
        stats = harness.server.status()["stats"]
        assert stats["rows"] == 8 and stats["batches"] < 8
    finally:
        harness.close()


@pytest.mark.parametrize(("autotune", "limit"), [(True, 2), (False, 8)])
def test_batch_limit_comes_from_the_measured_costs(tmp_path, autotune, limit):
    model = ToyModel(delay=0.1)

    def load(settings: Settings) -> ModelRunner:
        runner = ModelRunner(SPEC, model, settings.batch_buckets)
        runner.batch_costs_ms = {1: 10.0, 2: 12.0, 4: 40.0, 8: 100.0}  # cheapest per row at 2
        return runner

    harness = Harness(make_settings(tmp_path, batch_autotune=autotune), load)
    try:
        clients = [harness.client(0), harness.client(1)]
        harness.wait_ready()
        inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]
        results = in_worker_threads(clients, 4, lambda client, i: client.predict(inputs[i], deadline()))
        for i, result in enumerate(results):
            np.testing.assert_allclose(result.outputs[0], [[4.0 * i]])
        stats = harness.server.status()["stats"]
        assert stats["batch_limit"] == limit
        assert stats["batch_cost_ms"] == {"1": 10.0, "2": 12.0, "4": 40.0, "8": 100.0}
        assert max(model.calls) <= limit
        assert max(r.batch_size for r in results) > (1 if autotune else 2)  # batches still form, up to the limit
    finally:
        harness.close()


def test_batches_are_padded_to_buckets(toy):
    client = toy.client()
    toy.wait_ready()
    result = client.predict(np.ones((3, 4), dtype=np.float32), deadline())
    assert result.batch_size == 3
    assert toy.model.calls[-1] == 4  # padded up to the bucket; only 3 rows come back
    assert result.outputs[0].shape == (3, 1)


def test_many_rows_in_one_request_are_chunked_by_slot_capacity(tmp_path):
    model = ToyModel()
    settings = make_settings(tmp_path, max_batch_size=4, batch_buckets=(1, 2, 4))
    harness = Harness(settings, lambda s: ModelRunner(SPEC, model, s.batch_buckets))
    try:
        client = harness.client()
        harness.wait_ready()
        rows = np.arange(40, dtype=np.float32).reshape(10, 4)
        result = client.predict(rows, deadline())
        np.testing.assert_allclose(result.outputs[0][:, 0], rows.sum(axis=1))
        assert max(model.calls) <= 4
    finally:
        harness.close()


def test_deadline_gives_504_and_a_late_answer_is_ignored(tmp_path):
    model = ToyModel(delay=0.3)
    harness = Harness(make_settings(tmp_path), lambda s: ModelRunner(SPEC, model, s.batch_buckets))
    try:
        client = harness.client()
        harness.wait_ready()
        with pytest.raises(DeadlineExceeded):
            client.predict(np.zeros((1, 4), dtype=np.float32), deadline(0.05))
        # the late reply for the timed-out request must not be taken for this one
        rows = np.full((1, 4), 7, dtype=np.float32)
        result = client.predict(rows, deadline())
        np.testing.assert_allclose(result.outputs[0], [[28.0]])
    finally:
        harness.close()


def test_expired_requests_are_dropped_before_running(toy):
    client = toy.client()
    toy.wait_ready()
    calls = len(toy.model.calls)
    with pytest.raises(DeadlineExceeded):
        client.predict(np.zeros((1, 4), dtype=np.float32), time.monotonic() - 1)
    assert len(toy.model.calls) == calls
    assert client.status(fresh=True).stats["expired"] == 1


def test_queue_bound_answers_overloaded(tmp_path):
    model = ToyModel(delay=0.2)
    settings = make_settings(tmp_path, max_queue_rows=2)
    harness = Harness(settings, lambda s: ModelRunner(SPEC, model, s.batch_buckets))
    try:
        clients = [harness.client(0), harness.client(1)]
        harness.wait_ready()

        def call(client, i):
            try:
                client.predict(np.ones((1, 4), dtype=np.float32), deadline())
                return "ok"
            except Exception as exc:
                return getattr(exc, "code", type(exc).__name__)

        outcomes = in_worker_threads(clients, 4, call)
        assert "overloaded" in outcomes and "ok" in outcomes
    finally:
        harness.close()


def test_failed_model_load_is_reported_not_raised(tmp_path):
    def broken(settings):
        raise ModelLoadError("MODEL_PATH /nope does not exist")

    harness = Harness(make_settings(tmp_path), broken)
    try:
        client = harness.client()
        for _ in range(100):
            status = client.status(fresh=True)
            if status.state == "failed":
                break
            time.sleep(0.01)
        assert status.state == "failed" and "does not exist" in status.error
        with pytest.raises(NotReady):
            client.predict(np.zeros((1, 4), dtype=np.float32), deadline())
    finally:
        harness.close()


def test_mule_death_fails_in_flight_requests_at_once_then_reconnects(tmp_path):
    model = ToyModel(delay=0.5)
    settings = make_settings(tmp_path)
    harness = Harness(settings, lambda s: ModelRunner(SPEC, model, s.batch_buckets))
    client = harness.client()
    harness.wait_ready()
    outcome = {}

    def call():
        started = time.monotonic()
        try:
            client.predict(np.zeros((1, 4), dtype=np.float32), deadline(10))
        except Unavailable:
            outcome["elapsed"] = time.monotonic() - started

    waiter = threading.Thread(target=call)
    waiter.start()
    time.sleep(0.1)
    # a dead mule: every connection it held is closed by the kernel
    harness.server.stop()
    for key in list(harness.server._selector.get_map().values()):
        if isinstance(key.fileobj, socket.socket):
            key.fileobj.close()
    waiter.join(3)
    assert outcome["elapsed"] < 1.0  # not after the 10 s deadline
    harness.thread.join(2)

    fresh = Harness(settings, lambda s: ModelRunner(SPEC, ToyModel(), s.batch_buckets))
    try:
        fresh.shm = harness.shm  # the shared memory outlives the mule
        fresh.server.shm = harness.shm
        fresh.wait_ready()
        result = client.predict(np.ones((1, 4), dtype=np.float32), deadline())
        np.testing.assert_allclose(result.outputs[0], [[4.0]])
    finally:
        fresh.close()


def test_layout_keeps_input_and_output_regions_apart():
    layout = wire.SlotLayout.plan(SPEC, 4096, 64)
    assert layout.rows > 0
    input_end = layout.rows * SPEC.input.row_bytes
    assert layout.output_offsets[0] >= input_end
    last = layout.output_offsets[-1] + layout.rows * SPEC.outputs[-1].row_bytes
    assert last <= 4096
    assert wire.SlotLayout.plan(SPEC, 8, 64).rows == 0
