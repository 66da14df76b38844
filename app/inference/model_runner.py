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
from app.inference.spec import ModelSpec, TensorSpec

log = logging.getLogger(__name__)


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
    """Calls the model on batches padded up to fixed bucket sizes, so no new shape is ever traced."""

    def __init__(self, spec: ModelSpec, call: Callable[[np.ndarray], list[np.ndarray]], buckets: tuple[int, ...]):
        self.spec = spec
        self._call = call
        self.buckets = buckets
        self.max_batch = buckets[-1]
        self._buffer = self.new_buffer()
        self.batch_costs_ms: dict[int, float] = {}  # bucket size -> ms per call, measured by warmup()
        self.warmup_seconds = 0.0

    def bucket_for(self, rows: int) -> int:
        return next(size for size in self.buckets if size >= rows)

    def new_buffer(self) -> np.ndarray:
        """An input array for the largest batch; fill its first rows, then `run_padded`. One per
        batch in flight, reused from batch to batch."""
        return np.zeros((self.max_batch, *self.spec.input.shape), dtype=self.spec.input.dtype)

    def run_padded(self, buffer: np.ndarray, rows: int) -> list[np.ndarray]:
        """Run the model on the first `rows` rows of `buffer`, padded up to a bucket size."""
        outputs = self._call(buffer[: self.bucket_for(rows)])
        return [out[:rows] for out in outputs]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run any number of rows, in chunks of at most the largest bucket (not thread-safe)."""
        results: list[list[np.ndarray]] = []
        for start in range(0, len(batch), self.max_batch):
            chunk = batch[start : start + self.max_batch]
            self._buffer[: len(chunk)] = chunk
            results.append(self.run_padded(self._buffer, len(chunk)))
        return [np.concatenate(parts) for parts in zip(*results)]

    def warmup(self, repeats: int) -> dict[int, float]:
        """Call every bucket size once so no client pays for a first call, then time each size
        `repeats` more times and keep the median: the batch cost T(n) that the mule's batch limit
        is chosen from. The timed passes are interleaved, so a slow spell on a shared machine
        falls on every size alike rather than on one."""
        started = time.perf_counter()
        for size in self.buckets:
            self._call(self._buffer[:size])
        samples: dict[int, list[float]] = {size: [] for size in self.buckets}
        for _ in range(repeats):
            for size in self.buckets:
                started = time.perf_counter()
                self._call(self._buffer[:size])
                samples[size].append((time.perf_counter() - started) * 1000)
        if repeats:
            self.batch_costs_ms = {size: statistics.median(times) for size, times in samples.items()}
        self.warmup_seconds = time.perf_counter() - started
        return self.batch_costs_ms


def load_runner(settings: Settings) -> ModelRunner:
    """Load MODEL_PATH (.keras, .h5 or a SavedModel directory), describe it, and warm it up."""
    path = settings.model_path
    if not path.exists():
        raise ModelLoadError(f"MODEL_PATH {path} does not exist")
    started = time.perf_counter()
    import tensorflow as tf  # noqa: PLC0415 - deliberately late: never in the uWSGI master

    try:
        if path.is_dir():
            call, input_spec, output_names = _load_saved_model(tf, path)
        else:
            call, input_spec, output_names = _load_keras(tf, path)
    except ModelLoadError:
        raise
    except Exception as exc:  # Keras raises many types for a bad file; all mean the same here.
        raise ModelLoadError(f"cannot load model {path}: {type(exc).__name__}: {exc}") from None

    probe = call(np.zeros((1, *input_spec.shape), dtype=input_spec.dtype))
    outputs = tuple(
        TensorSpec(name=name, shape=tuple(int(d) for d in out.shape[1:]), dtype=str(out.dtype))
        for name, out in zip(output_names, probe)
    )
    labels = read_labels(settings.labels_path)
    spec = ModelSpec(
        name=settings.model_name, input=input_spec, outputs=outputs, labels=labels,
        preprocess=settings.preprocess,
    )
    if labels is not None and spec.is_classifier and len(labels) != outputs[0].shape[0]:
        raise ModelLoadError(
            f"LABELS_PATH {settings.labels_path} has {len(labels)} labels but the model"
            f" outputs {outputs[0].shape[0]} classes"
        )
    runner = ModelRunner(spec, call, settings.batch_buckets)
    # only the mule's batch limit uses the costs; a worker-mode worker only needs warm shapes
    runner.warmup(repeats=3 if settings.inference_mode == "mule" and settings.batch_autotune else 0)
    log.info(
        "model %s loaded from %s in %.1fs: input %s %s, outputs %s; ms per call by batch size %s",
        spec.name, path, time.perf_counter() - started, input_spec.shape, input_spec.dtype,
        [o.shape for o in outputs], {k: round(v, 1) for k, v in runner.batch_costs_ms.items()} or "not timed",
    )
    return runner


def _checked_input(shape, dtype) -> TensorSpec:
    dims = tuple(shape)[1:]
    if any(d is None for d in dims):
        raise ModelLoadError(
            f"the model input has unknown dimensions {tuple(shape)}; the server needs a fixed"
            " input size (re-save the model with a fixed Input shape)"
        )
    return TensorSpec(name="input", shape=tuple(int(d) for d in dims), dtype=np.dtype(dtype).name)


def _load_keras(tf, path: Path):
    import keras  # noqa: PLC0415

    model = keras.models.load_model(path, compile=False)
    if len(model.inputs) != 1:
        raise ModelLoadError(f"the model has {len(model.inputs)} inputs; kerasrv serves single-input models")
    input_spec = _checked_input(model.inputs[0].shape, model.inputs[0].dtype)
    names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])

    @tf.function(input_signature=[tf.TensorSpec((None, *input_spec.shape), input_spec.dtype)])
    def infer(x):
        out = model(x, training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return (lambda batch: [t.numpy() for t in infer(batch)]), input_spec, names


def _load_saved_model(tf, path: Path):
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelLoadError(f"SavedModel {path} has no 'serving_default' signature")
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise ModelLoadError(f"the SavedModel signature has {len(inputs)} inputs; kerasrv serves single-input models")
    (input_name, tensor_spec), = inputs.items()
    input_spec = _checked_input(tensor_spec.shape, tensor_spec.dtype.as_numpy_dtype)
    names = sorted(signature.structured_outputs)

    def call(batch: np.ndarray) -> list[np.ndarray]:
        out = signature(**{input_name: tf.constant(batch)})
        return [out[name].numpy() for name in names]

    return call, input_spec, names
