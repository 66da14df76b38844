"""What every inference route shares, whatever its protocol: the settings, the backend, a ready
model, the request's deadline and the input-count limit. One place, so /predict, TF Serving v1
and the v2 protocol shed, refuse and time out alike.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from flask import Response, current_app, request

from app.config import Settings
from app.errors import ApiError
from app.inference.backend import Backend, DeadlineExceeded, NotReady, Prediction
from app.inference.spec import ModelSpec
from app.protocols import v2_binary

REQUEST_START = "X-Request-Start"  # set by nginx: when it received the request


@dataclass(frozen=True)
class Call:
    """What an inference answer depends on besides the path: read from Flask's request by a view,
    or from the WSGI environ by app.fast_lane, so that both answer through the same function."""

    body: bytes
    content_type: str  # lowercased, without parameters
    request_start: str  # nginx's X-Request-Start, for the deadline
    inference_header: str | None  # the v2 binary extension's Inference-Header-Content-Length

    @classmethod
    def of_request(cls) -> Call:
        return cls(request.get_data(cache=False), request.mimetype, request_start(),
                   request.headers.get(v2_binary.HEADER))


@dataclass(frozen=True)
class Answer:
    """A successful inference answer: its body, its content type, and the prediction behind it.

    A view sends it as a Flask response; app.fast_lane writes it to WSGI as it is, sparing a uWSGI
    worker jsonify and the response object: in-process (backend faked, 2-core AMD EPYC VM) a
    64x64 PNG's /predict went from 248 to 234 us of CPU and a one-row JSON `instances` request
    from 118 to 77 us; served under load (c=64) that was +6.5 % and +15 % req/s."""

    body: bytes
    content_type: str
    prediction: Prediction
    extra_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, value: object, prediction: Prediction) -> Answer:
        """`value` encoded as Flask's jsonify encodes it here: compact, ASCII, keys in their order."""
        return cls(json.dumps(value, separators=(",", ":")).encode() + b"\n", "application/json", prediction)

    def headers(self) -> list[tuple[str, str]]:
        """The content's headers and those every inference answer carries: the rows in its batch
        and the model version that served it."""
        return [("Content-Type", self.content_type), ("Content-Length", str(len(self.body))),
                ("X-Batch-Size", str(self.prediction.batch_size)),
                ("X-Model-Version", str(self.prediction.version)), *self.extra_headers]

    def response(self) -> Response:
        """The answer as a view returns it."""
        return Response(self.body, headers=self.headers())


def request_start() -> str:
    """Flask's request's X-Request-Start ('' when nginx did not set it), for `deadline`."""
    return request.headers.get(REQUEST_START, "")


def settings() -> Settings:
    return current_app.extensions["kerasrv.settings"]


def backend() -> Backend:
    return current_app.extensions["kerasrv.backend"]


def ready_spec() -> ModelSpec:
    status = backend().status()
    if not status.ready:
        raise NotReady(status.reason)
    return status.spec


def deadline(request_start: str) -> float:
    """REQUEST_TIMEOUT_MS counted from when nginx received the request (`request_start`, its
    X-Request-Start header), time queued included; a request already past it is shed here,
    before any decoding."""
    budget = settings().request_timeout_ms / 1000
    try:
        waited = max(0.0, time.time() - float(request_start.removeprefix("t=")))
    except ValueError:
        waited = 0.0
    end = time.monotonic() + budget - waited
    if time.monotonic() >= end:
        raise DeadlineExceeded("the request waited longer than REQUEST_TIMEOUT_MS before it started")
    return end


def check_count(count: int) -> None:
    """MAX_INPUTS_PER_REQUEST, the same for every protocol."""
    limit = settings().max_inputs_per_request
    if count == 0:
        raise ApiError(400, "missing_input", "the request holds no inputs")
    if count > limit:
        raise ApiError(413, "too_many_inputs",
                       f"{count} inputs in one request; the limit is {limit} (MAX_INPUTS_PER_REQUEST)")


def check_model(name: str, version: str | None = None, spec: ModelSpec | None = None) -> None:
    """A protocol route names the model (and maybe a version): 404 unless it is the one served
    (the version is checked once the model is known)."""
    served = settings().model_name
    if name != served:
        raise ApiError(404, "model_not_found", f"no model named {name!r}; this server serves {served!r}")
    if version is not None and spec is not None and version != str(spec.version):
        raise ApiError(404, "version_not_found",
                       f"model {name!r} has no version {version!r} loaded; it serves version {spec.version}")


def readiness(response: Response, ready: bool) -> Response:
    """A readiness answer: 503 with Retry-After when not ready, so probes and clients need no body."""
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = "1"
    return response


def json_body(data: bytes) -> dict:
    """A request body as a JSON object, or a 400: the one guard for parsing JSON, so no body (bad
    UTF-8, deep nesting, a bare number) can end in a 500."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body
