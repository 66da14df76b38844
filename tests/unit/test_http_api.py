"""The HTTP API through Flask's test client, with tests.doubles.FakeBackend in place of the model."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from app import create_app
from app.config import Settings
from app.inference.backend import (
    DeadlineExceeded,
    InferenceFailed,
    NotReady,
    Overloaded,
)
from tests.doubles import LABELS, N_CLASSES, TENSOR_SPEC, FakeBackend, softmax_scores


def make_client(backend: FakeBackend | None = None, **overrides):
    settings = Settings(model_name="digits-test", **overrides)
    backend = backend or FakeBackend()
    app = create_app(settings, backend=backend)
    return app.test_client(), backend


@pytest.fixture
def client():
    return make_client()[0]


@pytest.fixture
def tensor_client():
    return make_client(FakeBackend(TENSOR_SPEC))[0]


def image_for_class(cls: int, size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> bytes:
    """A flat grey picture whose mean pixel makes the fake backend pick class `cls` first."""
    value = round(cls / (N_CLASSES - 1) * 255)
    buffer = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    return body


def assert_top(predictions: list[dict], best: int, k: int):
    assert len(predictions) == k
    assert all(set(p) == {"label", "index", "score"} for p in predictions)
    assert predictions[0]["index"] == best
    assert predictions[0]["label"] == LABELS[best]
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert len({p["index"] for p in predictions}) == k
    assert all(LABELS[p["index"]] == p["label"] for p in predictions)


# --- image inputs --------------------------------------------------------------------------


def test_multipart_single_image(client):
    response = client.post("/predict", data={"image": (io.BytesIO(image_for_class(7)), "seven.png")})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model"] == "digits"
    assert_top(body["predictions"], best=7, k=5)  # flat list, default top_k 5
    assert response.headers["X-Batch-Size"] == "1"
    scores = softmax_scores(np.array([round(7 / 9 * 255) / 255]))[0]
    assert body["predictions"][0]["score"] == pytest.approx(float(scores.max()), abs=1e-3)


def test_multipart_top_k(client):
    response = client.post("/predict?top_k=3", data={"image": (io.BytesIO(image_for_class(2)), "a.png")})
    assert_top(response.get_json()["predictions"], best=2, k=3)


def test_top_k_larger_than_the_classes(client):
    response = client.post("/predict?top_k=50", data={"image": (io.BytesIO(image_for_class(2)), "a.png")})
    assert_top(response.get_json()["predictions"], best=2, k=N_CLASSES)


def test_default_top_k_setting():
    client, _ = make_client(default_top_k=2)
    response = client.post("/predict", data={"image": (io.BytesIO(image_for_class(4)), "a.png")})
    assert_top(response.get_json()["predictions"], best=4, k=2)


def test_multipart_repeated_images_give_a_list_per_image():
    client, backend = make_client()
    files = [(io.BytesIO(image_for_class(c)), f"{c}.png") for c in (1, 8, 5)]
    response = client.post("/predict?top_k=2", data={"image": files})
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert len(predictions) == 3
    for per_image, best in zip(predictions, (1, 8, 5), strict=True):
        assert_top(per_image, best=best, k=2)
    assert response.headers["X-Batch-Size"] == "3"
    ([rows], _), = backend.calls
    assert rows.shape == (3, 8, 8, 3)
    assert 0.0 <= rows.min() and rows.max() <= 1.0  # "unit" preprocessing reached the backend


def test_images_are_resized_to_the_model_input():
    client, backend = make_client()
    response = client.post("/predict", data={"image": (io.BytesIO(image_for_class(3, size=(40, 30))), "big.png")})
    assert response.status_code == 200
    assert backend.calls[0][0][0].shape == (1, 8, 8, 3)


def test_raw_image_body(client):
    response = client.post("/predict?top_k=1", data=image_for_class(6), content_type="image/png")
    assert response.status_code == 200
    assert_top(response.get_json()["predictions"], best=6, k=1)


def test_raw_octet_stream_jpeg(client):
    response = client.post("/predict", data=image_for_class(9, fmt="JPEG"), content_type="application/octet-stream")
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["index"] == 9


def test_json_single_image(client):
    response = client.post("/predict", json={"image": b64(image_for_class(3))})
    assert response.status_code == 200
    assert_top(response.get_json()["predictions"], best=3, k=5)


def test_json_tf_serving_b64_object(client):
    response = client.post("/predict", json={"image": {"b64": b64(image_for_class(5))}})
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["index"] == 5


def test_json_images_list(client):
    response = client.post("/predict?top_k=4", json={"images": [b64(image_for_class(0)), b64(image_for_class(9))]})
    assert response.status_code == 200
    first, second = response.get_json()["predictions"]
    assert_top(first, best=0, k=4)
    assert_top(second, best=9, k=4)


def test_json_one_element_images_list_is_still_a_list(client):
    response = client.post("/predict", json={"images": [b64(image_for_class(4))]})
    predictions = response.get_json()["predictions"]
    assert len(predictions) == 1 and isinstance(predictions[0], list)
    assert predictions[0][0]["index"] == 4


def test_data_url(client):
    url = "data:image/png;base64," + b64(image_for_class(8))
    response = client.post("/predict", json={"image": url})
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["index"] == 8


# --- tensor inputs -------------------------------------------------------------------------


def test_instances_give_raw_outputs(tensor_client):
    rows = [[1, 2, 3, 4], [-1.5, 0, 0.5, 2]]
    response = tensor_client.post("/predict", json={"instances": rows})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model"] == "tabular"
    assert body["predictions"] == [[10.0, 4.0], [1.0, 2.0]]
    assert response.headers["X-Batch-Size"] == "2"


def test_instances_to_an_image_model_give_raw_outputs():
    client, _ = make_client()
    rows = np.full((1, 8, 8, 3), 1.0).tolist()
    response = client.post("/predict", json={"instances": rows})
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert len(predictions) == 1 and len(predictions[0]) == N_CLASSES
    assert int(np.argmax(predictions[0])) == 9  # raw scores, not top-k dicts


@pytest.mark.parametrize(
    "rows", [[[1, 2, 3]], [[1, 2, 3, 4, 5]], [1, 2, 3, 4], [[[1, 2, 3, 4]]], [[1, 2], [1, 2, 3, 4]]]
)
def test_wrong_instance_shape(tensor_client, rows):
    assert_error(tensor_client.post("/predict", json={"instances": rows}), 422, "invalid_shape")


def test_non_numeric_instances(tensor_client):
    assert_error(tensor_client.post("/predict", json={"instances": [[1, 2, "x", 4]]}), 422, "invalid_shape")


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(bad):
    client, backend = make_client(FakeBackend(TENSOR_SPEC))
    body = f'{{"instances": [[1, 2, {bad}, 4]]}}'
    assert_error(client.post("/predict", data=body, content_type="application/json"), 422, "invalid_value")
    assert backend.calls == []


def test_images_to_a_tensor_model(tensor_client):
    response = tensor_client.post("/predict", data={"image": (io.BytesIO(image_for_class(1)), "a.png")})
    assert_error(response, 422, "not_an_image_model")


# --- bad requests --------------------------------------------------------------------------


def test_missing_image_field_names_what_was_sent(client):
    body = assert_error(client.post("/predict", data={"file": (io.BytesIO(image_for_class(1)), "a.png")}),
                        400, "missing_input")
    assert "'image'" in body["error"]
    assert "file" in body["error"]


def test_no_body_at_all(client):
    assert_error(client.post("/predict"), 400, "missing_input")


def test_empty_raw_body(client):
    assert_error(client.post("/predict", data=b"", content_type="image/png"), 400, "empty_body")


def test_text_plain_body(client):
    body = assert_error(client.post("/predict", data="hello", content_type="text/plain"), 415, "unsupported_media_type")
    assert "text/plain" in body["error"]


def test_text_file_as_image(client):
    response = client.post("/predict", data={"image": (io.BytesIO(b"just some text\n" * 5), "notes.png")})
    assert_error(response, 415, "unsupported_image")


def test_truncated_image(client):
    data = image_for_class(3, size=(64, 64), fmt="JPEG")
    assert_error(client.post("/predict", data=data[:200], content_type="image/jpeg"), 400, "invalid_image")


@pytest.mark.parametrize("body", ["{not json", "[1, 2, 3]", '"image"', "", "[" * 100_000, b"{\"image\": \"\xff\xfe\"}"])
def test_invalid_json(client, body):
    """Deep nesting (RecursionError in json) and bad UTF-8 included: a 400, never a 500."""
    assert_error(client.post("/predict", data=body, content_type="application/json"), 400, "invalid_json")


def test_json_without_a_known_key(client):
    body = assert_error(client.post("/predict", json={"picture": "abc"}), 400, "missing_input")
    assert "picture" in body["error"]


@pytest.mark.parametrize("value", ["not base64!!", "abc", 42, None])
def test_bad_base64(client, value):
    assert_error(client.post("/predict", json={"image": value}), 400, "invalid_base64")


def test_bad_base64_in_a_list_names_the_entry(client):
    body = assert_error(client.post("/predict", json={"images": [b64(image_for_class(1)), "%%%"]}),
                        400, "invalid_base64")
    assert "images[1]" in body["error"]


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", ""])
def test_bad_top_k(client, value):
    response = client.post(f"/predict?top_k={value}", data={"image": (io.BytesIO(image_for_class(1)), "a.png")})
    assert_error(response, 400, "invalid_parameter")


def test_top_k_with_a_unicode_digit_is_a_400(client):
    response = client.post("/predict?top_k=%C2%B2", data={"image": (io.BytesIO(image_for_class(1)), "a.png")})
    assert_error(response, 400, "invalid_parameter")


def test_empty_lists(client, tensor_client):
    assert_error(client.post("/predict", json={"images": []}), 400, "missing_input")
    assert_error(tensor_client.post("/predict", json={"instances": []}), 400, "missing_input")


def test_too_many_inputs():
    client, backend = make_client(max_inputs_per_request=3)
    images = [b64(image_for_class(1))] * 4
    assert_error(client.post("/predict", json={"images": images}), 413, "too_many_inputs")
    files = [(io.BytesIO(image_for_class(1)), f"{i}.png") for i in range(4)]
    assert_error(client.post("/predict", data={"image": files}), 413, "too_many_inputs")
    assert client.post("/predict", json={"images": images[:3]}).status_code == 200
    assert len(backend.calls) == 1


def test_too_many_instances():
    client, _ = make_client(FakeBackend(TENSOR_SPEC), max_inputs_per_request=2)
    assert_error(client.post("/predict", json={"instances": [[0, 0, 0, 0]] * 3}), 413, "too_many_inputs")


def test_body_over_the_upload_limit(client):
    big = b"\x89PNG" + b"\0" * (10 * 1024 * 1024 + 1)
    assert_error(client.post("/predict", data=big, content_type="image/png"), 413, "payload_too_large")


def test_json_over_the_upload_limit():
    client, backend = make_client(max_upload_mb=1)
    assert_error(client.post("/predict", json={"image": "A" * (1024 * 1024 + 4)}), 413, "payload_too_large")
    assert backend.calls == []


def test_multipart_over_the_upload_limit():
    client, backend = make_client(max_upload_mb=1)
    response = client.post("/predict", data={"image": (io.BytesIO(b"\0" * (1024 * 1024 + 100)), "big.png")})
    assert_error(response, 413, "payload_too_large")
    assert backend.calls == []


def test_image_over_the_pixel_limit():
    client, backend = make_client(max_image_pixels=1000)
    response = client.post("/predict", data=image_for_class(1, size=(40, 40)), content_type="image/png")
    assert_error(response, 413, "image_too_large")
    assert backend.calls == []


# --- backend states and errors -------------------------------------------------------------


def test_not_ready():
    client, backend = make_client(FakeBackend(state="loading"))
    response = client.post("/predict", data={"image": (io.BytesIO(image_for_class(1)), "a.png")})
    body = assert_error(response, 503, "not_ready")
    assert "loading" in body["error"]
    assert response.headers["Retry-After"] == "1"
    assert backend.calls == []

    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.headers["Retry-After"] == "1"
    body = ready.get_json()
    assert body["code"] == "not_ready" and body["error"]
    assert body["state"] == "loading"
    assert client.get("/health/live").status_code == 200


def test_failed_model_says_why():
    client, _ = make_client(FakeBackend(state="failed", error="no such file: model.keras"))
    body = assert_error(client.post("/predict", json={"image": b64(image_for_class(1))}), 503, "not_ready")
    assert "no such file: model.keras" in body["error"]
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert "no such file: model.keras" in ready.get_json()["error"]
    assert ready.get_json()["state"] == "failed"


def test_ready():
    client, _ = make_client()
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "model": "digits-test", "mode": "fake", "state": "ready"}


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (Overloaded("the queue is full"), 503, "overloaded", "1"),
        (NotReady("restarting"), 503, "not_ready", "1"),
        (DeadlineExceeded("too slow"), 504, "timeout", None),
        (InferenceFailed("the model raised"), 422, "inference_failed", None),
    ],
)
def test_backend_errors(error, status, code, retry_after):
    client, backend = make_client(FakeBackend(raises=error))
    response = client.post("/predict", data={"image": (io.BytesIO(image_for_class(1)), "a.png")})
    body = assert_error(response, status, code)
    assert body["error"] == str(error)
    assert response.headers.get("Retry-After") == retry_after
    assert len(backend.calls) == 1


def test_unexpected_exception_is_a_json_500():
    client, _ = make_client(FakeBackend(raises=RuntimeError("boom")))  # type: ignore[arg-type]
    response = client.post("/predict", json={"image": b64(image_for_class(1))})
    body = assert_error(response, 500, "internal_error")
    assert "boom" not in body["error"]


def test_request_queued_past_its_deadline_is_shed():
    client, backend = make_client(request_timeout_ms=1000)
    started = f"t={time.time() - 5:.3f}"  # nginx received it 5 s ago
    response = client.post("/predict", json={"image": b64(image_for_class(1))}, headers={"X-Request-Start": started})
    assert_error(response, 504, "timeout")
    assert backend.calls == []


def test_deadline_passed_to_the_backend():
    client, backend = make_client(request_timeout_ms=20_000)
    before = time.monotonic()
    assert client.post("/predict", json={"image": b64(image_for_class(1))}).status_code == 200
    deadline = backend.calls[0][1]
    assert before + 19 < deadline <= time.monotonic() + 20


# --- other routes --------------------------------------------------------------------------


def test_unknown_route(client):
    assert_error(client.get("/nope"), 404, "not_found")


def test_get_predict(client):
    assert_error(client.get("/predict"), 405, "method_not_allowed")


def test_405_names_the_allowed_methods(client):
    assert "POST" in client.get("/predict").headers.get("Allow", "")


def test_live(client):
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.get_json() == {"status": "alive"}


def test_stats(client):
    response = client.get("/stats")
    assert response.status_code == 200
    assert response.get_json() == {"model": "digits-test", "mode": "fake", "state": "ready", "requests": 0}


def test_index_page(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "digits-test" in html
    assert '<form id="upload">' in html
    assert 'type="file" name="image"' in html


def test_index_page_while_loading():
    client, _ = make_client(FakeBackend(state="loading"))
    html = client.get("/").get_data(as_text=True)
    assert "digits-test" in html and "Not ready" in html


def test_index_page_for_a_tensor_model(tensor_client):
    html = tensor_client.get("/").get_data(as_text=True)
    assert "instances" in html
    assert '<form id="upload">' not in html


def test_error_bodies_are_json_strings():
    client, _ = make_client()
    response = client.post("/predict", data="x", content_type="text/plain")
    assert json.loads(response.get_data(as_text=True)).keys() == {"error", "code"}
