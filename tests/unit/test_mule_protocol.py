"""The slot/wake-up protocol between worker threads and the mule, with a numpy model (no uWSGI, no TF).

The server runs in a thread on an anonymous mmap standing in for uWSGI's sharedarea.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.config import Settings
from app.inference import concurrency, mule_server, wire
from app.inference.backend import UNLOADED_REASON, DeadlineExceeded, LoadFailed, NotReady, TooLarge, Unavailable
from app.inference.model_runner import INLINE_CALL_MS, ModelLoadError, ModelRunner
from app.inference.spec import ModelSpec, TensorSpec
from tests.doubles import (
    TOY_SPEC,
    WAIT_S,
    MuleHarness,
    ToyModel,
    in_worker_threads,
    mule_settings,
    version_dir,
)
from tools.local_server import mappings, wait_for


@pytest.fixture
def toy(tmp_path):
    harness = MuleHarness.with_model(tmp_path, ToyModel())
    yield harness
    harness.close()


@pytest.fixture
def held(tmp_path):
    """A mule whose model holds every batch until the test releases it."""
    harness = MuleHarness.with_model(tmp_path, ToyModel(held=True))
    yield harness
    harness.close()


def deadline(seconds: float = WAIT_S) -> float:
    return time.monotonic() + seconds


def everyone_in(n: int):
    """The mule's state once n rows are all in the model, queued or refused. Rows in flight are
    read first: the loop takes rows off the queue before it counts them in flight, so a read
    between the two undercounts (and waits longer), never overcounts."""
    return lambda server: server.rows_in_flight + server.policy.queued_rows + server.counts["overloaded"] >= n


def release_when_in(harness: MuleHarness, n: int = 8):
    """For in_worker_threads' `meanwhile`: once n rows are in the held model, queued or refused,
    let the model go."""
    def release() -> None:
        harness.wait_until(everyone_in(n), f"{n} requests in the model, queued or refused")
        harness.model.release()

    return release


def test_lone_request_runs_as_batch_of_one(toy):
    client = toy.client()
    toy.wait_ready()
    rows = np.arange(4, dtype=np.float32)[None]
    result = client.predict([rows], deadline())
    assert result.batch_size == 1
    np.testing.assert_allclose(result.outputs[0], [[6.0]])
    np.testing.assert_allclose(result.outputs[1], rows * 2)
    assert toy.model.calls == [1]


def test_requests_arriving_during_a_batch_share_the_next_one(held):
    clients = [held.client(0), held.client(1)]
    held.wait_ready()
    inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]


    results = in_worker_threads(clients, 4, lambda client, i: client.predict([inputs[i]], deadline()),
                                meanwhile=release_when_in(held))
    for i, result in enumerate(results):  # every caller gets its own rows back
        np.testing.assert_allclose(result.outputs[0], [[4.0 * i]])
        np.testing.assert_allclose(result.outputs[1], inputs[i] * 2)
    assert max(r.batch_size for r in results) > 1
    stats = held.server.status().stats
    assert stats.rows == 8 and stats.batches < 8


def costed(model: ToyModel, costs: dict[int, float], spec: ModelSpec = TOY_SPEC, concurrency: int = 1):
    """A loader of `model` whose batch costs, as warm-up would have timed them, are `costs`; a
    runner that already runs `concurrency` calls at once starts MODEL_CONCURRENCY=auto's race there."""
    def load(settings: Settings) -> ModelRunner:
        runner = ModelRunner(spec, model, settings.batch_buckets)
        runner.batch_costs_ms = dict(costs)
        runner.concurrency = concurrency
        return runner

    return load


class Counting(ToyModel):
    """Counts the calls inside the model at once, and the most there ever were."""

    def __init__(self, held: bool = False):
        super().__init__(held)
        self.inside = self.most_inside = 0
        self._lock = threading.Lock()

    def __call__(self, inputs):
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            return super().__call__(inputs)
        finally:
            with self._lock:
                self.inside -= 1


COSTLY = {1: 10.0, 2: 12.0, 4: 20.0, 8: 40.0}  # every size goes to a model thread


