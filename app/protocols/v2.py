"""The Open Inference Protocol v2 (KServe v2, Triton, MLServer) over REST, with the binary
tensor extension: tritonclient and KServe's v2 clients work unchanged.

An image model's input also takes BYTES: each element an encoded image (JPEG, PNG, ...),
decoded and preprocessed exactly as /predict does. Every call goes through the same backend,
so v2 requests share batches with /predict and v1 requests.
"""

from __future__ import annotations

import json

import numpy as np
from flask import Blueprint, jsonify

from app import __version__, serving
from app.errors import ApiError
from app.inference.backend import Prediction
from app.inference.spec import ModelSpec
from app.outputs import top_k
from app.protocols import as_bad_request, v2_binary
from app.tensors import images_to_array, to_array

bp = Blueprint("v2", __name__)

EXTENSIONS = ["binary_tensor_data", "classification"]


bp.register_error_handler(ApiError, as_bad_request)


@bp.get("/v2")
def server_metadata():
    return jsonify(name="kerasrv", version=__version__, extensions=EXTENSIONS)


@bp.get("/v2/health/live")
def live():
    return jsonify(live=True)


@bp.get("/v2/health/ready")
def ready():
    return _readiness(serving.backend().status(fresh=True).ready)


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    status = serving.backend().status(fresh=True)
    serving.check_model(name, version, status.spec)
    return _readiness(status.ready)


def _readiness(ready: bool):
    """The status code is the answer (200 ready, 503 not); the body is KServe's."""
    return serving.readiness(jsonify(ready=ready), ready)


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    spec = serving.ready_spec()
    serving.check_model(name, version, spec)

    def describe(tensors) -> list[dict]:
        return [{"name": t.name, "datatype": v2_binary.BY_DTYPE[t.dtype], "shape": [-1, *t.shape]} for t in tensors]

    return jsonify(name=name, versions=[str(spec.version)], platform="tensorflow_keras",
                   inputs=describe(spec.inputs), outputs=describe(spec.outputs))


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    return answer(serving.Call.of_request(), name, version).response()


def answer(call: serving.Call, name: str, version: str | None = None) -> serving.Answer:
    """The infer view's answer, also app.fast_lane's."""
    serving.check_model(name)
    deadline = serving.deadline(call.request_start)
    header, binary = v2_binary.split_body(call.body, call.inference_header)
    body = serving.json_body(header)
    if not isinstance(body.get("id", ""), str):
        raise ApiError(400, "invalid_json", "'id' must be a string")
    spec = serving.ready_spec()
    serving.check_model(name, version, spec)
    arrays = _inputs(body, binary, spec)
    wanted = _requested_outputs(body, spec)
    result = serving.backend().predict(arrays, deadline)
    outputs, blobs = [], []
    for index, params in wanted:
        tensor = spec.outputs[index]
        values = result.outputs[index]
        classes = params.get("classification")
        if classes:
            values = _classification(values, classes, spec)
        entry: dict = {"name": tensor.name, "datatype": v2_binary.datatype_of(values),
                       "shape": list(values.shape)}
        if params.get("binary_data", _binary_default(body)):
            blob = v2_binary.encode(values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _flat_json(values)
        outputs.append(entry)
    reply: dict = {"model_name": name, "model_version": str(result.version)}
    if "id" in body:
        reply["id"] = body["id"]
    reply["outputs"] = outputs
    return _framed(reply, blobs, result)


def _inputs(body: dict, binary: memoryview, spec: ModelSpec) -> list[np.ndarray]:
    entries = body.get("inputs")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ApiError(400, "missing_input", "'inputs' must be a non-empty list of tensors")
    settings = serving.settings()
    by_name: dict[str, np.ndarray] = {}
    offset = 0
    for i, entry in enumerate(entries):
        name = entry.get("name")
        where = f"inputs[{i}] ({name})"
        tensor = spec.input_named(name) if isinstance(name, str) else None
        if tensor is None:
            raise ApiError(400, "unknown_input",
                           f"{where}: the model's inputs are {[t.name for t in spec.inputs]}")
        if name in by_name:
            raise ApiError(400, "invalid_json", f"{where}: the input is given twice")
        values, offset = v2_binary.decode(entry, binary, offset, where)
        serving.check_count(values.shape[0])
        if entry["datatype"] == "BYTES" and spec.is_image:
            if values.ndim > 2 or values.size != values.shape[0]:
                raise ApiError(400, "invalid_shape", f"{where}: encoded images are one per row, shape [N] or [N, 1]")
            by_name[name] = images_to_array(list(values.reshape(-1)), spec, settings)
        else:
            by_name[name] = to_array(values, tensor, settings, where)
    if offset != len(binary):
        raise ApiError(400, "invalid_binary", f"{len(binary) - offset} bytes of binary data belong to no input")
    missing = [t.name for t in spec.inputs if t.name not in by_name]
    if missing:
        raise ApiError(400, "missing_input", f"the model's input {missing[0]!r} is missing")
    arrays = [by_name[t.name] for t in spec.inputs]
    if len({len(a) for a in arrays}) > 1:
        raise ApiError(400, "invalid_shape", "the inputs have different batch sizes")
    return arrays


def _requested_outputs(body: dict, spec: ModelSpec) -> list[tuple[int, dict]]:
    """(output index, its parameters) for each output to return: the requested ones, or all."""
    requested = body.get("outputs")
    if requested is None:
        return [(i, {}) for i in range(len(spec.outputs))]
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ApiError(400, "invalid_json", "'outputs' must be a list of {'name': ...}")
    names = [t.name for t in spec.outputs]
    wanted = []
    for entry in requested:
        if entry.get("name") not in names:
            raise ApiError(400, "unknown_output", f"no output {entry.get('name')!r}; the model's outputs are {names}")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise ApiError(400, "invalid_json", "an output's 'parameters' must be an object")
        classes = params.get("classification")
        if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
            raise ApiError(400, "invalid_parameter", "'classification' must be a positive integer")
        wanted.append((names.index(entry["name"]), params))
    return wanted


def _binary_default(body: dict) -> bool:
    params = body.get("parameters")
    return bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False


def _classification(scores: np.ndarray, k: int, spec: ModelSpec) -> np.ndarray:
    """Triton's classification extension: the k best classes per row as "score:index[:label]"."""
    if scores.ndim != 2 or scores.dtype == object:
        raise ApiError(400, "invalid_parameter", "classification needs an output of one score per class")
    rows = top_k(scores, k, spec.labels if spec.is_classifier else None)
    labelled = spec.labels is not None and spec.is_classifier
    out = np.empty((len(rows), len(rows[0])), dtype=object)
    for r, row in enumerate(rows):
        for c, best in enumerate(row):
            text = f"{best['score']:f}:{best['index']}" + (f":{best['label']}" if labelled else "")
            out[r, c] = text.encode()
    return out


def _flat_json(values: np.ndarray) -> list:
    flat = values.reshape(-1)
    if values.dtype == object:
        return [v.decode(errors="replace") for v in flat]
    return flat.tolist()


def _framed(reply: dict, blobs: list[bytes], result: Prediction) -> serving.Answer:
    """JSON alone, or with binary outputs the JSON header followed by the tensors."""
    if not blobs:
        return serving.Answer.json(reply, result)
    header = json.dumps(reply).encode()
    return serving.Answer(header + b"".join(blobs), "application/octet-stream", result,
                          ((v2_binary.HEADER, str(len(header))),))
