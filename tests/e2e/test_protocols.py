"""The peers' protocols against the real stack, spoken by their own clients: tritonclient for the
Open Inference Protocol v2 (binary tensors, BYTES images, requests in flight, classification)
and TF Serving's REST API with requests. Every answer must equal /predict's and the model's own.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.config import DEMO_MODEL
from tools.local_server import LocalServer
from training.digits import heldout_split, render_png, to_model_input

MODEL = "digits"


@pytest.fixture(scope="module")
def digits():
    server = LocalServer(name="protocols").start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    _, _, images, _ = heldout_split()
    return [render_png(image) for image in images[:16]]


@pytest.fixture(scope="module")
def client(digits):
    with triton.InferenceServerClient(digits.url.removeprefix("http://"), concurrency=16) as client:
        yield client


@pytest.fixture(scope="module")
def keras_digits():
    """The demo model in this process: what every protocol's answer must equal."""
    import keras  # noqa: PLC0415

    return keras.models.load_model(DEMO_MODEL, compile=False)


def predict_scores(url: str, png: bytes) -> np.ndarray:
    """/predict's scores for one image, in class order."""
    response = requests.post(f"{url}/predict", files={"image": ("d.png", png)}, params={"top_k": 10})
    assert response.status_code == 200, response.text
    scores = np.zeros(10, dtype=np.float32)
    for entry in response.json()["predictions"]:
        scores[entry["index"]] = entry["score"]
    return scores


def test_health_and_metadata_through_tritonclient(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "kerasrv" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 32, 32, 1]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    with pytest.raises(InferenceServerException, match="no model named"):
        client.get_model_metadata("nope")


def test_binary_fp32_and_bytes_images_equal_predict(digits, client, pngs):
    tensors = np.stack([to_model_input(png) for png in pngs[:4]])
    fp32 = triton.InferInput("image", list(tensors.shape), "FP32")
    fp32.set_data_from_numpy(tensors, binary_data=True)
    result = client.infer(MODEL, [fp32], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)],
                          request_id="req-7")
    assert result.get_response()["id"] == "req-7" and result.get_response()["model_version"] == "1"
    from_tensors = result.as_numpy("probabilities")

    images = np.array([[png] for png in pngs[:4]], dtype=object)
    encoded = triton.InferInput("image", [4, 1], "BYTES")
    encoded.set_data_from_numpy(images, binary_data=True)
    from_images = client.infer(MODEL, [encoded]).as_numpy("probabilities")  # all outputs, binary by default

    json_input = triton.InferInput("image", list(tensors.shape), "FP32")
    json_input.set_data_from_numpy(tensors, binary_data=False)
    as_json = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    from_json = client.infer(MODEL, [json_input], outputs=as_json).as_numpy("probabilities")

    expected = np.stack([predict_scores(digits.url, png) for png in pngs[:4]])
    for got in (from_tensors, from_images, from_json):
        assert got.shape == (4, 10)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_requests_in_flight_with_async_infer(client, pngs, keras_digits):
    tensors = np.stack([to_model_input(png) for png in pngs])
    pending = []
    for row in tensors:
        one = triton.InferInput("image", [1, 32, 32, 1], "FP32")
        one.set_data_from_numpy(row[None], binary_data=True)
        pending.append(client.async_infer(MODEL, [one]))
    got = np.concatenate([p.get_result(timeout=60).as_numpy("probabilities") for p in pending])
    np.testing.assert_allclose(got, keras_digits.predict(tensors, verbose=0), atol=1e-5)


def test_classification_extension_gives_labelled_top_k(client, pngs):
    labels = heldout_split()[3]
    images = triton.InferInput("image", [2, 1], "BYTES")
    images.set_data_from_numpy(np.array([[pngs[0]], [pngs[1]]], dtype=object))
    top = client.infer(MODEL, [images], outputs=[triton.InferRequestedOutput("probabilities", class_count=3)])
    rows = top.as_numpy("probabilities")
    assert rows.shape == (2, 3)
    for row, label in zip(rows, labels[:2]):
        score, index, name = row[0].decode().split(":")
        assert index == name == str(label) and float(score) > 0.5