@pytest.mark.parametrize("concurrency", [1, 2])
def test_the_mule_runs_as_many_batches_at_once_as_model_concurrency_says(tmp_path, concurrency):
    model = Counting(held=True)
    harness = MuleHarness(mule_settings(tmp_path, model_concurrency=concurrency), costed(model, COSTLY), model)
    try:
        clients = [harness.client(0), harness.client(1)]
        harness.wait_ready()
        inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(6)]

        def release_when_full():
            if concurrency == 2:  # a state that only two model threads reach
                harness.wait_until(lambda server: model.inside == 2, "two batches in the model at once")
            harness.wait_until(everyone_in(6), "6 requests in the model or queued")
            model.release()

        results = in_worker_threads(clients, 3, lambda client, i: client.predict([inputs[i]], deadline()),
                                    meanwhile=release_when_full)
        for i, result in enumerate(results):
            np.testing.assert_allclose(result.outputs[0], [[4.0 * i]])
        assert model.most_inside == concurrency
        assert len({thread.name for thread in model.threads}) >= concurrency
        stats = harness.server.status().stats
        assert stats.model_concurrency == concurrency and stats.rows == 6
    finally:
        harness.close()


def test_a_version_that_runs_fewer_batches_at_once_gets_fewer_buffers(tmp_path, monkeypatch):
    """Version 1 raced to two calls at once; version 2 starts its own race at one."""
    monkeypatch.setattr(mule_server, "most_model_threads", lambda: 2)
    old, new = Counting(held=True), Counting()
    loaders = [costed(old, COSTLY, concurrency=2),
               costed(new, COSTLY, dataclasses.replace(TOY_SPEC, version=2), concurrency=1)]
    root = version_dir(tmp_path / "versions", 1)

    def load_next(settings: Settings) -> ModelRunner:
        return loaders.pop(0)(settings)

    harness = MuleHarness(mule_settings(tmp_path, model_path=root, model_settle_s=0), load_next, old)
    try:
        clients = [harness.client(0), harness.client(1)]
        harness.wait_ready()
        rows = [np.full((1, 4), i, dtype=np.float32) for i in range(2)]

        def reload_while_two_run():
            harness.wait_until(lambda server: old.inside == 2, "two batches of version 1 in the model")
            version_dir(root, 2)
            assert harness.server.reload("test")
            harness.wait_until(lambda server: server.runner.spec.version == 2, "version 2 installed")
            old.release()

        with ThreadPoolExecutor(2) as pool:  # one after the other: two batches, not one of two rows
            first = pool.submit(clients[0].predict, [rows[0]], deadline())
            harness.wait_until(lambda server: old.inside == 1, "one batch of version 1 in the model")
            second = pool.submit(clients[1].predict, [rows[1]], deadline())
            reload_while_two_run()
            assert [first.result(WAIT_S).version, second.result(WAIT_S).version] == [1, 1]
        harness.wait_until(lambda server: not server._batches_running(), "version 1's batches answered")
        assert len(harness.server._free_buffers) == 1
        after = in_worker_threads(clients, 3, lambda client, i: client.predict([rows[i % 2]], deadline()))
        assert all(result.version == 2 for result in after) and new.most_inside == 1
    finally:
        harness.close()


class Sleeping(ToyModel):
    """A model whose call lasts CALL_S plus ROW_S per row of its bucket; `exclusive`: one call at a
    time, as a model that already fills every core (else calls at once take no longer than one
    alone). The fixed part makes a batch split in two cost clearly more than one whole, by far
    more than the mule's loop can save by gathering the next batch while one runs."""

    CALL_S, ROW_S = 0.010, 0.001

    def __init__(self, exclusive: bool):
        super().__init__()
        self._lock = threading.Lock() if exclusive else None

    def __call__(self, inputs):
        if self._lock is None:
            time.sleep(self.CALL_S + self.ROW_S * len(inputs[0]))
        else:
            with self._lock:
                time.sleep(self.CALL_S + self.ROW_S * len(inputs[0]))
        return super().__call__(inputs)


