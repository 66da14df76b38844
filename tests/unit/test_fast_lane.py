"""app.fast_lane: the requests it takes (/predict, v2 infer, TF Serving :predict) are answered as
Flask's views answer them, byte for byte, errors included; the others reach Flask untouched."""

from __future__ import annotations

import io
import json
import struct

import pytest
from flask import Flask, jsonify
from flask.wrappers import Response
from prometheus_client import REGISTRY
from werkzeug.test import Client

from app import create_app, request_ids, serving
from app.config import Settings
from app.fast_lane import ROUTES
from app.inference.backend import DeadlineExceeded, InferenceFailed, NotReady, Overloaded, Prediction
from tests.doubles import TENSOR_SPEC, FakeBackend
from tests.unit.test_http_api import b64, image_for_class

PNG = image_for_class(3)


def make_app(backend: FakeBackend | None = None, **settings) -> Flask:
    return create_app(Settings(model_name="lane-test", **settings), backend=backend or FakeBackend())


def flask_only(app: Flask) -> Client:
    """A client of the app without the fast lane: Flask's own wsgi_app, every request routed."""
    return Client(lambda environ, start_response: Flask.wsgi_app(app, environ, start_response), Response)


def both(app: Flask, path: str = "/predict", **request_args) -> tuple[Response, Response]:
    """The same POST through the app (the lane first) and through Flask alone."""
    return app.test_client().post(path, **request_args), flask_only(app).post(path, **request_args)


def v2_binary(image: bytes, header: dict | None = None, declared: str | None = None) -> dict:
    """A v2 request as tritonclient sends one BYTES image: JSON header, then the length-prefixed image."""
    head = json.dumps(header or {
        "id": "r1", "inputs": [{"name": "pixels", "shape": [1, 1], "datatype": "BYTES",
                                "parameters": {"binary_data_size": 4 + len(image)}}],
        "outputs": [{"name": "probs", "parameters": {"binary_data": True}}]}).encode()
    return dict(data=head + struct.pack("<I", len(image)) + image, content_type="application/octet-stream",
                headers={"Inference-Header-Content-Length": declared or str(len(head))})


