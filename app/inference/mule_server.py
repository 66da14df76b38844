"""The batching mule: owns the model, gathers ready slots into one batch, runs it, answers each waiter.

One thread runs the event loop: it reads messages, forms batches, copies their rows in and their
outputs out, and answers. Model calls run on MODEL_CONCURRENCY threads (TensorFlow releases the
GIL; `auto`: as many as a race on the server's own load found faster, concurrency.py), so the
next batch is gathered, and with 2 or more run, while one computes; a call cheaper than
INLINE_CALL_MS (model_runner.py) runs on the loop itself, as the hand-off would cost a good part
of it. A thread only loads the model at start, so status questions are answered ("loading",
"failed: why") while TensorFlow starts. A model that fails to load leaves the mule alive and
saying so: uWSGI respawns a dead mule without any throttle, so dying would be a crash loop.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from app.config import Settings
from app.inference import versions, wire
from app.inference.backend import UNLOADED_REASON, not_ready_reason
from app.inference.batching import BatchPolicy, Pending, efficient_batch, per_row_ms
from app.inference.concurrency import LiveRace, most_model_threads
from app.inference.model_runner import ModelLoadError, ModelRunner
from app.inference.spec import VARIABLE, Batch
from app.metrics import PROCESS_STARTS, MuleMetrics

log = logging.getLogger(__name__)

class VersionHistory:
    """What became of each version, as TF Serving's version status tells it: LOADING, AVAILABLE,
    UNLOADING or END (with the error if it failed). The loader thread and the loop both write it,
    hence the lock; only the newest KEEP entries are kept, however many reloads there are."""

    KEEP = 16

    def __init__(self) -> None:
        self._states: dict[int, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def set(self, version: int, state: str, error: str = "") -> None:
        with self._lock:
            self._states.pop(version, None)
            self._states[version] = (state, error)
            while len(self._states) > self.KEEP:
                del self._states[next(iter(self._states))]  # the longest untouched

    def as_list(self) -> list[dict]:
        with self._lock:
            return [{"version": v, "state": state, "error": error}
                    for v, (state, error) in sorted(self._states.items(), reverse=True)]


class MuleServer:
    def __init__(
        self,
        settings: Settings,
        shm,
        load: Callable[[Settings], ModelRunner],
        guard: Callable[[int], None] = lambda seconds: None,
    ):
        """`shm` is the shared memory of all slots; `guard(seconds)` arms a watchdog around each
        model call (uWSGI's user harakiri in production), `guard(0)` disarms it."""
        self.settings = settings
        self.shm = shm
        self._load = load
        self._guard = guard
        self.runner: ModelRunner | None = None
        self.layout: wire.SlotLayout | None = None
        self.error: str | None = None
        self.policy = BatchPolicy(
            settings.max_batch_size, settings.batch_timeout_ms / 1000, settings.max_queue_rows
        )
        self.counts: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self.compute_ms_total = 0.0
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._stop = False
        self._next_wait: float | None = None
        # batches in flight: a free input buffer per model thread; finished batches come back
        # through `_completed`, and a byte on the wake pipe interrupts the loop's select()
        # (as many threads as MODEL_CONCURRENCY=auto may choose: each version's runner says how many run)
        self._executor = ThreadPoolExecutor(settings.model_concurrency or most_model_threads(),
                                            thread_name_prefix="model")
        self._free_buffers: list[Batch] = []
        self._race: LiveRace | None = None  # MODEL_CONCURRENCY=auto, until it has chosen
        self._completed: queue.SimpleQueue = queue.SimpleQueue()
        self.rows_in_flight = 0
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        # the newest request of each slot: an older one's outputs must not overwrite its slot
        self._latest: dict[int, Pending] = {}
        self.metrics = MuleMetrics.for_model(settings.model_name)
        self.load_seconds = 0.0
        # every version still needed: the current one, and older ones until their queued and
        # running requests are answered; loads run on a thread and are installed by the loop
        self.models: dict[int, tuple[ModelRunner, wire.SlotLayout]] = {}
        self._running: Counter[int] = Counter()  # batches in the model, by version
        self._installs: queue.SimpleQueue = queue.SimpleQueue()
        self._loading = threading.Lock()
        # the version that failed and when its files last changed: the poll retries it only once
        # they change again (a copy that finished after all, a fixed file)
        self._failed: tuple[int, float] | None = None
        self.reloads = 0
        self.reload_error: str | None = None
        self.history = VersionHistory()
        self.unloaded = False  # UNLOAD was asked: nothing is served until the next RELOAD
        self._generation = 0  # bumped by UNLOAD: a load begun before it is not installed
        self._load_waiters: list[socket.socket] = []  # answered when the load under way ends

    # --- start-up -------------------------------------------------------------------------

    def reload(self, reason: str, waiter: socket.socket | None = None) -> bool:
        """Load the version to serve now beside the current one, on a thread; the loop switches
        between two batches once it is warm. True if a load started; False if one is already under
        way (`waiter` then hears how that one ends) or the version is the one served (a version is
        never reloaded in place: a new model is a new version, as in TF Serving)."""
        if waiter is not None:
            self._load_waiters.append(waiter)
        if not self._loading.acquire(blocking=False):
            return False
        target = self._wanted_version()
        if target is not None and target == self.served_version:
            self._loading.release()
            log.info("version %d is already served; nothing to load (%s)", target, reason)
            if waiter is not None:  # only the loop passes one: the list is the loop's
                self._answer_waiters(None)
            return False
        if target is not None:
            self.history.set(target, "LOADING")
        log.info("loading the model (%s)", reason)
        threading.Thread(target=self._load_model, args=(target, self._generation), name="model-loader",
                         daemon=True).start()
        return True

    def _load_model(self, target: int | None, generation: int) -> None:
        """On the loader thread: load, warm and plan the slot layout; the loop installs it."""
        try:
            self._installs.put((generation, target, self._load_and_plan()))
        except ModelLoadError as exc:
            self._installs.put((generation, target, str(exc)))
        except Exception as exc:  # any failure means the same: not installed, and say why
            self._installs.put((generation, target, f"{type(exc).__name__}: {exc}"))
        finally:
            self._loading.release()
            os.write(self._wake_write, b"!")

    def unload(self) -> None:
        """UNLOAD: stop serving. What is queued or running is still answered by its version,
        which is freed once done; a load under way is not installed."""
        if self.runner is not None:
            self.history.set(self.runner.spec.version, "UNLOADING")
            log.info("model %s version %d unloaded on request: not ready until loaded again",
                     self.runner.spec.name, self.runner.spec.version)
        self.runner, self.layout = None, None
        self.unloaded, self._generation = True, self._generation + 1
        self._answer_waiters("the model was unloaded before the load ended")
        self._retire()

    def _load_and_plan(self) -> tuple[ModelRunner, wire.SlotLayout, float]:
        started = time.monotonic()
        runner = self._load(self.settings)
        layout = wire.SlotLayout.plan(
            runner.spec, self.settings.slot_bytes, self.settings.max_batch_size, self.settings.max_string_bytes
        )
        if layout.rows == 0:
            tensors = (*runner.spec.inputs, *runner.spec.outputs)
            row = sum(t.row_bytes(self.settings.max_string_bytes) for t in tensors)
            raise ModelLoadError(
                f"one row of inputs and outputs needs {row} bytes; SLOT_MB={self.settings.slot_mb} is too small"
            )
        return runner, layout, time.monotonic() - started

    def _install_loaded(self) -> None:
        """On the loop, between batches: serve what a load produced, or say why it failed."""
        while True:
            try:
                loaded = self._installs.get_nowait()
            except queue.Empty:
                return
            generation, target, loaded = loaded
            if generation != self._generation:  # unloaded while it loaded: not installed
                if target is not None:
                    self.history.set(target, "END", "unloaded before it was served")
                if self._load_waiters:  # asked for again since: load afresh for them
                    self.reload("asked to after an unload")
                continue
            if isinstance(loaded, str):
                self._load_failed(loaded, target)
                continue
            runner, layout, seconds = loaded
            version = runner.spec.version
            if version == self.served_version:
                log.info("version %d is already served; nothing to switch", version)
                self._answer_waiters(None)
                continue
            first = self.runner is None
            if not first and (runner.spec.inputs, runner.spec.outputs) != (self.runner.spec.inputs,
                                                                           self.runner.spec.outputs):
                log.warning("version %d has another signature than version %d: inputs %s, outputs %s",
                            version, self.runner.spec.version, [(t.name, t.shape, t.dtype) for t in runner.spec.inputs],
                            [(t.name, t.shape, t.dtype) for t in runner.spec.outputs])
            if not first:
                self.history.set(self.runner.spec.version, "UNLOADING")
            self.history.set(version, "AVAILABLE")
            self.models[version] = (runner, layout)
            self.runner, self.layout, self.load_seconds = runner, layout, seconds
            self.policy.max_batch = self._batch_limit(runner)
            self._race = self._new_race(runner)
            if self.settings.model_concurrency:
                runner.concurrency = self.settings.model_concurrency
            # one buffer per idle model thread (the race's count while it runs), shaped for this
            # version (busy threads get theirs back later)
            self._free_buffers = []
            self._match_buffers()
            self.policy.costs_ms = runner.batch_costs_ms if self.settings.batch_autotune else {}  # pad or split
            self.error, self.reload_error, self._failed, self.unloaded = None, None, None, False
            if not first:
                self.reloads += 1
                self.metrics.reloads_ok.inc()
            log.info("mule serving model %s version %d: batches of up to %d rows, %d rows per slot, %d slots",
                     runner.spec.name, version, self.policy.max_batch, layout.rows, self.settings.n_slots)
            self._answer_waiters(None)
            self._retire()

    def _load_failed(self, error: str, target: int | None) -> None:
        if target is not None:
            self.history.set(target, "END", error)
            self._failed = (target, self._changed_at(target))
        self._answer_waiters(error)
        if self.runner is None:
            self.error, self.unloaded = error, False
            log.error("model failed to load, the server stays not ready: %s", error)
            return
        self.reload_error = error
        self.metrics.reloads_failed.inc()
        log.error("reload failed, version %d keeps serving: %s", self.runner.spec.version, error)

    def _answer_waiters(self, error: str | None) -> None:
        """Tell whoever asked for the load that just ended how it went."""
        for conn in self._load_waiters:
            self._send(conn, wire.Outcome(wire.RELOAD, self.served_version or 0, error).pack())
        self._load_waiters.clear()

    def _retire(self) -> None:
        """Free every version no longer served that nothing queued or running needs any more."""
        queued = {p.version for p in self.policy.queue}
        for version in [v for v in self.models if v != self.served_version]:
            if not self._running[version] and version not in queued:
                del self.models[version]
                self.history.set(version, "END")
                gc.collect()  # a Keras model holds reference cycles: free it now, not at some later collection
                log.info("version %d unloaded", version)

    @property
    def served_version(self) -> int | None:
        """The version new requests go to; None before the first load and after an unload."""
        return self.runner.spec.version if self.runner is not None else None

    def _batches_running(self) -> int:
        return sum(self._running.values())

    def _not_ready_reason(self) -> str:
        if self.unloaded:
            return UNLOADED_REASON
        return not_ready_reason(self.error)

    def _wanted_version(self) -> int | None:
        """The version MODEL_PATH says to serve now, or None if it names none."""
        try:
            return versions.choose(self.settings.model_path, self.settings.model_version,
                                   self.settings.model_settle_s).number
        except (FileNotFoundError, OSError):
            return None

    def _watch_versions(self) -> None:
        """MODEL_POLL_S: reload when the directory's version to serve is not the one served (and
        not one that failed as its files are now). A server whose first load failed (say, started
        before any version was there) becomes ready this way; an unloaded one stays unloaded."""
        while not self._stop:
            time.sleep(self.settings.model_poll_s)
            wanted = self._wanted_version()
            current = self.served_version
            if wanted in (None, current) or (current is None and (self.unloaded or self.error is None)):
                continue
            if self._failed is not None and self._failed == (wanted, self._changed_at(wanted)):
                continue
            self.reload(f"version {wanted} appeared in {self.settings.model_path}")

    def _changed_at(self, version: int) -> float:
        return versions.changed_at(self.settings.model_path, version)

    def _new_race(self, runner: ModelRunner) -> LiveRace | None:
        """MODEL_CONCURRENCY=auto: a race for this version, where more than one call at once can
        happen at all: batches of the limit's size go to a model thread, and there are cores."""
        most = most_model_threads()
        bucket = runner.bucket_for(self.policy.max_batch)
        if (self.settings.model_concurrency or most < 2 or runner.spec.is_variable
                or bucket not in runner.batch_costs_ms or runner.runs_inline(bucket)):
            return None
        return LiveRace(most, best=min(runner.concurrency, most))

    def _match_buffers(self) -> None:
        """As many free buffers as the current version may run batches more (the race changes it)."""
        runner = self.runner
        if runner is None:
            return
        if self._race is not None:
            runner.concurrency = self._race.concurrency
        wanted = max(0, runner.concurrency - self._batches_running())
        del self._free_buffers[wanted:]
        self._free_buffers += [runner.new_buffer() for _ in range(wanted - len(self._free_buffers))]

    def _batch_limit(self, runner: ModelRunner) -> int:
        """MAX_BATCH_SIZE, or with BATCH_AUTOTUNE the batch size that costs least per row."""
        if not self.settings.batch_autotune:
            return self.settings.max_batch_size
        best = efficient_batch(runner.batch_costs_ms)
        if best is None:
            return self.settings.max_batch_size
        if best < self.settings.max_batch_size:
            per_row = {size: round(ms, 2) for size, ms in per_row_ms(runner.batch_costs_ms).items()}
            log.info("batch limit %d: the cheapest per row (ms per row by batch size %s);"
                     " BATCH_AUTOTUNE=off uses MAX_BATCH_SIZE=%d", best, per_row, self.settings.max_batch_size)
        return best

    def listen(self) -> None:
        path = self.settings.mule_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(1024)
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)
        self._listener = listener

    def serve_forever(self) -> None:
        self.listen()
        self.reload("start")
        if self.settings.model_poll_s:
            threading.Thread(target=self._watch_versions, name="version-watch", daemon=True).start()
        while not self._stop:
            self.step()

    def stop(self) -> None:
        self._stop = True

    # --- the loop -------------------------------------------------------------------------

    def step(self, max_wait: float = 1.0) -> None:
        """Read every message that has arrived, finish the batches that are done, and start one
        if a model thread is free and the policy says so."""
        self._poll(max_wait if self._next_wait is None else self._next_wait)
        self._finish_completed()
        self._install_loaded()
        self._next_wait = None
        if self._race is not None:
            if not self._race.may_start(time.monotonic(), self._batches_running()):
                return  # a race window's batches finish before the next window's start
            self._match_buffers()
            if self._race.decided:
                self._race = None
        if not self.models or not self._free_buffers:
            return  # a finished batch or a message wakes the loop (unloaded: the queue still drains)
        decision = self.policy.decide(time.monotonic())
        for pending in decision.expired:
            self.counts["expired"] += 1
            self.metrics.shed_deadline.inc()
            self._reply(pending, wire.EXPIRED, message="deadline passed while queued")
        if decision.batch:
            self._start(decision.batch)
            self._next_wait = 0.0  # collect what has arrived meanwhile, then decide again
        else:
            self._next_wait = decision.wait

    def _poll(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj == self._wake_read:
                while True:
                    try:
                        if not os.read(self._wake_read, 4096):
                            break
                    except BlockingIOError:
                        break
            else:
                self._drain(key.fileobj)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            self._selector.register(conn, selectors.EVENT_READ)

    def _drain(self, conn: socket.socket) -> None:
        while True:
            try:
                message = conn.recv(256)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                self._close(conn)
                return
            if message[0] == wire.INFER:
                self._enqueue(conn, message)
            elif message[0] == wire.STATUS:
                self._send(conn, self.status().pack())
            elif message[0] == wire.RELOAD:
                self.unloaded = False  # "loading" from now on, not "unloaded"
                self.reload("asked to", waiter=conn)
            elif message[0] == wire.UNLOAD:
                self.unload()
                self._send(conn, wire.Outcome(wire.UNLOAD).pack())

    def _enqueue(self, conn: socket.socket, message: bytes) -> None:
        slot, seq, rows, deadline, version, dims = wire.unpack_infer(message)
        now = time.monotonic()
        pending = Pending(conn, slot, seq, rows, deadline, now, dims, version)
        if deadline <= now:  # shed at once, and counted before any later message is answered
            self.counts["expired"] += 1
            self.metrics.shed_deadline.inc()
            self._reply(pending, wire.EXPIRED, message="deadline passed before the model was reached")
        elif self.runner is None:
            self._reply(pending, wire.NOT_READY, message=self._not_ready_reason())
        elif version not in self.models:
            self._reply(pending, wire.STALE, message=f"version {version} is no longer loaded")
        elif slot >= self.settings.n_slots or not self._valid(pending):
            self._reply(pending, wire.FAILED, message=f"bad request: slot {slot}, {rows} rows, sizes {dims}")
        elif not self.policy.admit(pending):
            self.counts["overloaded"] += 1
            self.metrics.shed_overload.inc()
            self._reply(pending, wire.OVERLOADED, message=f"queue full ({self.settings.max_queue_rows} rows)")
        else:
            self._latest[slot] = pending

    def _valid(self, pending: Pending) -> bool:
        """Rows the slot holds; one positive size per variable input dimension, and rows that
        fit their regions."""
        runner, layout = self.models[pending.version]
        spec, dims = runner.spec, pending.shape
        wanted = sum(t.shape.count(VARIABLE) for t in spec.inputs)
        return 0 < pending.rows <= layout.rows and len(dims) == wanted and all(d > 0 for d in dims) and (
            not dims or layout.rows_for(spec, spec.input_shapes(dims)) > 0)

    def _start(self, batch: list[Pending]) -> None:
        """Copy the batch's rows out of their slots and hand it to a free model thread."""
        version = batch[0].version  # all its requests share their version and sizes (BatchPolicy)
        runner, layout = self.models[version]
        spec = runner.spec
        total = sum(p.rows for p in batch)
        buffer = self._free_buffers.pop()  # buffers fit the current version: others get their own
        if spec.is_variable or runner is not self.runner:
            buffer = runner.new_buffer(spec.input_shapes(batch[0].shape) if spec.is_variable else None)
        offset, now = 0, time.monotonic()
        for pending in batch:
            self.metrics.queue_seconds.observe(now - pending.arrival)
            arrays = layout.read_inputs(self.shm, pending.slot, spec, pending.rows, pending.shape)
            for target, array in zip(buffer, arrays):
                target[offset : offset + pending.rows] = array
            offset += pending.rows
        if self._race is not None and runner is self.runner:
            self._race.started(now, self._batches_running())
        self.rows_in_flight += total
        self._running[version] += 1
        bucket = runner.bucket_for(total)
        self.metrics.padded_rows.inc(bucket - total)
        self._guard(max(1, self.settings.harakiri_s))
        if runner.runs_inline(bucket):
            self._completed.put(self._call(runner, batch, buffer, total))
            self._finish_completed()
        else:
            self._executor.submit(self._execute, runner, batch, buffer, total)

    def _execute(self, runner: ModelRunner, batch: list[Pending], buffer: Batch, total: int) -> None:
        """On a model thread: one model call, then back to the loop."""
        self._completed.put(self._call(runner, batch, buffer, total))
        os.write(self._wake_write, b"!")

    @staticmethod
    def _call(runner: ModelRunner, batch: list[Pending], buffer: Batch, total: int) -> tuple:
        """One model call: what `_finish_completed` takes (outputs or the error, and the ms it took)."""
        started = time.perf_counter()
        try:
            outputs, error = runner.run_padded(buffer, total), None
        except Exception as exc:
            log.exception("model call failed on a batch of %d rows", total)
            outputs, error = None, exc
        return batch, buffer, total, outputs, error, (time.perf_counter() - started) * 1000

    def _finish_completed(self) -> None:
        """On the loop: write each finished request's outputs into its slot and answer it."""
        while True:
            try:
                batch, buffer, total, outputs, error, compute_ms = self._completed.get_nowait()
            except queue.Empty:
                break
            version = batch[0].version
            runner, layout = self.models[version]
            self._running[version] -= 1
            if self._race is not None and runner is self.runner:
                self._race.finished(time.monotonic(), 0 if error else total, self._batches_running())
            # unloaded: any buffer will do, the next load replaces them all; a version that runs
            # fewer calls at once than the one before gets back fewer buffers
            if self.runner is None:
                self._free_buffers.append(buffer)
            elif len(self._free_buffers) + self._batches_running() < self.runner.concurrency:
                fits = runner is self.runner and not runner.spec.is_variable
                self._free_buffers.append(buffer if fits else self.runner.new_buffer())
            self.rows_in_flight -= total
            if not self._batches_running():
                self._guard(0)
            if error is not None:
                self.counts["failed"] += len(batch)
                self.metrics.failed_rows.inc(total)
                for pending in batch:
                    self._reply(pending, wire.FAILED, message=f"the model failed: {type(error).__name__}")
                self._retire()
                continue
            self.compute_ms_total += compute_ms
            self.metrics.batch_seconds.observe(compute_ms / 1000)
            self.metrics.batch_rows.observe(total)
            self.batch_sizes[total] += 1
            self.counts["batches"] += 1
            self.counts["rows"] += total
            spec = runner.spec
            dims = spec.variable_dims(spec.outputs, outputs)
            offset = 0
            for pending in batch:
                if self._latest.get(pending.slot) is pending:  # else a newer request owns the slot
                    rows = [out[offset : offset + pending.rows] for out in outputs]
                    try:
                        layout.write_outputs(self.shm, pending.slot, spec, rows)
                    except wire.DoesNotFit as exc:
                        self._reply(pending, wire.FAILED, message=str(exc))
                    else:
                        self._reply(pending, wire.OK, total, compute_ms, dims=dims)
                offset += pending.rows
            self._retire()

    # --- replies and connections ----------------------------------------------------------

    def _reply(self, pending: Pending, code: int, batch_size: int = 0, compute_ms: float = 0.0, *,
               message: str = "", dims: tuple[int, ...] = ()) -> None:
        self._send(pending.conn, wire.Reply(pending.seq, code, batch_size, compute_ms, dims, message,
                                            self.served_version or 0).pack())

    def _send(self, conn: socket.socket, data: bytes) -> None:
        try:
            conn.send(data)
        except (BlockingIOError, OSError):
            # A full buffer means the worker stopped reading (it is stuck or gone): drop it.
            self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        if conn.fileno() < 0:
            return
        self.policy.drop(conn)
        self._selector.unregister(conn)
        conn.close()

    def status(self) -> wire.MuleStatus:
        runner, batches = self.runner, self.counts["batches"]
        stats = wire.MuleStats(
            pid=os.getpid(),
            batches=batches,
            rows=self.counts["rows"],
            mean_batch_size=round(self.counts["rows"] / batches, 3) if batches else 0.0,
            batch_sizes={str(k): v for k, v in sorted(self.batch_sizes.items())},
            mean_compute_ms=round(self.compute_ms_total / batches, 3) if batches else 0.0,
            queued_rows=self.policy.queued_rows,
            expired=self.counts["expired"],
            overloaded=self.counts["overloaded"],
            failed=self.counts["failed"],
            buckets=list(runner.buckets) if runner else [],
            batch_limit=self.policy.max_batch,
            # unrounded: these are the costs the policy splits batches by, so a client can replay it
            batch_cost_ms={str(k): v for k, v in runner.batch_costs_ms.items()} if runner else {},
            compiled_buckets=list(runner.compiled_buckets) if runner else [],
            model_concurrency=runner.concurrency if runner else self.settings.model_concurrency,
            model_concurrency_racing=self._race is not None,
            batches_in_flight=self._batches_running(),
            rows_in_flight=self.rows_in_flight,
            load_seconds=round(self.load_seconds, 3),
            warmup_seconds=round(runner.warmup_seconds, 3) if runner else 0.0,
            reloads=self.reloads,
            reload_error=self.reload_error,
            versions=self.history.as_list(),
        )
        state = "ready" if runner else ("failed" if self.error else ("unloaded" if self.unloaded else "loading"))
        return wire.MuleStatus(state, stats, self.error, runner.spec if runner else None, self.layout)


def run() -> None:
    """The mule process: load the model, then serve batches until killed (see mule_main.py)."""
    import uwsgi  # noqa: PLC0415 - only exists inside uWSGI

    from app import configure_logging  # noqa: PLC0415
    from app.inference.model_runner import load_runner  # noqa: PLC0415

    settings = Settings.from_env()
    configure_logging(settings)
    shm = uwsgi.sharedarea_memoryview(0)
    needed = settings.n_slots * settings.slot_bytes
    if len(shm) < needed:
        raise SystemExit(f"sharedarea holds {len(shm)} bytes, {needed} needed: start through app.launch")
    log.info("mule %d starting: model %s", os.getpid(), settings.model_path.name)
    PROCESS_STARTS.labels(settings.model_name, "mule").inc()
    loader = functools.partial(load_runner, costs_dir=settings.batch_costs_dir)
    MuleServer(settings, shm, loader, guard=uwsgi.set_user_harakiri).serve_forever()