@pytest.mark.parametrize(("exclusive", "chosen"), [(False, 2), (True, 1)])
def test_under_load_the_mule_keeps_the_count_of_calls_that_served_more(tmp_path, monkeypatch, exclusive, chosen):
    """16 clients in a closed loop, batches of at most 8: two calls at once of a model with room
    for them serve twice the rows; of one without, no more (and the padding of split batches costs)."""
    monkeypatch.setattr(concurrency, "WINDOW_S", 0.15)
    monkeypatch.setattr(mule_server, "most_model_threads", lambda: 2)
    model = Sleeping(exclusive)
    harness = MuleHarness(mule_settings(tmp_path, workers=2, threads=8), costed(model, COSTLY), model)
    decided = threading.Event()
    try:
        clients = [harness.client(0), harness.client(1)]
        harness.wait_ready()
        assert harness.server.status().stats.model_concurrency == 1  # the race begins at one

        def until_decided(client, i):
            while not decided.is_set():
                client.predict([np.full((1, 4), i, dtype=np.float32)], deadline())

        def wait_for_the_choice():
            try:
                harness.wait_until(lambda server: server._race is None, "the race decided")
            finally:
                decided.set()

        in_worker_threads(clients, 8, until_decided, meanwhile=wait_for_the_choice)
        assert harness.server.runner.concurrency == chosen
        assert harness.server.status().stats.model_concurrency == chosen
        assert len({thread.name for thread in model.threads}) >= chosen
    finally:
        harness.close()


@pytest.mark.parametrize(("autotune", "limit"), [(True, 2), (False, 8)])
def test_batch_limit_comes_from_the_measured_costs(tmp_path, autotune, limit):
    model = ToyModel(held=True)
    load = costed(model, {1: 10.0, 2: 12.0, 4: 40.0, 8: 100.0})  # cheapest per row at 2
    harness = MuleHarness(mule_settings(tmp_path, batch_autotune=autotune), load, model)
    try:
        clients = [harness.client(0), harness.client(1)]
        harness.wait_ready()
        inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]


        results = in_worker_threads(clients, 4, lambda client, i: client.predict([inputs[i]], deadline()),
                                    meanwhile=release_when_in(harness))
        for i, result in enumerate(results):
            np.testing.assert_allclose(result.outputs[0], [[4.0 * i]])
        stats = harness.server.status().stats
        assert stats.batch_limit == limit
        assert stats.batch_cost_ms == {"1": 10.0, "2": 12.0, "4": 40.0, "8": 100.0}
        assert max(model.calls) <= limit
        assert max(r.batch_size for r in results) > (1 if autotune else 2)  # batches still form, up to the limit
        # the costs also decide between padding and splitting; BATCH_AUTOTUNE=off always pads
        assert harness.server.policy.costs_ms == ({1: 10.0, 2: 12.0, 4: 40.0, 8: 100.0} if autotune else {})
    finally:
        harness.close()


def test_a_cheap_call_runs_on_the_loop_and_a_costly_one_on_a_model_thread(tmp_path):
    model = ToyModel()
    costs = {1: 1.0, 2: 1.5, 4: INLINE_CALL_MS, 8: INLINE_CALL_MS + 1}
    harness = MuleHarness(mule_settings(tmp_path), costed(model, costs), model)
    try:
        client = harness.client()
        harness.wait_ready()
        for rows in (1, 4, 8, 2):
            result = client.predict([np.full((rows, 4), rows, dtype=np.float32)], deadline())
            np.testing.assert_allclose(result.outputs[0], np.full((rows, 1), 4.0 * rows))
        assert model.calls == [1, 4, 8, 2]
        on_loop = [thread is harness.thread for thread in model.threads]
        assert on_loop == [True, True, False, True]
        assert model.threads[2].name.startswith("model")
    finally:
        harness.close()


@pytest.mark.parametrize("case", ["untimed", "variable sizes"])
def test_a_call_of_unknown_cost_runs_on_a_model_thread(tmp_path, case):
    model = ToyModel()
    load = (costed(model, {}) if case == "untimed"
            else costed(model, {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}, VARIABLE_SPEC))  # timed at other sizes
    harness = MuleHarness(mule_settings(tmp_path), load, model)
    try:
        client = harness.client()
        harness.wait_ready()
        client.predict([np.ones((1, 4), dtype=np.float32)], deadline())
        assert len(model.threads) == 1 and model.threads[0].name.startswith("model")
    finally:
        harness.close()


def test_batches_are_padded_to_buckets(toy):
    client = toy.client()
    toy.wait_ready()
    result = client.predict([np.ones((3, 4), dtype=np.float32)], deadline())
    assert result.batch_size == 3
    assert toy.model.calls[-1] == 4  # padded up to the bucket; only 3 rows come back
    assert result.outputs[0].shape == (3, 1)