def answer(response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = [(k, v) for k, v in response.headers.items() if k != request_ids.HEADER]
    return response.status_code, response.get_data(), headers


IMAGE_CASES = {
    "png body": dict(data=PNG, content_type="image/png"),
    "octet-stream body": dict(data=PNG, content_type="application/octet-stream"),
    "json image": dict(json={"image": b64(PNG)}),
    "json images": dict(json={"images": [b64(PNG), b64(image_for_class(7))]}),
    "corrupt image": dict(data=PNG[:40], content_type="image/png"),
    "not an image": dict(data=b"hello", content_type="image/jpeg"),
    "bad json": dict(data=b"{", content_type="application/json"),
    "json without inputs": dict(json={"pictures": []}),
    "too many inputs": dict(json={"images": [b64(PNG)] * 3}),
    "tensors for an image model": dict(json={"instances": [[1, 2, 3, 4]]}),
}
TENSOR_CASES = {
    "instances": dict(json={"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}),
    "instances+json type": dict(data=json.dumps({"instances": [[1, 2, 3, 4]]}), content_type="application/ld+json"),
    "wrong shape": dict(json={"instances": [[1, 2]]}),
    "not numbers": dict(json={"instances": [["a", "b", "c", "d"]]}),
    "empty instances": dict(json={"instances": []}),
}
V2 = "/v2/models/lane-test/infer"
V2_IMAGE_CASES = {
    "binary image": (V2, v2_binary(PNG)),
    "json output": (V2, v2_binary(PNG, {"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES",
                                                      "parameters": {"binary_data_size": 4 + len(PNG)}}]})),
    "classification": (V2, v2_binary(PNG, {"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES",
                                                         "parameters": {"binary_data_size": 4 + len(PNG)}}],
                                            "outputs": [{"name": "probs", "parameters": {"classification": 2}}]})),
    "this version": ("/v2/models/lane-test/versions/1/infer", v2_binary(PNG)),
    "another version": ("/v2/models/lane-test/versions/7/infer", v2_binary(PNG)),
    "another model": ("/v2/models/other/infer", v2_binary(PNG)),
    "bad header length": (V2, v2_binary(PNG, declared="12x")),
    "corrupt image": (V2, v2_binary(PNG[:40])),
    "bad json": (V2, dict(data=b"{", content_type="application/json")),
}
V2_TENSOR_CASES = {
    "json tensor": (V2, dict(json={"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32",
                                               "data": [1, 2, 3, 4, 5, 6, 7, 8]}]})),
    "wrong shape": (V2, dict(json={"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32",
                                               "data": [1, 2]}]})),
    "unknown input": (V2, dict(json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                 "data": [1, 2, 3, 4]}]})),
}
V1 = "/v1/models/lane-test:predict"
TFSERVING_CASES = {
    "instances": (V1, dict(json={"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]})),
    "columns": (V1, dict(json={"inputs": [[1, 2, 3, 4]]})),
    "this version": ("/v1/models/lane-test/versions/1:predict", dict(json={"instances": [[1, 2, 3, 4]]})),
    "another version": ("/v1/models/lane-test/versions/2:predict", dict(json={"instances": [[1, 2, 3, 4]]})),
    "another model": ("/v1/models/other:predict", dict(json={"instances": [[1, 2, 3, 4]]})),
    "other signature": (V1, dict(json={"signature_name": "x", "instances": [[1, 2, 3, 4]]})),
    "rows and columns": (V1, dict(json={"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]})),
    "wrong shape": (V1, dict(json={"instances": [[1, 2]]})),
    "not json": (V1, dict(data=b"[1", content_type="application/json")),
}
BACKEND_ERRORS = {
    "not ready": NotReady("loading"),
    "overloaded": Overloaded("queue full"),
    "deadline": DeadlineExceeded("too late"),
    "model failed": InferenceFailed("boom"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_requests_are_answered_as_flask_answers_them(case):
    app = make_app(max_inputs_per_request=2)
    lane, flask = both(app, **IMAGE_CASES[case])
    assert answer(lane) == answer(flask)


@pytest.mark.parametrize("case", list(TENSOR_CASES))
def test_tensor_requests_are_answered_as_flask_answers_them(case):
    app = make_app(FakeBackend(TENSOR_SPEC))
    lane, flask = both(app, **TENSOR_CASES[case])
    assert answer(lane) == answer(flask)


@pytest.mark.parametrize("case", list(V2_IMAGE_CASES))
def test_v2_image_requests_are_answered_as_flask_answers_them(case):
    path, request_args = V2_IMAGE_CASES[case]
    lane, flask = both(make_app(), path, **request_args)
    assert answer(lane) == answer(flask)


@pytest.mark.parametrize("cases, case", [(V2_TENSOR_CASES, c) for c in V2_TENSOR_CASES]
                         + [(TFSERVING_CASES, c) for c in TFSERVING_CASES])
def test_protocol_tensor_requests_are_answered_as_flask_answers_them(cases, case):
    path, request_args = cases[case]
    lane, flask = both(make_app(FakeBackend(TENSOR_SPEC)), path, **request_args)
    assert answer(lane) == answer(flask)


@pytest.mark.parametrize("case", list(BACKEND_ERRORS))
@pytest.mark.parametrize("spec, path, request_args", [
    (None, "/predict", dict(data=PNG, content_type="image/png")),
    (None, V2, v2_binary(PNG)),
    (TENSOR_SPEC, V1, dict(json={"instances": [[1, 2, 3, 4]]})),
], ids=["predict", "v2", "tfserving"])
def test_backend_errors_are_answered_as_flask_answers_them(case, spec, path, request_args):
    app = make_app(FakeBackend(spec or FakeBackend().spec, raises=BACKEND_ERRORS[case]))
    lane, flask = both(app, path, **request_args)
    assert lane.status_code >= 400
    assert answer(lane) == answer(flask)


def test_a_model_that_is_not_loaded_is_answered_as_flask_answers_it():
    app = make_app(FakeBackend(state="loading"))
    lane, flask = both(app, data=PNG, content_type="image/png")
    assert lane.status_code == 503
    assert answer(lane) == answer(flask)


def test_answers_are_encoded_as_jsonify_encodes_the_errors():
    """Inference answers skip jsonify (app.serving.Answer) yet read as the errors do: same bytes."""
    value = {"model": "m", "predictions": [{"label": "caf\u00e9 \U0001f600", "index": 3, "score": 1.5e-7}],
             "nothing": None, "z": True, "a": [0.1, 2]}
    with make_app().app_context():
        assert serving.Answer.json(value, Prediction([])).body == jsonify(value).get_data()


def _flask_marks_its_answers(app: Flask) -> None:
    for endpoint in ("kerasrv.predict", "v2.infer", "tfserving.predict"):
        app.view_functions[endpoint] = lambda **path_args: ("answered by the Flask view", 299)


def test_the_lane_takes_plain_predictions():
    app = make_app()
    _flask_marks_its_answers(app)
    response = app.test_client().post("/predict", data=PNG, content_type="image/png")
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["label"] == "class-3"


@pytest.mark.parametrize("spec, path, request_args", [
    (None, V2, v2_binary(PNG)),
    (None, "/v2/models/lane-test/versions/1/infer", v2_binary(PNG)),
    (TENSOR_SPEC, V1, dict(json={"instances": [[1, 2, 3, 4]]})),
    (TENSOR_SPEC, "/v1/models/lane-test/versions/1:predict", dict(json={"instances": [[1, 2, 3, 4]]})),
], ids=["v2", "v2 version", "tfserving", "tfserving version"])
def test_the_lane_takes_protocol_inference(spec, path, request_args):
    app = make_app(FakeBackend(spec or FakeBackend().spec))
    _flask_marks_its_answers(app)
    response = app.test_client().post(path, **request_args)
    assert response.status_code == 200
    assert response.headers["X-Batch-Size"]


def test_each_lane_is_a_flask_rule_for_post():
    """The lane counts its answers under the rule Flask would: the same label in the metrics."""
    rules = {rule.rule for rule in make_app().url_map.iter_rules() if "POST" in rule.methods}
    assert {route.rule for route in ROUTES} <= rules


def _count(rule: str, code: str) -> float:
    labels = {"model": "lane-test", "route": rule, "code": code}
    return REGISTRY.get_sample_value("kerasrv_requests_total", labels) or 0.0


@pytest.mark.parametrize("path, rule, request_args", [
    ("/predict", "/predict", dict(data=PNG, content_type="image/png")),
    (V2, "/v2/models/<name>/infer", v2_binary(PNG)),
    ("/v2/models/lane-test/versions/1/infer", "/v2/models/<name>/versions/<version>/infer", v2_binary(PNG)),
    ("/v2/models/lane-test/versions/7/infer", "/v2/models/<name>/versions/<version>/infer", v2_binary(PNG)),
])
def test_answers_are_counted_as_flask_counts_them(path, rule, request_args):
    app = make_app()
    lane, flask = both(app, path, **request_args)
    assert lane.status_code == flask.status_code
    before = _count(rule, str(lane.status_code))
    app.test_client().post(path, **request_args)
    assert _count(rule, str(lane.status_code)) == before + 1


@pytest.mark.parametrize("request_args, settings", [
    (dict(path="/predict?top_k=2"), {}),  # a query string
    (dict(data={"image": (io.BytesIO(PNG), "a.png")}, content_type="multipart/form-data"), {}),
    (dict(data=PNG, content_type="text/plain"), {}),
    (dict(data=b"", content_type="image/png"), {}),  # no body: Flask says what is missing
    (dict(data=PNG, content_type="image/png", headers={"Origin": "https://a.example"}),
     {"cors_origins": ("https://a.example",)}),
], ids=["query string", "multipart", "other type", "empty body", "CORS origin"])
def test_anything_else_goes_to_flask(request_args, settings):
    app = make_app(**settings)
    _flask_marks_its_answers(app)
    path = request_args.pop("path", "/predict")
    assert app.test_client().post(path, **request_args).status_code == 299


def test_with_tokens_only_an_accepted_one_takes_the_lane(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    app = make_app(auth_tokens_file=tokens)
    _flask_marks_its_answers(app)
    client = app.test_client()
    accepted = client.post("/predict", data=PNG, content_type="image/png", headers={"Authorization": "Bearer s3cret"})
    assert accepted.status_code == 200
    assert client.post("/predict", data=PNG, content_type="image/png").status_code == 401
    assert client.post("/predict", data=PNG, content_type="image/png",
                       headers={"Authorization": "Bearer guess"}).status_code == 401


class _SeesRequestId(FakeBackend):
    seen: list[str]

    def predict(self, inputs, deadline):
        self.seen = [*getattr(self, "seen", []), request_ids.current()]
        return super().predict(inputs, deadline)


@pytest.mark.parametrize("given, kept", [("abc-123", True), ("not an id!", False), (None, False)])
def test_the_request_id_is_echoed_and_seen_by_the_logs(given, kept):
    backend = _SeesRequestId()
    headers = {request_ids.HEADER: given} if given else {}
    response = make_app(backend).test_client().post("/predict", data=PNG, content_type="image/png", headers=headers)
    rid = response.headers[request_ids.HEADER]
    assert (rid == given) is kept
    assert request_ids.VALID_ID.fullmatch(rid)
    assert backend.seen == [rid]


def test_an_error_keeps_the_request_id_the_lane_took():
    backend = _SeesRequestId(raises=Overloaded("queue full"))
    client = make_app(backend).test_client()
    given = client.post("/predict", data=PNG, content_type="image/png", headers={"X-Request-ID": "r-1"})
    assert given.status_code == 503
    assert given.headers[request_ids.HEADER] == "r-1"
    made = client.post("/predict", data=PNG, content_type="image/png")
    assert made.status_code == 503
    assert backend.seen == ["r-1", made.headers[request_ids.HEADER]]  # the logs' id is the client's
