"""app.fast_lane: the requests it takes are answered as Flask's view answers them, byte for byte,
errors included; the others reach Flask untouched."""

from __future__ import annotations

import io
import json

import pytest
from flask import Flask
from flask.wrappers import Response
from werkzeug.test import Client

from app import create_app, request_ids
from app.config import Settings
from app.inference.backend import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from tests.doubles import TENSOR_SPEC, FakeBackend
from tests.unit.test_http_api import b64, image_for_class

PNG = image_for_class(3)


def make_app(backend: FakeBackend | None = None, **settings) -> Flask:
    return create_app(Settings(model_name="lane-test", **settings), backend=backend or FakeBackend())


def flask_only(app: Flask) -> Client:
    """A client of the app without the fast lane: Flask's own wsgi_app, every request routed."""
    return Client(lambda environ, start_response: Flask.wsgi_app(app, environ, start_response), Response)


def both(app: Flask, **request_args) -> tuple[Response, Response]:
    """The same POST /predict through the app (the lane first) and through Flask alone."""
    return app.test_client().post("/predict", **request_args), flask_only(app).post("/predict", **request_args)


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


@pytest.mark.parametrize("case", list(BACKEND_ERRORS))
def test_backend_errors_are_answered_as_flask_answers_them(case):
    app = make_app(FakeBackend(raises=BACKEND_ERRORS[case]))
    lane, flask = both(app, data=PNG, content_type="image/png")
    assert lane.status_code >= 400
    assert answer(lane) == answer(flask)


def test_a_model_that_is_not_loaded_is_answered_as_flask_answers_it():
    app = make_app(FakeBackend(state="loading"))
    lane, flask = both(app, data=PNG, content_type="image/png")
    assert lane.status_code == 503
    assert answer(lane) == answer(flask)


def _flask_marks_its_answers(app: Flask) -> None:
    app.view_functions["kerasrv.predict"] = lambda: ("answered by the Flask view", 299)


def test_the_lane_takes_plain_predictions():
    app = make_app()
    _flask_marks_its_answers(app)
    response = app.test_client().post("/predict", data=PNG, content_type="image/png")
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["label"] == "class-3"


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