def test_many_rows_in_one_request_are_chunked_by_slot_capacity(tmp_path):
    model = ToyModel()
    harness = MuleHarness.with_model(tmp_path, model, max_batch_size=4, batch_buckets=(1, 2, 4))
    try:
        client = harness.client()
        harness.wait_ready()
        rows = np.arange(40, dtype=np.float32).reshape(10, 4)
        result = client.predict([rows], deadline())
        np.testing.assert_allclose(result.outputs[0][:, 0], rows.sum(axis=1))
        assert max(model.calls) <= 4
    finally:
        harness.close()


def test_deadline_gives_504_and_a_late_answer_is_ignored(held):
    client = held.client()
    held.wait_ready()
    with pytest.raises(DeadlineExceeded):  # the model holds the batch past this deadline
        client.predict([np.zeros((1, 4), dtype=np.float32)], deadline(0.05))
    held.model.release()
    # the late reply for the timed-out request comes first and must not be taken for this one
    rows = np.full((1, 4), 7, dtype=np.float32)
    result = client.predict([rows], deadline())
    np.testing.assert_allclose(result.outputs[0], [[28.0]])
    assert held.model.calls == [1, 1]


def test_expired_requests_are_shed_before_running(toy):
    toy.wait_ready()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(WAIT_S)
        sock.connect(str(toy.settings.mule_socket))
        sock.send(wire.pack_infer(0, 1, 1, time.monotonic() - 1))
        reply = wire.Reply.unpack(sock.recv(4096))
    assert (reply.seq, reply.code) == (1, wire.EXPIRED) and "deadline" in reply.message
    assert toy.model.calls == []
    assert toy.server.status().stats.expired == 1


def test_client_gives_up_on_a_passed_deadline_and_the_mule_counts_it(toy):
    """The client does not wait for an answer it can no longer use; the mule's count is already
    there when its next message is answered (messages on one connection are handled in order)."""
    client = toy.client()
    toy.wait_ready()
    with pytest.raises(DeadlineExceeded):
        client.predict([np.zeros((1, 4), dtype=np.float32)], time.monotonic() - 1)
    assert client.status(fresh=True).stats["expired"] == 1
    assert toy.model.calls == []


def test_queue_bound_answers_overloaded(tmp_path):
    model = ToyModel(held=True)
    harness = MuleHarness.with_model(tmp_path, model, max_queue_rows=2)
    try:
        clients = [harness.client(0), harness.client(1)]
        harness.wait_ready()

        def call(client, i):
            try:
                client.predict([np.ones((1, 4), dtype=np.float32)], deadline())
                return "ok"
            except Exception as exc:
                return getattr(exc, "code", type(exc).__name__)


        outcomes = in_worker_threads(clients, 4, call, meanwhile=release_when_in(harness))
        # at most 2 rows fit in the queue and at most 2 entered the model before it: 4 or more refused
        assert outcomes.count("overloaded") >= 4 and set(outcomes) == {"ok", "overloaded"}, outcomes
    finally:
        harness.close()


def test_failed_model_load_is_reported_not_raised(tmp_path):
    def broken(settings):
        raise ModelLoadError("MODEL_PATH /nope does not exist")

    harness = MuleHarness(mule_settings(tmp_path), broken)
    try:
        client = harness.client()
        status = wait_for(lambda: (s := client.status(fresh=True)).state == "failed" and s, WAIT_S, "load failure")
        assert "does not exist" in status.error
        assert status.reason == "model failed to load: MODEL_PATH /nope does not exist"
        with pytest.raises(NotReady, match="does not exist"):
            client.predict([np.zeros((1, 4), dtype=np.float32)], deadline())
    finally:
        harness.close()


