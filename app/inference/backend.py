"""The one small interface between the HTTP layer and whatever runs the model.

Two implementations: `LocalBackend` (the model in this worker, INFERENCE_MODE=worker) and
`MuleClient` (the model in the batching mule, INFERENCE_MODE=mule). The routes only see this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from app.inference.spec import Batch, ModelSpec


class BackendError(Exception):
    """Inference could not be done; `status` and `code` say how the client is answered."""

    status = 503
    code = "unavailable"
    retry_after: int | None = 1


class NotReady(BackendError):
    code = "not_ready"


class Unavailable(BackendError):
    """The process holding the model went away mid-request (it is being restarted)."""

    code = "backend_unavailable"


class Overloaded(BackendError):
    code = "overloaded"


class DeadlineExceeded(BackendError):
    status = 504
    code = "timeout"
    retry_after = None


class TooLarge(BackendError):
    """One row of the request is larger than the room shared memory has for it (SLOT_MB)."""

    status = 413
    code = "input_too_large"
    retry_after = None


class LoadFailed(BackendError):
    """A load asked for failed; the version served before (if any) still is. 400, as Triton answers."""

    status = 400
    code = "load_failed"
    retry_after = None


class Unsupported(BackendError):
    """What this inference mode cannot do (loading and unloading need INFERENCE_MODE=mule)."""

    status = 400
    code = "unsupported"
    retry_after = None


class InferenceFailed(BackendError):
    """The model itself raised on this input (e.g. values it cannot take)."""

    status = 422
    code = "inference_failed"
    retry_after = None


@dataclass
class Prediction:
    """Outputs for the rows of one request (one array per model output) and how they were run."""

    outputs: Batch
    batch_size: int = 1
    version: int = 1  # the model version that computed them
    info: dict = field(default_factory=dict)


UNLOADED_REASON = "the model was unloaded; POST /v2/repository/models/<name>/load loads it again"


def not_ready_reason(error: str | None) -> str:
    """What a client is told while the model cannot serve: the load error, or that it is loading."""
    return f"model failed to load: {error}" if error else "the model is still loading"


@dataclass
class Status:
    state: str  # "loading", "ready", "failed" or "unloaded"
    error: str | None = None
    spec: ModelSpec | None = None
    stats: dict = field(default_factory=dict)
    # what became of each version, newest first: {"version", "state" (TF Serving's LOADING,
    # AVAILABLE, UNLOADING, END), "error"}; empty where the backend keeps no history
    versions: list[dict] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.spec is not None

    @property
    def reason(self) -> str:
        """Why it is not ready (see not_ready_reason)."""
        return UNLOADED_REASON if self.state == "unloaded" else not_ready_reason(self.error)

    def version_states(self) -> list[dict]:
        """The versions and their states; without a history, the one version the state implies."""
        if self.versions:
            return self.versions
        known = {"ready": ("AVAILABLE", ""), "loading": ("LOADING", "")}
        state, error = known.get(self.state, ("END", self.error or ""))
        return [{"version": self.spec.version if self.spec else 1, "state": state, "error": error}]


class Backend(Protocol):
    mode: str

    def status(self, fresh: bool = False) -> Status:
        """Where the model stands; cheap enough for every readiness probe. `fresh` asks for
        up-to-date statistics even when a cached answer would do."""
        ...

    def predict(self, inputs: Batch, deadline: float) -> Prediction:
        """Run the model on `inputs` (one array per spec.inputs, each with the same rows) before
        `deadline` (time.monotonic() seconds), or raise a BackendError."""
        ...

    def load(self, deadline: float) -> int:
        """Load the version MODEL_PATH names now and serve it; the version served after. Raises
        LoadFailed (what was served still is), DeadlineExceeded (the load goes on) or Unsupported."""
        ...

    def unload(self) -> None:
        """Stop serving (answering what is queued first) until the next load; or Unsupported."""
        ...
