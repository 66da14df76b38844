"""TF Serving's REST API (also KServe's v1 protocol): model status, metadata and :predict in the
row ("instances") and columnar ("inputs") formats. Clients written for TF Serving work unchanged.

Errors are `{"error": ...}` (plus our stable `code`) with TF Serving's status mapping: a bad
argument is 400 (INVALID_ARGUMENT), an unknown model 404, a full queue 503, a deadline 504.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from app import serving
from app.errors import ApiError
from app.inference.spec import ModelSpec, TensorSpec
from app.outputs import raw_rows
from app.protocols import as_bad_request
from app.tensors import columns_to_inputs, rows_to_inputs, to_json

bp = Blueprint("tfserving", __name__)

SIGNATURE = "serving_default"
TF_DTYPES = {
    "float16": "DT_HALF", "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int8": "DT_INT8", "int16": "DT_INT16",
    "int32": "DT_INT32", "int64": "DT_INT64", "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32",
    "uint64": "DT_UINT64", "bool": "DT_BOOL", "bytes": "DT_STRING",
}


bp.register_error_handler(ApiError, as_bad_request)


@bp.get("/v1/models")
def list_models():
    """KServe v1: the models this server has."""
    return jsonify(models=[serving.settings().model_name])


@bp.get("/v1/models/<name>")
@bp.get("/v1/models/<name>/versions/<version>")
def model_status(name: str, version: str | None = None):
    """TF Serving's version status (every version the server knows of: the one served, one
    loading, older ones ended, failed loads with their error), with KServe v1's `name` and
    `ready`; 503 while not ready, so it doubles as KServe's model readiness probe."""
    serving.check_model(name)
    status = serving.backend().status(fresh=True)
    versions = status.version_states()
    if version is not None:
        versions = [v for v in versions if str(v["version"]) == version]
        if not versions:
            raise ApiError(404, "version_not_found", f"model {name!r} has no version {version!r}")
    response = jsonify(
        name=name, ready=status.ready,
        model_version_status=[{"version": str(v["version"]), "state": v["state"], "status": {
            "error_code": "UNKNOWN" if v["error"] else "OK", "error_message": v["error"]}} for v in versions],
    )
    return serving.readiness(response, status.ready)


@bp.get("/v1/models/<name>/metadata")
@bp.get("/v1/models/<name>/versions/<version>/metadata")
def metadata(name: str, version: str | None = None):
    spec = serving.ready_spec()
    serving.check_model(name, version, spec)
    return jsonify(
        model_spec={"name": name, "signature_name": "", "version": str(spec.version)},
        metadata={"signature_def": {"signature_def": {SIGNATURE: signature_def(spec)}}},
    )


def signature_def(spec: ModelSpec) -> dict:
    def tensor_info(tensor: TensorSpec) -> dict:
        dims = [{"size": "-1", "name": ""}] + [{"size": str(d), "name": ""} for d in tensor.shape]
        return {"dtype": TF_DTYPES[tensor.dtype], "tensor_shape": {"dim": dims, "unknown_rank": False},
                "name": tensor.name}

    return {
        "inputs": {t.name: tensor_info(t) for t in spec.inputs},
        "outputs": {t.name: tensor_info(t) for t in spec.outputs},
        "method_name": "tensorflow/serving/predict",
    }


@bp.post("/v1/models/<name>:predict")
@bp.post("/v1/models/<name>/versions/<version>:predict")
def predict(name: str, version: str | None = None):
    return answer(serving.Call.of_request(), name, version).response()


def answer(call: serving.Call, name: str, version: str | None = None) -> serving.Answer:
    """The :predict view's answer, also app.fast_lane's."""
    serving.check_model(name)
    deadline = serving.deadline(call.request_start)
    body = serving.json_body(call.body)
    signature = body.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise ApiError(400, "unknown_signature", f"no signature {signature!r}; the model has {SIGNATURE!r}")
    if ("instances" in body) == ("inputs" in body):
        raise ApiError(400, "missing_input", "send exactly one of 'instances' (rows) and 'inputs' (columns)")
    spec = serving.ready_spec()
    serving.check_model(name, version, spec)
    settings = serving.settings()
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ApiError(400, "invalid_json", "'instances' must be a list, one entry per row")
        serving.check_count(len(instances))
        arrays = rows_to_inputs(instances, spec, settings)
    else:
        arrays = columns_to_inputs(body["inputs"], spec, settings)
        serving.check_count(len(arrays[0]))
    result = serving.backend().predict(arrays, deadline)
    if "instances" in body:
        value = {"predictions": raw_rows(result.outputs, spec)}
    elif len(result.outputs) == 1:
        value = {"outputs": to_json(result.outputs[0])}
    else:
        value = {"outputs": {t.name: to_json(out) for t, out in zip(spec.outputs, result.outputs)}}
    return serving.Answer.json(value, result)
