"""The OpenAPI 3.1 document of every route, served at /openapi.json and rendered by Swagger UI at
/docs. Written out by hand so it says what the routes promise (limits, error codes), and checked
two ways by the tests: openapi-spec-validator, and Schemathesis against the running server.
"""

from __future__ import annotations

from app.config import Settings

JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict | str, description: str) -> dict:
    body = _ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {JSON: {"schema": body}}}


ERRORS = {
    "default": _json("Error", "Any error: a message and a stable code (the README lists the codes)"),
}
READY = {"200": _json({"type": "object"}, "Ready"), "503": _json("Error", "Not ready (loading, or the load failed)")}


def _page(operation: str, summary: str) -> dict:
    return {"get": {"operationId": operation, "summary": summary, "responses": {"200": {
        "description": "An HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}}


def _model_params(with_version: bool = False) -> list[dict]:
    params = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "The served model's name (MODEL_NAME)"}]
    if with_version:
        params.append({"name": "version", "in": "path", "required": True, "schema": {"type": "string"}})
    return params


def _both(path: str, operation: dict, method: str = "get") -> dict:
    """The route with and without /versions/{version}."""
    base, _, tail = path.partition("{tail}")
    plain = {method: {**operation, "parameters": _model_params(), "operationId": operation["operationId"]}}
    versioned = {method: {**operation, "parameters": _model_params(True),
                          "operationId": operation["operationId"] + "_version"}}
    return {base + tail: plain, base + "/versions/{version}" + tail: versioned}


def document(settings: Settings) -> dict:
    limits = (f"At most {settings.max_inputs_per_request} inputs per request (MAX_INPUTS_PER_REQUEST),"
              f" {settings.max_upload_mb} MB per body (MAX_UPLOAD_MB), {settings.max_string_bytes} bytes per"
              " string value (MAX_STRING_BYTES).")
    paths: dict = {
        "/predict": {"post": {
            "operationId": "predict",
            "summary": "kerasrv's own API: images (multipart, raw or base64 JSON) or JSON instances",
            "description": limits,
            "parameters": [{"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                    "image": {"type": "string", "contentMediaType": "application/octet-stream"}}}},
                "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}},
                "image/jpeg": {"schema": {"type": "string", "contentMediaType": "image/jpeg"}},
                JSON: {"schema": _ref("PredictRequest")},
            }},
            "responses": {"200": _json("PredictResponse", "Top-k classes per image, or raw outputs"), **ERRORS},
        }},
        "/health/live": {"get": {"operationId": "live", "summary": "The process answers",
                                 "responses": {"200": _json({"type": "object"}, "Alive")}}},
        "/health/ready": {"get": {"operationId": "ready", "summary": "The model is loaded and warm",
                                  "responses": READY}},
        "/stats": {"get": {"operationId": "stats", "summary": "The mule's counters (JSON)",
                           "responses": {"200": _json({"type": "object"}, "Counters"), **ERRORS}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics of every process",
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **ERRORS}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                  "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        "/": _page("landing", "The model, its state and how to call it"),
        "/dashboard": _page("dashboard", "A live view of requests/s, latency, batch sizes and the queue"),
        "/docs": _page("docs", "This document in Swagger UI"),
        "/v1/models": {"get": {"operationId": "v1_models", "summary": "KServe v1: the served models",
                               "responses": {"200": _json({"type": "object", "required": ["models"], "properties": {
                                   "models": {"type": "array", "items": {"type": "string"}}}}, "Model names")}}},
        **_both("/v1/models/{model}{tail}", {
            "operationId": "v1_model_status", "summary": "TF Serving version status, KServe v1 readiness",
            "responses": {"200": _json("V1Status", "Ready"), "503": _json("V1Status", "Not ready"),
                          **ERRORS}}),
        **_both("/v1/models/{model}{tail}/metadata", {
            "operationId": "v1_metadata", "summary": "TF Serving signature metadata",
            "responses": {"200": _json({"type": "object", "required": ["model_spec", "metadata"]}, "Signature"),
                          **ERRORS}}),
        **_both("/v1/models/{model}{tail}:predict", {
            "operationId": "v1_predict", "summary": "TF Serving predict, row or columnar format",
            "description": limits,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("V1Request")}}},
            "responses": {"200": _json("V1Response", "Predictions (rows) or outputs (columns)"), **ERRORS}},
            method="post"),
        "/v2": {"get": {"operationId": "v2_server", "summary": "Open Inference Protocol: server metadata",
                        "responses": {"200": _json({"type": "object", "required": ["name", "version", "extensions"]},
                                                   "Server metadata")}}},
        "/v2/health/live": {"get": {"operationId": "v2_live", "summary": "Server live",
                                    "responses": {"200": _json({"type": "object"}, "Live")}}},
        "/v2/health/ready": {"get": {"operationId": "v2_ready", "summary": "Server ready", "responses": READY}},
        **_both("/v2/models/{model}{tail}", {
            "operationId": "v2_metadata", "summary": "Model metadata: inputs and outputs",
            "responses": {"200": _json("V2Metadata", "Metadata"), **ERRORS}}),
        **_both("/v2/models/{model}{tail}/ready", {
            "operationId": "v2_model_ready", "summary": "Model ready", "responses": {**READY, **ERRORS}}),
        **_both("/v2/models/{model}{tail}/infer", {
            "operationId": "v2_infer", "summary": "Inference with JSON tensors or the binary tensor extension",
            "description": limits + " With the binary extension, the body is the JSON request followed by the"
                           " tensors and the Inference-Header-Content-Length header gives the JSON's length.",
            "requestBody": {"required": True, "content": {
                JSON: {"schema": _ref("V2Request")},
                "application/octet-stream": {"schema": {"type": "string", "contentMediaType":
                                                        "application/octet-stream"}}}},
            "responses": {"200": {"description": "Outputs (JSON, or JSON then binary tensors)", "content": {
                JSON: {"schema": _ref("V2Response")},
                "application/octet-stream": {"schema": {"type": "string"}}}}, **ERRORS}},
            method="post"),
        "/v2/repository/index": {"post": {
            "operationId": "v2_repository_index", "summary": "The model's versions and their states (Triton)",
            "requestBody": {"required": False, "content": {JSON: {"schema": {"type": "object", "properties": {
                "ready": {"type": "boolean", "description": "Only the versions ready to serve"}}}}}},
            "responses": {"200": _json({"type": "array", "items": _ref("RepositoryEntry")}, "Versions"), **ERRORS}}},
        "/v2/repository/models/{model}/load": {"post": {
            "operationId": "v2_repository_load", "parameters": _model_params(),
            "summary": "Load the version MODEL_PATH names now; answers once it serves (or failed)",
            "description": "The new version loads beside the served one, which keeps serving if the load fails"
                           " (400 load_failed). A version already served is not loaded again. 504 if the load"
                           " outlasts REQUEST_TIMEOUT_MS (it goes on); 400 unsupported with INFERENCE_MODE=worker.",
            "requestBody": {"required": False, "content": {JSON: {"schema": {"type": "object", "properties": {
                "parameters": {"type": "object"}}}}}},
            "responses": {"200": _json({"type": "object", "required": ["model_name", "model_version"],
                                        "properties": {"model_name": {"type": "string"},
                                                       "model_version": {"type": "string"}}}, "Served now"),
                          **ERRORS}}},
        "/v2/repository/models/{model}/unload": {"post": {
            "operationId": "v2_repository_unload", "parameters": _model_params(),
            "summary": "Stop serving the model: what is queued is answered, then not ready until a load",
            "requestBody": {"required": False, "content": {JSON: {"schema": {"type": "object", "properties": {
                "parameters": {"type": "object"}}}}}},
            "responses": {"200": _json({"type": "object", "required": ["model_name"]}, "Unloaded"), **ERRORS}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "kerasrv", "version": "1",
                 "description": f"Serving model {settings.model_name!r}: its own /predict, TF Serving / KServe"
                                " v1 and the Open Inference Protocol v2 (KServe, Triton, MLServer)."},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


_TENSOR_DATA = {"description": "Row-major values, flat or nested", "type": "array"}
_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
              "FP64", "BYTES"]

SCHEMAS: dict = {
    "Error": {"type": "object", "required": ["error", "code"], "properties": {
        "error": {"type": "string", "description": "For a human"},
        "code": {"type": "string", "description": "Stable, for a machine"}}},
    "PredictRequest": {"type": "object", "description": "One of image, images or instances", "properties": {
        "image": {"type": "string", "description": "Base64 image bytes"},
        "images": {"type": "array", "items": {"type": "string"}},
        "instances": {"type": "array", "description": "Rows of the model's input (objects for several inputs)"}}},
    "PredictResponse": {"type": "object", "required": ["model", "predictions"], "properties": {
        "model": {"type": "string"}, "predictions": {"type": "array"}}},
    "V1Request": {"type": "object", "properties": {
        "signature_name": {"type": "string"},
        "instances": {"type": "array", "description": "Row format: one value, or {input: value}, per row"},
        "inputs": {"description": "Columnar format: all rows of the input, or {input: rows}"}}},
    "V1Response": {"type": "object", "properties": {"predictions": {"type": "array"}, "outputs": {}}},
    "V1Status": {"type": "object", "required": ["name", "ready", "model_version_status"], "properties": {
        "name": {"type": "string"}, "ready": {"type": "boolean"},
        "model_version_status": {"type": "array", "items": {"type": "object", "properties": {
            "version": {"type": "string"}, "state": {"type": "string"},
            "status": {"type": "object"}}}}}},
    "RepositoryEntry": {"type": "object", "required": ["name", "state"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "state": {"enum": ["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]}, "reason": {"type": "string"}}},
    "V2TensorMeta": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"enum": _DATATYPES},
        "shape": {"type": "array", "items": {"type": "integer"}}}},
    "V2Metadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _ref("V2TensorMeta")},
        "outputs": {"type": "array", "items": _ref("V2TensorMeta")}}},
    "V2Request": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype"],
                                              "properties": {"name": {"type": "string"},
                                                             "shape": {"type": "array", "items": {"type": "integer"}},
                                                             "datatype": {"enum": _DATATYPES},
                                                             "parameters": {"type": "object"},
                                                             "data": _TENSOR_DATA}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
    "V2Response": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"],
                                               "properties": {"name": {"type": "string"},
                                                              "datatype": {"enum": _DATATYPES},
                                                              "shape": {"type": "array", "items": {"type": "integer"}},
                                                              "parameters": {"type": "object"},
                                                              "data": _TENSOR_DATA}}}}},
}
