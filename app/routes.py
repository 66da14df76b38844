"""HTTP endpoints: /predict, health probes, the landing page and the stats the backend publishes."""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, jsonify, render_template, request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from app import metrics, serving
from app.config import Settings
from app.errors import ApiError
from app.inputs import Inputs, body_inputs, parse_inputs
from app.outputs import raw_rows, top_k
from app.tensors import images_to_array, rows_to_inputs

bp = Blueprint("kerasrv", __name__)


def _top_k_param(settings: Settings) -> int:
    raw = request.args.get("top_k")
    if raw is None:
        return settings.default_top_k
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ApiError(400, "invalid_parameter", f"top_k must be a positive integer, got {raw!r}")
    return int(raw)


@bp.post("/predict")
def predict():
    k = _top_k_param(serving.settings())
    return _answer(serving.request_start(), lambda: parse_inputs(request), k).response()


def answer(call: serving.Call) -> serving.Answer:
    """/predict for a body `in_body` takes and the default top_k: app.fast_lane's way in."""
    return _answer(call.request_start, lambda: body_inputs(call.content_type, call.body),
                   serving.settings().default_top_k)


def _answer(request_start: str, parse: Callable[[], tuple[Inputs, object]], k: int) -> serving.Answer:
    """/predict's answer, the view's and app.fast_lane's alike:
    `parse` reads the inputs once the deadline and the model's readiness are checked."""
    deadline = serving.deadline(request_start)
    spec = serving.ready_spec()
    inputs, raw_instances = parse()
    settings = serving.settings()
    if raw_instances is not None:
        arrays = rows_to_inputs(raw_instances, spec, settings)
    else:
        arrays = [images_to_array(inputs.images, spec, settings)]
    result = serving.backend().predict(arrays, deadline)
    if inputs.images is not None and spec.is_classifier:
        per_row = top_k(result.outputs[0], k, spec.labels)
        predictions = per_row if inputs.plural else per_row[0]
    else:
        predictions = raw_rows(result.outputs, spec)
    return serving.Answer.json({"model": spec.name, "predictions": predictions}, result)


@bp.get("/health/live")
def live():
    return jsonify(status="alive")


@bp.get("/health/ready")
def ready():
    backend = serving.backend()
    status = backend.status(fresh=True)  # asks the mule: an unload through another worker shows at once
    body = {"model": serving.settings().model_name, "mode": backend.mode, "state": status.state}
    if status.ready:
        return jsonify(status="ready", **body)
    return serving.readiness(jsonify(error=status.reason, code="not_ready", **body), ready=False)


@bp.get("/stats")
def stats():
    backend = serving.backend()
    status = backend.status(fresh=True)
    return jsonify(model=serving.settings().model_name, mode=backend.mode, state=status.state, **status.stats)


@bp.get("/metrics")
def metrics_text():
    status = serving.backend().status(fresh=True)
    # the classic text format, which every Prometheus version parses
    return Response(metrics.render(serving.settings().model_name, status), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@bp.get("/dashboard")
def dashboard():
    return render_template("dashboard.html", settings=serving.settings())


@bp.get("/")
def index():
    settings = serving.settings()
    status = serving.backend().status()
    return render_template("index.html", settings=settings, status=status, spec=status.spec)