def test_mule_death_fails_in_flight_requests_at_once_then_reconnects(tmp_path):
    model = ToyModel(held=True)
    harness = MuleHarness.with_model(tmp_path, model)
    client = harness.client()
    harness.wait_ready()
    outcome = {}

    def call():
        try:
            client.predict([np.zeros((1, 4), dtype=np.float32)], deadline(600))
        except Unavailable as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=call)
    waiter.start()
    assert model.entered.wait(WAIT_S)  # the request is in the model
    die(harness)
    waiter.join(WAIT_S)  # far sooner than its 600 s deadline
    assert not waiter.is_alive() and isinstance(outcome.get("error"), Unavailable)

    fresh = respawn(tmp_path, harness)
    try:
        result = client.predict([np.ones((1, 4), dtype=np.float32)], deadline())
        np.testing.assert_allclose(result.outputs[0], [[4.0]])
    finally:
        fresh.close()


@pytest.mark.parametrize("first", ["predict", "status"])
def test_a_mule_that_died_between_requests_is_replaced_without_an_error(tmp_path, first):
    harness = MuleHarness.with_model(tmp_path, ToyModel())
    client = harness.client()
    harness.wait_ready()
    client.predict([np.ones((1, 4), dtype=np.float32)], deadline())  # connected to the first mule
    die(harness)
    fresh = respawn(tmp_path, harness)
    try:
        if first == "status":  # a readiness probe: the new mule's answer, not "unreachable"
            assert client.status(fresh=True).ready
        # the send to the dead mule fails; the request goes to the new one
        result = client.predict([np.full((1, 4), 2, dtype=np.float32)], deadline())
        np.testing.assert_allclose(result.outputs[0], [[8.0]])
        assert fresh.server.counts["rows"] == 1
    finally:
        fresh.close()


def die(harness: MuleHarness) -> None:
    """The mule's process ends: its loop stops and the kernel closes every connection it held
    (before the model would answer what is in it)."""
    harness.server.stop()
    for key in list(harness.server._selector.get_map().values()):
        if isinstance(key.fileobj, socket.socket):
            key.fileobj.close()
    harness.close()


def respawn(tmp_path, dead: MuleHarness) -> MuleHarness:
    """A new mule on the same socket path and shared memory (which outlives the mule), ready."""
    fresh = MuleHarness.with_model(tmp_path, ToyModel())
    fresh.shm = fresh.server.shm = dead.shm
    fresh.wait_ready()
    return fresh


def test_layout_keeps_input_and_output_regions_apart():
    layout = wire.SlotLayout.plan(TOY_SPEC, 4096, 64, 16)
    assert layout.rows > 0
    input_end = layout.rows * TOY_SPEC.input.row_bytes(16)
    assert layout.output_offsets[0] >= input_end
    last = layout.output_offsets[-1] + layout.rows * TOY_SPEC.outputs[-1].row_bytes(16)
    assert last <= 4096
    assert wire.SlotLayout.plan(TOY_SPEC, 8, 64, 16).rows == 0


def _resident_kb(area: mmap.mmap) -> int:
    """Rss of the mapping `area`."""
    start = ctypes.addressof(ctypes.c_char.from_buffer(area))
    return next(mapping["Rss"] for mapping in mappings() if mapping["start"] == start)


def test_released_slots_give_their_pages_back_and_read_as_zeros():
    """uWSGI's master zeroes the whole sharedarea, so each worker releases its own slots."""
    slot = 1 << 20
    area = mmap.mmap(-1, 8 * slot, flags=mmap.MAP_SHARED)
    area.write(b"\x01" * len(area))  # every page resident, as after uWSGI's master
    view = memoryview(area)
    before = _resident_kb(area)
    assert wire.release_slots(view, 2, 4, slot)
    assert before - _resident_kb(area) >= 4 * slot // 1024
    assert not any(view[2 * slot : 6 * slot]) and view[2 * slot - 1] == 1 and view[6 * slot] == 1
    with pytest.raises(ValueError):
        wire.release_slots(view, 6, 4, slot)
    view.release()


def test_slots_that_cannot_be_released_stay_usable(caplog):
    private = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE)  # not shared: MADV_REMOVE refuses it
    private.write(b"\x01" * len(private))
    view = memoryview(private)
    assert not wire.release_slots(view, 0, 2, 1 << 20)
    assert view[0] == 1 and "stay resident" in caplog.text
    view.release()


