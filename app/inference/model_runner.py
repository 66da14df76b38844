"""Load a Keras model and run it on padded, bucketed batches. The only module that imports TensorFlow.

Imported by the mule (mule mode) or by each worker after the fork (worker mode), never by the
uWSGI master: TensorFlow's runtime does not survive a fork.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.config import Settings
from app.inference import batch_costs, versions
from app.inference.spec import BYTES, VARIABLE, Batch, ModelSpec, TensorSpec

log = logging.getLogger(__name__)

PROBE_SIZE = 32  # the size a variable dimension gets in the load-time probe and the warm-up
# calls that cost more at warm-up run as a graph without trying XLA: its saving, a fixed 0.1-0.3 ms
# per call, is too small a share of them to pay for compiling
COMPILE_UP_TO_MS = 5.0
STOP_AFTER_LOSSES = 2  # sizes in a row at which XLA was slower before larger ones are not tried
# the race stops trying new sizes after this long: a large graph can take XLA many seconds per shape
COMPILE_BUDGET_S = 20.0
# A batch whose call cost at most this at warm-up runs on the mule's loop thread itself: handing it
# to a model thread and back costs about 0.1 ms of wake-ups (2-core AMD EPYC VM), a tenth of a small
# CNN's call, while a status question or a refusal waits no longer than this for the loop.
INLINE_CALL_MS = 5.0


class ModelLoadError(Exception):
    """The model file, its input or its labels cannot be served; the message says what to fix."""


def read_labels(path: Path | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelLoadError(f"cannot read LABELS_PATH {path}: {exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.strip() for line in lines)


class ModelRunner:
    """Calls the model on batches padded up to fixed bucket sizes, so no new shape is ever traced.

    Each bucket size runs the traced graph or, where warm-up timed it faster, the same graph
    compiled with XLA (`compile_where_faster`)."""

    def __init__(self, spec: ModelSpec, call: Callable[[Batch], Batch], buckets: tuple[int, ...],
                 compiler: Callable[[], Callable[[Batch], Batch]] | None = None):
        self.spec = spec
        self._plain = call
        self._compiler = compiler  # builds the XLA-compiled call; None: the model runs as a plain graph
        self._calls = dict.fromkeys(buckets, call)
        self.buckets = buckets
        self.max_batch = buckets[-1]
        self._buffer = self.new_buffer()
        self.batch_costs_ms: dict[int, float] = {}  # bucket size -> ms per call, measured by warmup()
        self.compiled_buckets: tuple[int, ...] = ()
        self.concurrency = 1  # model calls the mule runs at once (MODEL_CONCURRENCY, or its live race)
        self.warmup_seconds = 0.0

    def bucket_for(self, rows: int) -> int:
        return next(size for size in self.buckets if size >= rows)

    def runs_inline(self, bucket: int) -> bool:
        """Whether the mule runs a batch padded to `bucket` on its loop rather than on a model
        thread: it cost INLINE_CALL_MS or less at warm-up (not timed, or rows of sizes warm-up did
        not use: a model thread)."""
        cost = self.batch_costs_ms.get(bucket)
        return cost is not None and cost <= INLINE_CALL_MS and not self.spec.is_variable

    def new_buffer(self, shapes: list[tuple[int, ...]] | None = None) -> Batch:
        """Input arrays for the largest batch; fill their first rows, then `run_padded`. One per
        batch in flight, reused from batch to batch; for a model with variable dimensions, one
        per batch of the given row shapes (PROBE_SIZE for each variable dimension by default)."""
        shapes = shapes or [tuple(PROBE_SIZE if d == VARIABLE else d for d in t.shape) for t in self.spec.inputs]
        return [tensor.empty(self.max_batch, shape) for tensor, shape in zip(self.spec.inputs, shapes)]

    def run_padded(self, buffer: Batch, rows: int) -> Batch:
        """Run the model on the first `rows` rows of `buffer`, padded up to a bucket size."""
        size = self.bucket_for(rows)
        outputs = self._calls[size]([array[:size] for array in buffer])
        return [out[:rows] for out in outputs]

    def run(self, batch: Batch) -> Batch:
        """Run any number of rows, in chunks of at most the largest bucket (not thread-safe)."""
        results: list[Batch] = []
        total = len(batch[0])
        buffer = self.new_buffer([a.shape[1:] for a in batch]) if self.spec.is_variable else self._buffer
        for start in range(0, total, self.max_batch):
            count = min(self.max_batch, total - start)
            for target, source in zip(buffer, batch):
                target[:count] = source[start : start + count]
            results.append(self.run_padded(buffer, count))
        return [np.concatenate(parts) for parts in zip(*results)]

    def warmup(self, repeats: int) -> dict[int, float]:
        """Call every bucket size once so no client pays for a first call, then time each size
        `repeats` more times and keep the median: the batch cost T(n) that the mule's batch limit
        is chosen from. The timed passes are interleaved, so a slow spell on a shared machine
        falls on every size alike rather than on one."""
        began = time.perf_counter()
        for size in self.buckets:
            self._calls[size](self._padding(size))
        samples = self._time([(size, self._calls[size]) for size in self.buckets], repeats)
        if repeats:
            self.batch_costs_ms = {size: statistics.median(times) for size, times in zip(self.buckets, samples)}
        self.warmup_seconds += time.perf_counter() - began
        return self.batch_costs_ms

    def compile_where_faster(self, repeats: int) -> tuple[int, ...]:
        """Race the XLA-compiled call against the graph at each bucket size that cost
        COMPILE_UP_TO_MS or less in `warmup`, smallest first, and keep it where its median is lower.

        A graph call dispatches each op through TensorFlow's executor and hands it to a pool
        thread; a compiled call runs fused kernels on the calling thread. That saves a fixed
        0.1-0.3 ms per call, most of a tiny model's cost, while XLA's own kernels can be slower
        than TensorFlow's (a CNN's convolutions at 16 rows and more took twice as long on a
        2-core AMD EPYC VM): which one wins depends on the model, the batch size and the
        machine, so it is measured here rather than assumed. What XLA loses grows with the
        rows and what it saves does not, so once it has lost at STOP_AFTER_LOSSES sizes in a row
        the larger ones are not compiled at all, nor any once the race has taken COMPILE_BUDGET_S
        (compiling a large graph takes seconds per shape). A model that XLA cannot compile, or whose
        compiled answer to the warm-up batch differs from the graph's, runs as a graph.
        Returns the sizes that run compiled."""
        sizes = [size for size, ms in sorted(self.batch_costs_ms.items()) if ms <= COMPILE_UP_TO_MS]
        if self._compiler is None or not sizes:
            return ()
        began = time.perf_counter()
        costs: dict[int, float] = {}
        faster: list[int] = []
        losses = 0
        try:
            compiled = self._compiler()
            for size in sizes:
                if time.perf_counter() - began > COMPILE_BUDGET_S:
                    log.info("XLA not tried at %d rows and up: the race took its %.0f s", size, COMPILE_BUDGET_S)
                    break
                _check_agreement(self._plain(self._padding(size)), compiled(self._padding(size)))
                graph, xla = self._time([(size, self._plain), (size, compiled)], repeats)
                plain_ms, compiled_ms = statistics.median(graph), statistics.median(xla)
                costs[size] = min(plain_ms, compiled_ms)
                if compiled_ms < plain_ms:
                    faster.append(size)
                    losses = 0
                else:
                    losses += 1
                if losses == STOP_AFTER_LOSSES:
                    break
            self._use(compiled, faster)
            self.batch_costs_ms.update(costs)
        except Exception as exc:  # XLA raises many types for an op it cannot compile; all mean "don't"
            self._give_up_compiling(exc)
        self.warmup_seconds += time.perf_counter() - began
        return self.compiled_buckets

    def use_compiled(self, sizes: tuple[int, ...]) -> None:
        """Run these bucket sizes compiled, as an earlier warm-up chose (compiling each now)."""
        if self._compiler is not None and sizes:
            began = time.perf_counter()
            try:
                compiled = self._compiler()
                chosen = [size for size in sizes if size in self._calls]
                for size in chosen:
                    compiled(self._padding(size))  # XLA compiles on the first call at each shape
                self._use(compiled, chosen)
            except Exception as exc:  # as in compile_where_faster: the graph serves instead
                self._give_up_compiling(exc)
            self.warmup_seconds += time.perf_counter() - began

    def _give_up_compiling(self, exc: Exception) -> None:
        log.info("the model runs as a graph, not compiled with XLA: %s: %s", type(exc).__name__, exc)
        self._compiler = None
        self._calls = dict.fromkeys(self.buckets, self._plain)
        self.compiled_buckets = ()

    def _use(self, compiled: Callable[[Batch], Batch], sizes: list[int]) -> None:
        """Route these sizes to `compiled`, already called (so compiled) at each of them."""
        for size in sizes:
            self._calls[size] = compiled
        self.compiled_buckets = tuple(sizes)

    def _padding(self, size: int) -> Batch:
        return [array[:size] for array in self._buffer]

    def _time(self, calls: list[tuple[int, Callable[[Batch], Batch]]], repeats: int) -> list[list[float]]:
        """ms per call of each (size, call), in `repeats` interleaved passes over the list."""
        samples: list[list[float]] = [[] for _ in calls]
        for _ in range(repeats):
            for (size, call), times in zip(calls, samples):
                started = time.perf_counter()
                call(self._padding(size))
                times.append((time.perf_counter() - started) * 1000)
        return samples


def _check_agreement(expected: Batch, got: Batch) -> None:
    """Raise unless the compiled call answered as the graph did (XLA may fuse and reorder float
    arithmetic: a difference in the last digits is expected, more is a miscompilation)."""
    for want, have in zip(expected, got, strict=True):
        scale = float(np.abs(want).max(initial=0.0)) if want.dtype.kind in "fc" else 0.0
        if want.shape != have.shape or not np.allclose(have, want, rtol=1e-3, atol=1e-5 + 1e-3 * scale):
            raise ValueError("its answer to the warm-up batch differs from the graph's")


def _settled_version(settings: Settings) -> versions.Version:
    """The version to serve; while the only candidates are still being copied, wait for the copy
    to end rather than fail (a server started beside a copy in progress)."""
    said = False
    while True:
        try:
            return versions.choose(settings.model_path, settings.model_version, settings.model_settle_s)
        except versions.NotSettled as exc:
            if not said:
                log.info("%s", exc)
                said = True
            time.sleep(min(1.0, max(0.1, settings.model_settle_s / 4)))  # files have no event to wait on
        except FileNotFoundError as exc:
            raise ModelLoadError(str(exc)) from None


def load_runner(settings: Settings, costs_dir: Path | None = None) -> ModelRunner:
    """Load MODEL_PATH (.keras, .h5 or a SavedModel directory), describe it, and warm it up.
    The mule passes `costs_dir` to share its batch costs with its successors (batch_costs.py);
    other callers (the benchmark's ceiling) always measure."""
    if not settings.model_path.exists():
        raise ModelLoadError(f"MODEL_PATH {settings.model_path} does not exist")
    version = _settled_version(settings)
    path = version.path
    started = time.perf_counter()
    import tensorflow as tf  # noqa: PLC0415 - deliberately late: never in the uWSGI master

    _configure_threads(settings.model_thread_spinning, settings.model_threads)
    try:
        graph, inputs, output_names, output_shapes = (_load_saved_model if path.is_dir() else _load_keras)(tf, path)
        call = _traced(tf, graph, inputs, jit=False)
    except ModelLoadError:
        raise
    except Exception as exc:  # Keras raises many types for a bad file; all mean the same here.
        raise ModelLoadError(f"cannot load model {path}: {type(exc).__name__}: {exc}") from None

    probe = call([t.empty(1, tuple(PROBE_SIZE if d == VARIABLE else d for d in t.shape)) for t in inputs])
    outputs = tuple(
        TensorSpec(name=name, shape=_output_shape(out.shape[1:], declared), dtype=_dtype_name(out.dtype))
        for name, out, declared in zip(output_names, probe, output_shapes)
    )
    labels = read_labels(settings.labels_path)
    spec = ModelSpec(
        name=settings.model_name, inputs=inputs, outputs=outputs, labels=labels, preprocess=settings.preprocess,
        version=version.number,
    )
    if labels is not None and spec.is_classifier and len(labels) != outputs[0].shape[0]:
        raise ModelLoadError(
            f"LABELS_PATH {settings.labels_path} has {len(labels)} labels but the model"
            f" outputs {outputs[0].shape[0]} classes"
        )
    mule = settings.inference_mode == "mule"  # a worker-mode worker only needs warm shapes
    # XLA compiles each shape anew (no variable dimensions), has no string type, and clamps an
    # index out of range where the graph fails the request: only float inputs are compiled
    compiles = (mule and settings.model_compile == "auto" and not spec.is_variable
                and all(not t.is_bytes and np.dtype(t.dtype).kind == "f" for t in inputs))
    runner = ModelRunner(spec, call, settings.batch_buckets,
                         compiler=(lambda: _traced(tf, graph, inputs, jit=True)) if compiles else None)
    # the costs choose the mule's batch limit and where XLA runs (with variable dimensions the
    # cost depends on each batch's sizes: no single limit to choose)
    timed = mule and (settings.batch_autotune or compiles) and not spec.is_variable
    shared = timed and costs_dir is not None
    known = batch_costs.recall(costs_dir, path, runner.buckets) if shared else None
    runner.warmup(repeats=3 if timed and known is None else 0)
    if known is not None:
        runner.batch_costs_ms = known.costs_ms
        runner.use_compiled(known.compiled)
        log.info("batch costs as the previous mule measured them for these files (a respawn times nothing)")
    elif timed:
        runner.compile_where_faster(repeats=5)
        if shared:
            batch_costs.remember(costs_dir, path, runner.buckets,
                                 batch_costs.Timings(runner.batch_costs_ms, runner.compiled_buckets))
    log.info(
        "model %s version %d loaded from %s in %.1fs: inputs %s, outputs %s; ms per call by batch size %s;"
        " compiled with XLA at %s",
        spec.name, spec.version, path, time.perf_counter() - started, _describe(inputs), _describe(outputs),
        {k: round(v, 1) for k, v in runner.batch_costs_ms.items()} or "not timed",
        list(runner.compiled_buckets) or "no batch size",
    )
    return runner


def _configure_threads(spinning: bool, threads: int) -> None:
    """MODEL_THREAD_SPINNING: whether TensorFlow's pool threads spin when they run out of work;
    MODEL_THREADS: how many threads each of its pools (intra-op, inter-op) has.

    Spinning saves a wake-up when TensorFlow has the cores to itself. Here it never has: the
    workers decode on the same cores, and a spinning thread takes their CPU or, preempted, holds
    up the op it belongs to. Off (the default), on a 2-core AMD EPYC VM: 8-9 % less CPU per
    request at one client (MobileNetV2 p50 0.6 ms lower, the small CNN 3-4 % more requests per
    second) and 1.5-4.5 % more requests per second for the small CNN at 64 clients.
    Worker mode, four runtimes on two cores, gained most: 61.7 -> 74.8 MobileNetV2 requests/s.
    A cheap model gains nothing from splitting an op over cores, and pays a hand-off to a pool
    thread for each op: with one thread per pool (MODEL_THREADS=1) the small CNN answered 22 %
    more requests per second at one client and 10 % more at 64 on that machine (README).
    TensorFlow 2 has no public switch for the spinning field of its ConfigProto (tf.compat.v1's
    enable_eager_execution(config=...) does nothing in TF 2), so the config is set on the eager
    context before its first use, where that call put it in TF 1; tests/model/test_model_runner.py
    checks it takes effect. A process whose context is already running (a reload) keeps what it has.
    """
    from tensorflow.python.eager import context  # noqa: PLC0415

    eager = context.context()
    if eager._context_handle is not None:  # private, see above
        return
    config = eager.config
    config.experimental.disable_thread_spinning = not spinning
    config.intra_op_parallelism_threads = threads
    config.inter_op_parallelism_threads = threads
    eager._config = config


def _describe(tensors: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in tensors)


def _dtype_name(dtype) -> str:
    """numpy's name for a dtype, with TensorFlow's strings (numpy objects) as BYTES."""
    name = np.dtype(dtype).name
    return BYTES if name in ("object", "str", "bytes") or name.startswith(("str", "bytes")) else name


def _input_spec(name: str, shape, dtype) -> TensorSpec:
    """None dimensions become VARIABLE: each request chooses them, and rows share a batch only
    with rows of the same sizes."""
    dims = tuple(shape)[1:]
    return TensorSpec(name=name, shape=tuple(VARIABLE if d is None else int(d) for d in dims), dtype=dtype)


def _output_shape(probed: tuple[int, ...], declared) -> tuple[int, ...]:
    """The probe's sizes, VARIABLE where the model declares the dimension unknown."""
    if declared is None or len(tuple(declared)) != len(probed) + 1:
        return tuple(int(d) for d in probed)
    return tuple(VARIABLE if d is None else int(p) for d, p in zip(tuple(declared)[1:], probed))


def _keras_dtype(dtype) -> str:
    return BYTES if str(dtype) in ("string", "<dtype: 'string'>") else np.dtype(str(dtype)).name


def _traced(tf, graph: Callable, inputs: tuple[TensorSpec, ...], jit: bool) -> Callable[[Batch], Batch]:
    """`graph` traced once for every batch size, as a call on numpy arrays. Calling the traced
    graph itself skips the search a tf.function call makes for the trace its arguments match,
    ~0.2 ms per call, as much as a whole batch of a small model costs."""
    signature = [tf.TensorSpec((None, *(None if d == VARIABLE else d for d in t.shape)),
                               tf.string if t.is_bytes else t.dtype) for t in inputs]
    traced = tf.function(graph, input_signature=signature, jit_compile=jit).get_concrete_function()
    return lambda batch: [t.numpy() for t in traced(*batch)]


def _load_keras(tf, path: Path):
    import keras  # noqa: PLC0415

    model = keras.models.load_model(path, compile=False)
    inputs = tuple(_input_spec(t.name, t.shape, _keras_dtype(t.dtype)) for t in model.inputs)
    names = _output_names(model)

    def graph(*tensors):
        # by name, so a model built from a dict of inputs gets each one where it belongs
        args = dict(zip((t.name for t in inputs), tensors)) if len(tensors) > 1 else tensors[0]
        out = model(args, training=False)
        if isinstance(out, dict):
            return [out[name] for name in names]
        return list(out) if isinstance(out, (list, tuple)) else [out]

    shapes = [getattr(t, "shape", None) for t in model.outputs]
    return graph, inputs, names, shapes


def _output_names(model) -> list[str]:
    """A functional model's output names; a Sequential one's are its last layer's name."""
    names = list(getattr(model, "output_names", None) or [])
    if not names:
        history = [getattr(t, "_keras_history", None) for t in model.outputs]
        names = [h.operation.name if h is not None else "" for h in history]
    if len(set(names)) != len(names) or not all(names):
        names = [f"output_{i}" for i in range(len(model.outputs))]
    return names


def _load_saved_model(tf, path: Path):
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelLoadError(f"SavedModel {path} has no 'serving_default' signature")
    specs = signature.structured_input_signature[1]
    inputs = tuple(
        _input_spec(name, spec.shape, BYTES if spec.dtype == tf.string else spec.dtype.as_numpy_dtype().dtype.name)
        for name, spec in sorted(specs.items())
    )
    names = sorted(signature.structured_outputs)
    shapes = [signature.structured_outputs[name].shape for name in names]

    def graph(*tensors):
        # through `loaded`, which owns the variables: the signature alone keeps only weak references
        out = loaded.signatures["serving_default"](**{t.name: tensor for t, tensor in zip(inputs, tensors)})
        return [out[name] for name in names]

    return graph, inputs, names, shapes
