"""The test doubles every test file shares: a fake backend for the HTTP layer, a toy model and a
harness that runs the real mule server in a thread (no uWSGI, no TensorFlow), and test data
(certificates, image bytes).
"""

from __future__ import annotations

import io
import mmap
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from app.config import Settings
from app.inference.backend import BackendError, Prediction, Status
from app.inference.model_runner import ModelRunner
from app.inference.mule_client import MuleClient
from app.inference.mule_server import MuleServer
from app.inference.spec import ModelSpec, TensorSpec
from tools.local_server import wait_for

WAIT_S = 30  # bound on waiting for another thread: generous, since a loaded machine is slow, not stuck

# --- the HTTP layer's fake backend -----------------------------------------------------------

N_CLASSES = 10
LABELS = tuple(f"class-{i}" for i in range(N_CLASSES))

IMAGE_SPEC = ModelSpec(
    name="digits",
    inputs=(TensorSpec("pixels", (8, 8, 3), "float32"),),
    outputs=(TensorSpec("probs", (N_CLASSES,), "float32"),),
    labels=LABELS,
    preprocess="unit",
)
TENSOR_SPEC = ModelSpec(
    name="tabular",
    inputs=(TensorSpec("features", (4,), "float32"),),
    outputs=(TensorSpec("stats", (2,), "float32"),),
)


def softmax_scores(means: np.ndarray) -> np.ndarray:
    logits = -3.0 * np.abs(means[:, None] * (N_CLASSES - 1) - np.arange(N_CLASSES)[None, :])
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


class FakeBackend:
    """Implements app.inference.backend.Backend.

    Image model: softmax over 10 classes peaking at class round(9 * mean pixel), the pixels being
    in [0, 1] after the "unit" preprocessing. Tensor model: [sum, max] of each row. So an answer
    shows that the right image reached it, decoded and normalised the right way.
    """

    mode = "fake"

    def __init__(self, spec: ModelSpec = IMAGE_SPEC, state: str = "ready", error: str | None = None,
                 raises: BackendError | None = None, versions: list[dict] | None = None):
        self.spec = spec
        self.state = state
        self.error = error
        self.raises = raises
        self.versions = versions or []  # the version history a mule would report
        self.load_raises: BackendError | None = None
        self.loads = 0
        self.calls: list[tuple[list[np.ndarray], float]] = []

    def status(self, fresh: bool = False) -> Status:
        spec = self.spec if self.state == "ready" else None
        return Status(state=self.state, error=self.error, spec=spec, stats={"requests": len(self.calls)},
                      versions=self.versions)

    def load(self, deadline: float) -> int:
        self.loads += 1
        if self.load_raises is not None:
            raise self.load_raises
        self.state = "ready"
        return self.spec.version

    def unload(self) -> None:
        self.state = "unloaded"

    def predict(self, inputs: list[np.ndarray], deadline: float) -> Prediction:
        self.calls.append(([a.copy() for a in inputs], deadline))
        if self.raises is not None:
            raise self.raises
        (rows,) = inputs
        assert rows.shape[1:] == self.spec.input.shape
        assert rows.dtype == np.dtype(self.spec.input.dtype)
        if self.spec.is_image:
            return Prediction([softmax_scores(rows.reshape(len(rows), -1).mean(axis=1))], batch_size=len(rows))
        return Prediction([np.stack([rows.sum(axis=1), rows.max(axis=1)], axis=1)], batch_size=len(rows))


# --- the mule with a toy model ---------------------------------------------------------------

TOY_SPEC = ModelSpec(
    name="toy",
    inputs=(TensorSpec("input", (4,), "float32"),),
    outputs=(TensorSpec("sum", (1,), "float32"), TensorSpec("double", (4,), "float32")),
)


class ToyModel:
    """Sum and doubling of each row; records the (padded) batch sizes it was called with.

    `held=True` keeps every call inside the model until release(): a test fills the mule's queue
    behind a running batch and knows it did, instead of hoping its threads were fast enough.
    """

    def __init__(self, held: bool = False):
        self.calls: list[int] = []
        self.threads: list[threading.Thread] = []  # the thread of each call
        self.entered = threading.Event()  # set by the first call
        self._gate = threading.Event()
        if not held:
            self._gate.set()

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        (batch,) = inputs
        self.calls.append(len(batch))
        self.threads.append(threading.current_thread())
        self.entered.set()
        if not self._gate.wait(WAIT_S):
            raise TimeoutError("ToyModel was never released")
        return [batch.sum(axis=1, keepdims=True), batch * 2]

    def release(self) -> None:
        self._gate.set()


def mule_settings(tmp_path, **overrides) -> Settings:
    values = dict(workers=2, threads=4, slot_mb=1, max_batch_size=8, batch_buckets=(1, 2, 4, 8),
                  runtime_dir=tmp_path, request_timeout_ms=5000)
    values.update(overrides)
    return Settings(**values)


def version_dir(root: Path, number: int) -> Path:
    """A version directory of MODEL_PATH's layout; the harness's loaders never open the file."""
    folder = root / str(number)
    folder.mkdir(parents=True)
    (folder / "model.keras").touch()
    return root


class MuleHarness:
    """The real MuleServer on a thread, over an anonymous mmap standing in for uWSGI's sharedarea."""

    def __init__(self, settings: Settings, load, model: ToyModel | None = None):
        self.settings = settings
        self.model = model
        self.shm = mmap.mmap(-1, settings.n_slots * settings.slot_bytes)
        self.server = MuleServer(settings, self.shm, load)
        self.server.listen()
        self.server.reload("start")
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @classmethod
    def with_model(cls, tmp_path, model: ToyModel, **overrides) -> MuleHarness:
        settings = mule_settings(tmp_path, **overrides)
        return cls(settings, lambda s: ModelRunner(TOY_SPEC, model, s.batch_buckets), model)

    def _loop(self):
        while not self.server._stop:
            self.server.step(max_wait=0.05)

    def client(self, worker: int = 0) -> MuleClient:
        return MuleClient(self.settings, self.shm, worker * self.settings.threads)

    def wait_ready(self) -> None:
        wait_for(lambda: self.server.runner is not None, WAIT_S, "mule ready")

    def wait_until(self, condition, what: str) -> None:
        """Wait on the mule's own state (its queue, its counters) as its loop thread changes it."""
        wait_for(lambda: condition(self.server), WAIT_S, what, interval=0.005)

    def close(self):
        if self.model is not None:
            self.model.release()  # a test that failed half-way leaves no thread stuck in the model
        self.server.stop()
        self.thread.join(WAIT_S)


def in_worker_threads(clients: list[MuleClient], threads: int, call, meanwhile=None) -> list:
    """Run call(client, i) once on each of `threads` threads of each client, as uWSGI would;
    `meanwhile()` runs on this thread while they are under way (to release a held model)."""
    pools = [ThreadPoolExecutor(threads) for _ in clients]
    futures = [pools[i % len(clients)].submit(call, clients[i % len(clients)], i)
               for i in range(threads * len(clients))]
    if meanwhile is not None:
        meanwhile()
    results = [f.result(WAIT_S) for f in futures]
    for pool in pools:
        pool.shutdown()
    return results


# --- test data --------------------------------------------------------------------------------


def self_signed_cert(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A fresh certificate and key for 127.0.0.1 and localhost (openssl), readable by the service user."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    key.chmod(0o644)
    return cert, key


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