def test_status_message_round_trip_keeps_spec_layout_and_counters():
    layout = wire.SlotLayout.plan(TOY_SPEC, 4096, 8, 16)
    sent = wire.MuleStatus("ready", wire.MuleStats(pid=7, rows=3, batch_sizes={"2": 1}), None, TOY_SPEC, layout)
    message = sent.pack()
    assert message[0] == wire.STATUS
    assert wire.MuleStatus.unpack(message) == sent
    failed = wire.MuleStatus("failed", wire.MuleStats(pid=7), "no such file")
    assert wire.MuleStatus.unpack(failed.pack()) == failed


VARIABLE_SPEC = ModelSpec(
    name="lengths",
    inputs=(TensorSpec("values", (-1,), "float32"),),
    outputs=(TensorSpec("sum", (1,), "float32"), TensorSpec("double", (-1,), "float32")),
)


def test_rows_of_different_lengths_are_batched_separately(tmp_path):
    model = ToyModel(held=True)
    harness = MuleHarness(mule_settings(tmp_path), lambda s: ModelRunner(VARIABLE_SPEC, model, s.batch_buckets), model)
    try:
        clients = [harness.client(0), harness.client(1)]
        harness.wait_ready()
        inputs = [np.full((1, 3 if i % 2 else 5), i, dtype=np.float32) for i in range(8)]


        results = in_worker_threads(clients, 4, lambda client, i: client.predict([inputs[i]], deadline()),
                                    meanwhile=release_when_in(harness))
        for i, result in enumerate(results):
            np.testing.assert_allclose(result.outputs[0], inputs[i].sum(axis=1, keepdims=True))
            np.testing.assert_allclose(result.outputs[1], inputs[i] * 2)  # its own length back
        # the first batch took the first length's requests that had arrived; whatever queued behind
        # it made one batch per length, so the other length's 4 requests ran together
        sizes = {int(k): v for k, v in harness.server.status().stats.batch_sizes.items()}
        assert sum(k * v for k, v in sizes.items()) == 8 and max(sizes) == 4 and sum(sizes.values()) <= 3
    finally:
        harness.close()


def test_variable_rows_are_chunked_to_fit_the_slot_or_refused(tmp_path):
    harness = MuleHarness(mule_settings(tmp_path), lambda s: ModelRunner(VARIABLE_SPEC, ToyModel(), s.batch_buckets))
    try:
        client = harness.client()
        harness.wait_ready()
        rows = np.random.default_rng(0).random((4, 50_000), dtype=np.float32)  # 200 KB a row, ~0.5 MB of room
        result = client.predict([rows], deadline())
        np.testing.assert_allclose(result.outputs[1], rows * 2)
        assert harness.server.status().stats.batch_sizes == {"2": 2}  # two chunks of two rows
        with pytest.raises(TooLarge):
            client.predict([np.zeros((1, 200_000), dtype=np.float32)], deadline())  # 800 KB: no room
    finally:
        harness.close()


class Shifted(ToyModel):
    """Version 2 of the toy: its sums are 100 higher, so an answer shows which version made it."""

    def __call__(self, inputs):
        total, double = super().__call__(inputs)
        return [total + 100, double]


def test_a_reload_switches_between_batches_and_loses_nothing(tmp_path):
    old, new = ToyModel(held=True), Shifted()
    runners = [(TOY_SPEC, old), (dataclasses.replace(TOY_SPEC, version=2), new)]

    def load(settings: Settings) -> ModelRunner:
        spec, model = runners.pop(0)
        return ModelRunner(spec, model, settings.batch_buckets)

    root = version_dir(tmp_path / "versions", 1)
    harness = MuleHarness(mule_settings(tmp_path, workers=3, model_path=root, model_settle_s=0), load, old)
    try:
        clients = [harness.client(0), harness.client(1)]
        idle = harness.client(2)  # learns version 1 now and says nothing until version 1 is gone
        harness.wait_ready()
        assert idle.status().spec.version == 1
        rows = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]

        def reload_while_held():
            harness.wait_until(everyone_in(8), "8 requests in the model or queued behind it")
            version_dir(root, 2)
            assert harness.server.reload("test")
            harness.wait_until(lambda server: server.runner.spec.version == 2, "version 2 installed")
            assert set(harness.server.models) == {1, 2}  # 1 still has work
            old.release()

        results = in_worker_threads(clients, 4, lambda client, i: client.predict([rows[i]], deadline()),
                                    meanwhile=reload_while_held)
        for i, result in enumerate(results):  # written for version 1, answered by version 1
            assert result.version == 1
            np.testing.assert_allclose(result.outputs[0], [[4.0 * i]])
        harness.wait_until(lambda server: set(server.models) == {2}, "version 1 unloaded")
        late = idle.predict([rows[2]], deadline())  # sent for version 1: STALE, refreshed, sent again
        assert late.version == 2 and late.outputs[0][0, 0] == 108.0
        again = idle.predict([rows[1]], deadline())
        assert again.version == 2 and again.outputs[0][0, 0] == 104.0
        stats = harness.server.status().stats
        assert stats.reloads == 1 and stats.reload_error is None
    finally:
        harness.close()


