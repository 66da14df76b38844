"""The model repository API and TF Serving's version status over a fake backend: the shapes
tritonclient and TF Serving clients read, and every error as JSON with a stable code."""

from __future__ import annotations

import pytest

from app import create_app
from app.config import Settings
from app.inference.backend import UNLOADED_REASON, DeadlineExceeded, LoadFailed, Unsupported
from tests.doubles import FakeBackend

HISTORY = [{"version": 3, "state": "END", "error": "version 3 is broken"},
           {"version": 2, "state": "AVAILABLE", "error": ""},
           {"version": 1, "state": "END", "error": ""}]


@pytest.fixture
def served():
    backend = FakeBackend(versions=HISTORY)
    return create_app(Settings(model_name="digits"), backend=backend).test_client(), backend


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["code"] == code


def test_the_index_lists_every_version_in_tritons_states(served):
    client, _ = served
    assert client.post("/v2/repository/index").get_json() == [
        {"name": "digits", "version": "3", "state": "UNAVAILABLE", "reason": "version 3 is broken"},
        {"name": "digits", "version": "2", "state": "READY", "reason": ""},
        {"name": "digits", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
    ]
    ready = client.post("/v2/repository/index", json={"ready": True}).get_json()
    assert [entry["version"] for entry in ready] == ["2"]
    assert_error(client.post("/v2/repository/index", json={"ready": "yes"}), 400, "invalid_json")
    assert_error(client.post("/v2/repository/index", data=b"{", content_type="application/json"), 400,
                 "invalid_json")


def test_tf_serving_version_status_lists_versions_and_filters_by_version(served):
    client, _ = served
    body = client.get("/v1/models/digits").get_json()
    assert body["ready"] is True
    assert body["model_version_status"] == [
        {"version": "3", "state": "END", "status": {"error_code": "UNKNOWN", "error_message": "version 3 is broken"}},
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "END", "status": {"error_code": "OK", "error_message": ""}},
    ]
    one = client.get("/v1/models/digits/versions/1").get_json()["model_version_status"]
    assert [v["version"] for v in one] == ["1"]
    assert_error(client.get("/v1/models/digits/versions/9"), 404, "version_not_found")
    assert_error(client.get("/v1/models/other"), 404, "model_not_found")


def test_load_answers_the_version_served(served):
    client, backend = served
    answer = client.post("/v2/repository/models/digits/load")
    assert answer.status_code == 200 and answer.get_json() == {"model_name": "digits", "model_version": "1"}
    assert answer.headers["X-Model-Version"] == "1"
    assert client.post("/v2/repository/models/digits/load", json={"parameters": {}}).status_code == 200
    assert backend.loads == 2


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"parameters": {"config": "{}"}}, 400, "unsupported"),
    ({"parameters": {"file:1/model.keras": "AAAA"}}, 400, "unsupported"),
    ({"parameters": []}, 400, "invalid_json"),
    ([1, 2], 400, "invalid_json"),
])
def test_load_refuses_what_it_cannot_do(served, body, status, code):
    client, backend = served
    assert_error(client.post("/v2/repository/models/digits/load", json=body), status, code)
    assert backend.loads == 0


@pytest.mark.parametrize(("error", "status", "code"), [
    (LoadFailed("the model failed to load: broken; version 2 keeps serving"), 400, "load_failed"),
    (Unsupported("needs INFERENCE_MODE=mule"), 400, "unsupported"),
    (DeadlineExceeded("the load goes on"), 504, "timeout"),
])
def test_a_load_that_cannot_finish_says_why(served, error, status, code):
    client, backend = served
    backend.load_raises = error
    assert_error(client.post("/v2/repository/models/digits/load"), status, code)


def test_unload_makes_every_probe_say_not_ready_until_a_load(served):
    client, _ = served
    assert_error(client.post("/v2/repository/models/other/unload"), 404, "model_not_found")
    assert client.post("/v2/repository/models/digits/unload").get_json() == {"model_name": "digits"}
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.get_json()["error"] == UNLOADED_REASON
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/models/digits/ready").status_code == 503
    assert client.get("/v1/models/digits").status_code == 503
    assert client.post("/v2/repository/models/digits/load").status_code == 200
    assert client.get("/health/ready").status_code == 200
