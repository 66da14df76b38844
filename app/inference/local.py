"""INFERENCE_MODE=worker: each uWSGI worker loads its own copy of the model after the fork.

Simple and batch-free; costs one model copy per worker. The model loads before the worker
accepts its first request, so any worker that answers is ready; one that failed to load says
why on every request instead of exiting (and being restarted into the same failure).
"""

from __future__ import annotations

import logging
import threading
import time

from app.config import Settings
from app.inference.backend import (
    DeadlineExceeded,
    InferenceFailed,
    NotReady,
    Prediction,
    Status,
    Unsupported,
    not_ready_reason,
)
from app.inference.spec import Batch

log = logging.getLogger(__name__)


class LocalBackend:
    mode = "worker"

    def __init__(self, settings: Settings):
        self._settings = settings
        self._runner = None
        self._error: str | None = None
        self._lock = threading.Lock()  # the runner's batch buffer is shared by this worker's threads
        self._requests = 0
        self._load()

    def _load(self) -> None:
        from app.inference.model_runner import ModelLoadError, load_runner  # noqa: PLC0415

        try:
            self._runner = load_runner(self._settings)
        except ModelLoadError as exc:
            self._error = str(exc)
            log.error("model failed to load: %s", exc)
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")

    def status(self, fresh: bool = False) -> Status:
        if self._runner is not None:
            return Status("ready", spec=self._runner.spec, stats={"requests": self._requests})
        return Status("failed", error=self._error)

    def predict(self, inputs: Batch, deadline: float) -> Prediction:
        runner = self._runner
        if runner is None:
            raise NotReady(not_ready_reason(self._error))
        with self._lock:
            if time.monotonic() > deadline:
                raise DeadlineExceeded("the request waited too long for the model")
            try:
                outputs = runner.run(inputs)
            except Exception as exc:
                log.exception("model call failed")
                raise InferenceFailed(f"the model failed on this input: {type(exc).__name__}") from None
            self._requests += 1
        return Prediction(outputs=outputs, batch_size=len(inputs[0]), version=runner.spec.version)

    def load(self, deadline: float) -> int:
        raise Unsupported("loading a model on request needs INFERENCE_MODE=mule: each worker holds its own copy here")

    def unload(self) -> None:
        raise Unsupported("unloading the model needs INFERENCE_MODE=mule: each worker holds its own copy here")