def test_tf_serving_rows_columns_b64_and_named_inputs(digits, pngs, keras_digits):
    url = f"{digits.url}/v1/models/{MODEL}"
    tensors = np.stack([to_model_input(png) for png in pngs[:3]])
    expected = keras_digits.predict(tensors, verbose=0)
    rows = requests.post(f"{url}:predict", json={"instances": tensors.tolist()})
    columns = requests.post(f"{url}/versions/1:predict", json={"inputs": tensors.tolist()})
    named_rows = requests.post(f"{url}:predict", json={"instances": [{"image": t} for t in tensors.tolist()]})
    named_columns = requests.post(f"{url}:predict", json={"signature_name": "serving_default",
                                                         "inputs": {"image": tensors.tolist()}})
    b64 = requests.post(f"{url}:predict",
                        json={"instances": [{"b64": base64.b64encode(png).decode()} for png in pngs[:3]]})
    for response, key in ((rows, "predictions"), (columns, "outputs"), (named_rows, "predictions"),
                          (named_columns, "outputs"), (b64, "predictions")):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.array(response.json()[key]), expected, atol=1e-5)
    status = requests.get(url).json()
    assert status["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    assert status["ready"] is True and requests.get(f"{digits.url}/v1/models").json() == {"models": [MODEL]}
    signature = requests.get(f"{url}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    image = signature["serving_default"]["inputs"]["image"]
    assert image["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "32", "32", "1"]


def v2_input(**fields) -> dict:
    """A v2 inference request for the digits model with one input."""
    return {"json": {"inputs": [{"name": "image", "shape": [1, 32, 32, 1], "datatype": "FP32", **fields}]}}


V1 = "/v1/models/digits"
V2 = "/v2/models/digits/infer"


@pytest.mark.parametrize(("call", "expected"), [
    (("post", "/v1/models/nope:predict", {"json": {"instances": [[0]]}}), (404, "model_not_found")),
    (("post", f"{V1}/versions/9:predict", {"json": {"instances": [[0]]}}), (404, "version_not_found")),
    (("post", f"{V1}:predict", {"json": {"instances": [[1, 2]]}}), (400, "invalid_shape")),
    (("post", f"{V1}:predict", {"json": {"instances": [], "inputs": []}}), (400, "missing_input")),
    (("post", f"{V1}:predict", {"json": {"signature_name": "x", "instances": [[0]]}}), (400, "unknown_signature")),
    (("post", f"{V1}:predict", {"data": b"[" * 100_000}), (400, "invalid_json")),
    (("post", V2, v2_input(shape=[1, 2], data=[1, 2])), (400, "invalid_shape")),
    (("post", V2, v2_input(name="x", data=[1])), (400, "unknown_input")),
    (("post", V2, v2_input(datatype="FP8", data=[1])), (400, "invalid_datatype")),
    (("post", V2, v2_input(data=["a"] * 1024)), (400, "invalid_value")),
    (("post", V2, {"data": b'{"inputs": []}', "headers": {"Inference-Header-Content-Length": "999"}}),
     (400, "invalid_binary")),
    (("post", V2, v2_input(parameters={"binary_data_size": 4096})), (400, "invalid_binary")),
    (("get", "/v2/models/digits/versions/2", {}), (404, "version_not_found")),
])
def test_protocol_errors_are_json_with_the_peers_status(digits, call, expected):
    (method, path, kwargs), (status, code) = call, expected
    response = getattr(requests, method)(f"{digits.url}{path}", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and isinstance(body["error"], str) and body["error"]


def test_binary_header_and_data_are_checked_together(digits, pngs):
    """A hand-made binary request: the framing tritonclient uses, built byte by byte."""
    tensor = to_model_input(pngs[0])[None].astype("<f4")
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 32, 32, 1], "datatype": "FP32",
                                     "parameters": {"binary_data_size": tensor.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    response = requests.post(f"{digits.url}/v2/models/{MODEL}/infer", data=header + tensor.tobytes(),
                             headers={"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    split = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:split])
    (output,) = answer["outputs"]
    assert output["parameters"]["binary_data_size"] == 40 and output["shape"] == [1, 10]
    scores = np.frombuffer(response.content[split:], dtype="<f4")
    np.testing.assert_allclose(scores, predict_scores(digits.url, pngs[0]), atol=1e-5)
    extra = requests.post(f"{digits.url}/v2/models/{MODEL}/infer", data=header + tensor.tobytes() + b"x",
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert extra.status_code == 400 and extra.json()["code"] == "invalid_binary"
