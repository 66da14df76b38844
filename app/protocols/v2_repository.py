"""The model repository API of the Open Inference Protocol (Triton's; tritonclient's load_model,
unload_model and get_model_repository_index call it): load what MODEL_PATH names now, unload the
model, list its versions and their states.

A load answers once the new version serves, or once it failed and what was served still is; the
mule loads beside the current version, so nothing queued is lost either way. After an unload the
server is not ready (503) until the next load, SIGHUP or restart; the directory poll leaves it so.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from app import serving
from app.errors import ApiError
from app.protocols import as_bad_request

bp = Blueprint("v2_repository", __name__)
bp.register_error_handler(ApiError, as_bad_request)

# TF Serving's version states (what the backends record) -> Triton's model states
TRITON_STATES = {"AVAILABLE": "READY", "LOADING": "LOADING", "UNLOADING": "UNLOADING", "END": "UNAVAILABLE"}


@bp.post("/v2/repository/index")
def index():
    """Every version the server knows of and its state; `{"ready": true}` keeps the ready ones."""
    ready_only = _body().get("ready", False)
    if not isinstance(ready_only, bool):
        raise ApiError(400, "invalid_json", "'ready' must be true or false")
    name = serving.settings().model_name
    entries = [{"name": name, "version": str(v["version"]), "state": TRITON_STATES[v["state"]],
                "reason": v["error"] or ("unloaded" if v["state"] == "END" else "")}
               for v in serving.backend().status(fresh=True).version_states()]
    return jsonify([e for e in entries if e["state"] == "READY" or not ready_only])


@bp.post("/v2/repository/models/<name>/load")
def load(name: str):
    serving.check_model(name)
    deadline = serving.deadline(serving.request_start())
    parameters = _body().get("parameters", {})
    if not isinstance(parameters, dict):
        raise ApiError(400, "invalid_json", "'parameters' must be an object")
    overrides = sorted(k for k in parameters if k == "config" or k.startswith("file:"))
    if overrides:
        raise ApiError(400, "unsupported", f"kerasrv loads what MODEL_PATH holds; {overrides} cannot be given here")
    version = serving.backend().load(deadline)
    response = jsonify(model_name=name, model_version=str(version))
    response.headers["X-Model-Version"] = str(version)
    return response


@bp.post("/v2/repository/models/<name>/unload")
def unload(name: str):
    serving.check_model(name)
    _body()  # Triton's unload_dependents parameter means nothing here: one model, no ensembles
    serving.backend().unload()
    return jsonify(model_name=name)


def _body() -> dict:
    """The optional JSON body these routes take: none at all is an empty object."""
    raw = request.get_data(cache=False)
    return serving.json_body(raw) if raw else {}