def test_a_failed_reload_keeps_the_current_version_serving(tmp_path):
    calls = []

    def load(settings: Settings) -> ModelRunner:
        calls.append(1)
        if len(calls) > 1:
            raise ModelLoadError("version 2 is broken")
        return ModelRunner(TOY_SPEC, ToyModel(), settings.batch_buckets)

    root = version_dir(tmp_path / "versions", 1)
    harness = MuleHarness(mule_settings(tmp_path, model_path=root, model_settle_s=0), load)
    try:
        client = harness.client()
        harness.wait_ready()
        version_dir(root, 2)
        assert harness.server.reload("test")
        harness.wait_until(lambda server: server.reload_error is not None, "the reload to fail")
        status = client.status(fresh=True)
        assert status.ready and status.spec.version == 1
        assert status.stats["reload_error"] == "version 2 is broken" and status.stats["reloads"] == 0
        assert client.predict([np.ones((1, 4), dtype=np.float32)], deadline()).version == 1
    finally:
        harness.close()


def test_a_version_with_other_inputs_is_served_and_the_change_logged(tmp_path, caplog):
    wider = dataclasses.replace(TOY_SPEC, version=2, inputs=(TensorSpec("input", (6,), "float32"),),
                                outputs=(TensorSpec("sum", (1,), "float32"), TensorSpec("double", (6,), "float32")))
    specs = [TOY_SPEC, wider]
    root = version_dir(tmp_path / "versions", 1)
    harness = MuleHarness(mule_settings(tmp_path, workers=3, model_path=root, model_settle_s=0),
                          lambda s: ModelRunner(specs.pop(0), ToyModel(), s.batch_buckets))
    try:
        old = harness.client(0)
        harness.wait_ready()
        assert old.status().spec.version == 1
        version_dir(root, 2)
        with caplog.at_level("WARNING", logger="app.inference.mule_server"):
            assert harness.server.reload("test")
            harness.wait_until(lambda server: set(server.models) == {2}, "version 2 alone")
        assert "version 2 has another signature than version 1" in caplog.text
        with pytest.raises(NotReady, match="other inputs"):  # rows shaped for version 1: sent again by the client
            old.predict([np.ones((1, 4), dtype=np.float32)], deadline())
        assert harness.client(1).predict([np.ones((1, 6), dtype=np.float32)], deadline()).outputs[1].shape == (1, 6)
    finally:
        harness.close()


def versioned_loader(models: dict[int, ToyModel], calls: list[int]):
    """Loads what the directory names, as load_runner does: the highest version, its own model."""
    def load(settings: Settings) -> ModelRunner:
        from app.inference import versions  # noqa: PLC0415

        number = versions.choose(settings.model_path, settings.model_version, settings.model_settle_s).number
        calls.append(number)
        if number not in models:
            raise ModelLoadError(f"version {number} is broken")
        return ModelRunner(dataclasses.replace(TOY_SPEC, version=number), models[number], settings.batch_buckets)

    return load


def test_load_answers_once_the_new_version_serves_and_a_served_version_is_not_loaded_again(tmp_path):
    root = version_dir(tmp_path / "versions", 1)
    calls: list[int] = []
    harness = MuleHarness(mule_settings(tmp_path, model_path=root, model_settle_s=0),
                          versioned_loader({1: ToyModel(), 2: Shifted()}, calls))
    try:
        client = harness.client()
        harness.wait_ready()
        assert client.load(deadline()) == 1 and calls == [1]  # nothing new: answered at once, no load
        version_dir(root, 2)
        assert client.load(deadline()) == 2 and calls == [1, 2]
        assert client.predict([np.ones((1, 4), dtype=np.float32)], deadline()).outputs[0][0, 0] == 104.0
        harness.wait_until(lambda server: set(server.models) == {2}, "version 1 freed")
        status = client.status(fresh=True)
        assert [(v["version"], v["state"]) for v in status.versions] == [(2, "AVAILABLE"), (1, "END")]
        assert status.stats["reloads"] == 1
    finally:
        harness.close()


