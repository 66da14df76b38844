"""HTTP endpoints: /predict, health probes, the landing page and the stats the backend publishes."""

from __future__ import annotations

import time

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, render_template, request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from app import metrics
from app.config import Settings
from app.errors import ApiError
from app.images import decode_image
from app.inference.backend import Backend, DeadlineExceeded, NotReady
from app.inference.spec import ModelSpec
from app.inputs import instances_to_tensor, parse_inputs
from app.outputs import raw_rows, top_k
from app.preprocess import normalize

bp = Blueprint("kerasrv", __name__)


def _settings() -> Settings:
    return current_app.extensions["kerasrv.settings"]


def _backend() -> Backend:
    return current_app.extensions["kerasrv.backend"]


def _ready_spec() -> ModelSpec:
    status = _backend().status()
    if not status.ready:
        raise NotReady(status.reason)
    return status.spec


def _deadline(settings: Settings) -> float:
    """REQUEST_TIMEOUT_MS counted from when nginx received the request, time queued included."""
    budget = settings.request_timeout_ms / 1000
    started = request.headers.get("X-Request-Start", "")
    try:
        waited = max(0.0, time.time() - float(started.removeprefix("t=")))
    except ValueError:
        waited = 0.0
    return time.monotonic() + budget - waited


def _top_k_param(settings: Settings) -> int:
    raw = request.args.get("top_k")
    if raw is None:
        return settings.default_top_k
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ApiError(400, "invalid_parameter", f"top_k must be a positive integer, got {raw!r}")
    return int(raw)


def _image_rows(images: list[bytes], spec: ModelSpec, settings: Settings) -> np.ndarray:
    if not spec.is_image:
        raise ApiError(
            422, "not_an_image_model",
            f"model {spec.name} takes tensors shaped {list(spec.input.shape)}, not images;"
            " send JSON {'instances': [...]}",
        )
    height, width, channels = spec.input.shape
    rows = np.empty((len(images), height, width, channels), dtype=spec.input.dtype)
    for i, data in enumerate(images):
        pixels = decode_image(data, (height, width), channels, settings.max_image_pixels, settings.resize_mode)
        normalize(pixels, spec.preprocess, spec.input.dtype, out=rows[i])
    return rows


@bp.post("/predict")
def predict():
    settings = _settings()
    deadline = _deadline(settings)
    if time.monotonic() >= deadline:  # shed work that waited in the queue past its deadline
        raise DeadlineExceeded("the request waited longer than REQUEST_TIMEOUT_MS before it started")
    spec = _ready_spec()
    inputs, raw_instances = parse_inputs(request, settings.max_inputs_per_request)
    k = _top_k_param(settings)
    if raw_instances is not None:
        rows = instances_to_tensor(raw_instances, spec)
    else:
        rows = _image_rows(inputs.images, spec, settings)
    result = _backend().predict(rows, deadline)
    if inputs.images is not None and spec.is_classifier:
        per_row = top_k(result.outputs[0], k, spec.labels)
        predictions = per_row if inputs.plural else per_row[0]
    else:
        predictions = raw_rows(result.outputs, spec)
    response = jsonify(model=spec.name, predictions=predictions)
    response.headers["X-Batch-Size"] = str(result.batch_size)
    return response


@bp.get("/health/live")
def live():
    return jsonify(status="alive")


@bp.get("/health/ready")
def ready():
    backend = _backend()
    status = backend.status()
    body = {"model": _settings().model_name, "mode": backend.mode, "state": status.state}
    if status.ready:
        return jsonify(status="ready", **body)
    response = jsonify(error=status.reason, code="not_ready", **body)
    response.status_code = 503
    response.headers["Retry-After"] = "1"
    return response


@bp.get("/stats")
def stats():
    backend = _backend()
    status = backend.status(fresh=True)
    return jsonify(model=_settings().model_name, mode=backend.mode, state=status.state, **status.stats)


@bp.get("/metrics")
def metrics_text():
    status = _backend().status(fresh=True)
    # the classic text format, which every Prometheus version parses
    return Response(metrics.render(_settings().model_name, status), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@bp.get("/dashboard")
def dashboard():
    return render_template("dashboard.html", settings=_settings(), route="/predict")


@bp.get("/")
def index():
    settings = _settings()
    status = _backend().status()
    return render_template("index.html", settings=settings, status=status, spec=status.spec)