def test_a_failed_load_says_why_and_the_served_version_stays(tmp_path):
    root = version_dir(tmp_path / "versions", 1)
    calls: list[int] = []
    harness = MuleHarness(mule_settings(tmp_path, model_path=root, model_settle_s=0),
                          versioned_loader({1: ToyModel()}, calls))
    try:
        client = harness.client()
        harness.wait_ready()
        version_dir(root, 2)
        with pytest.raises(LoadFailed, match="version 2 is broken; version 1 keeps serving"):
            client.load(deadline())
        status = client.status(fresh=True)
        assert status.ready and status.spec.version == 1
        assert status.versions == [{"version": 2, "state": "END", "error": "version 2 is broken"},
                                   {"version": 1, "state": "AVAILABLE", "error": ""}]
        assert client.predict([np.ones((1, 4), dtype=np.float32)], deadline()).version == 1
    finally:
        harness.close()


def test_unload_answers_what_is_queued_then_refuses_until_loaded_again(tmp_path):
    root = version_dir(tmp_path / "versions", 1)
    model = ToyModel(held=True)
    calls: list[int] = []
    harness = MuleHarness(mule_settings(tmp_path, workers=3, model_path=root, model_settle_s=0),
                          versioned_loader({1: model}, calls), model)
    try:
        clients, admin = [harness.client(0), harness.client(1)], harness.client(2)
        harness.wait_ready()
        rows = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]

        def unload_while_held():
            harness.wait_until(everyone_in(8), "8 requests in the model or queued behind it")
            admin.unload()
            assert admin.status(fresh=True).state == "unloaded"
            model.release()

        results = in_worker_threads(clients, 4, lambda client, i: client.predict([rows[i]], deadline()),
                                    meanwhile=unload_while_held)
        assert [r.outputs[0][0, 0] for r in results] == [4.0 * i for i in range(8)]  # all answered
        harness.wait_until(lambda server: not server.models, "version 1 freed")
        with pytest.raises(NotReady, match=UNLOADED_REASON):
            admin.predict([rows[0]], deadline())
        status = admin.status(fresh=True)
        assert not status.ready and status.reason == UNLOADED_REASON
        assert status.versions == [{"version": 1, "state": "END", "error": ""}]
        assert admin.load(deadline()) == 1 and calls == [1, 1]
        assert admin.predict([rows[3]], deadline()).outputs[0][0, 0] == 12.0
    finally:
        harness.close()


def test_an_unload_while_loading_wins(tmp_path):
    root = version_dir(tmp_path / "versions", 1)
    gate, calls = threading.Event(), []
    plain = versioned_loader({1: ToyModel(), 2: Shifted()}, calls)

    def load(settings: Settings) -> ModelRunner:
        if calls:  # the second load waits until the test has unloaded
            gate.wait(WAIT_S)
        return plain(settings)

    harness = MuleHarness(mule_settings(tmp_path, model_path=root, model_settle_s=0), load)
    try:
        client, admin = harness.client(0), harness.client(1)
        harness.wait_ready()
        version_dir(root, 2)
        outcome: list[BaseException] = []

        def load_in_background() -> None:
            try:
                client.load(deadline())
            except LoadFailed as exc:
                outcome.append(exc)

        loading = threading.Thread(target=load_in_background)
        loading.start()
        harness.wait_until(lambda server: server._load_waiters, "the load asked for")
        admin.unload()
        loading.join(WAIT_S)
        assert len(outcome) == 1 and "unloaded before the load ended" in str(outcome[0])
        gate.set()
        harness.wait_until(lambda server: server.history.as_list()[0]["error"], "the finished load discarded")
        status = admin.status(fresh=True)
        assert status.state == "unloaded" and harness.server.models == {}
        assert status.versions[0] == {"version": 2, "state": "END", "error": "unloaded before it was served"}
    finally:
        gate.set()
        harness.close()
