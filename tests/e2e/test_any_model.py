"""Models that are not one image tensor, served for real: two named inputs with two heads, a
text classifier (strings in, through TextVectorization) and a tagger whose lengths each request
chooses. Every protocol reaches them, their requests share batches in the one mule (rows of
different lengths in separate batches), and answers equal the model's own in this process.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.http as triton

from tests.models import REVIEWS
from tools.local_server import LocalServer, wait_for

ROWS = 8


@pytest.fixture(scope="module")
def two_inputs(two_input_model, module_server):
    path, model = two_input_model
    # BATCH_AUTOTUNE=off: the batch limit is MAX_BATCH_SIZE, so 8 queued requests make one batch
    return module_server({"MODEL_PATH": str(path), "BATCH_AUTOTUNE": "off"}, name="two-inputs"), model


@pytest.fixture(scope="module")
def reviews(text_model, module_server):
    path, model = text_model
    return module_server({"MODEL_PATH": str(path), "BATCH_AUTOTUNE": "off"}, name="reviews"), model


@pytest.fixture(scope="module")
def module_server():
    """Servers kept for the whole module (conftest's start_server is per test); each must stop cleanly."""
    servers = []

    def start(env, name):
        server = LocalServer(env, name=name).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.stop() == 0, server.log()


def two_input_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 3), dtype=np.float32), rng.integers(0, 9, (n, 2)).astype(np.int32)


def expected_two(model, features, counts) -> tuple[np.ndarray, np.ndarray]:
    score, embedding = model({"features": features, "counts": counts}, training=False)
    return np.asarray(score), np.asarray(embedding)


def v1(url, model_name, body):
    response = requests.post(f"{url}/v1/models/{model_name}:predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def test_two_inputs_two_heads_through_every_protocol(two_inputs):
    server, model = two_inputs
    name = "two_in_two_out"
    features, counts = two_input_rows(3)
    score, embedding = expected_two(model, features, counts)

    meta = requests.get(f"{server.url}/v2/models/{name}").json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 3]},
                              {"name": "counts", "datatype": "INT32", "shape": [-1, 2]}]
    assert [o["name"] for o in meta["outputs"]] == ["score", "embedding"]

    rows = v1(server.url, name, {"instances": [{"features": f, "counts": c}
                                               for f, c in zip(features.tolist(), counts.tolist())]})
    predictions = rows.json()["predictions"]
    np.testing.assert_allclose([p["score"] for p in predictions], score, atol=1e-5)
    np.testing.assert_allclose([p["embedding"] for p in predictions], embedding, atol=1e-5)
    columns = v1(server.url, name, {"inputs": {"features": features.tolist(), "counts": counts.tolist()}})
    np.testing.assert_allclose(columns.json()["outputs"]["embedding"], embedding, atol=1e-5)
    legacy = requests.post(f"{server.url}/predict", json={"instances": [{"features": f, "counts": c}
                                                                        for f, c in zip(features.tolist(),
                                                                                        counts.tolist())]})
    np.testing.assert_allclose([p["score"] for p in legacy.json()["predictions"]], score, atol=1e-5)

    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        for binary in (False, True):
            a = triton.InferInput("features", [3, 3], "FP32")
            a.set_data_from_numpy(features, binary_data=binary)
            b = triton.InferInput("counts", [3, 2], "INT32")
            b.set_data_from_numpy(counts, binary_data=binary)
            only = [triton.InferRequestedOutput("embedding", binary_data=binary)]
            result = client.infer(name, [b, a], outputs=only)  # inputs in any order, by name
            np.testing.assert_allclose(result.as_numpy("embedding"), embedding, atol=1e-5)
            assert result.as_numpy("score") is None  # only the requested output comes back


def test_a_text_classifier_through_every_protocol(reviews):
    server, model = reviews
    name = "reviews"
    import tensorflow as tf  # noqa: PLC0415

    texts = ["a great film", "boring and awful plot", "naïve but great"]
    expected = model(tf.constant([[t] for t in texts]), training=False).numpy()
    meta = requests.get(f"{server.url}/v2/models/{name}").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    rows = v1(server.url, name, {"instances": [[t] for t in texts]})
    np.testing.assert_allclose(rows.json()["predictions"], expected, atol=1e-5)
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        for binary in (False, True):
            text = triton.InferInput("text", [3, 1], "BYTES")
            text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object), binary_data=binary)
            got = client.infer(name, [text]).as_numpy("sentiment")
            np.testing.assert_allclose(got, expected, atol=1e-5)
    too_long = requests.post(f"{server.url}/v1/models/{name}:predict", json={"instances": [["x" * 5000]]})
    assert too_long.status_code == 413 and too_long.json()["code"] == "string_too_long"


def _mixed_requests(url: str, name: str, bodies: list) -> list[requests.Response]:
    """Send each body at once, alternating the protocols."""
    def send(i):
        kind, body = bodies[i]
        path = f"/v1/models/{name}:predict" if kind == "v1" else f"/v2/models/{name}/infer"
        return requests.post(f"{url}{path}", json=body, timeout=60)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, range(len(bodies))))


@pytest.mark.parametrize("which", ["two_inputs", "reviews"])
def test_protocols_share_one_batch(which, request):
    """Requests queued while the mule is stopped run as one batch, v1 and v2 rows together."""
    server, model = request.getfixturevalue(which)
    name = "two_in_two_out" if which == "two_inputs" else "reviews"
    bodies, expected = [], []
    if which == "two_inputs":
        features, counts = two_input_rows(ROWS, seed=3)
        score, _ = expected_two(model, features, counts)
        for i in range(ROWS):
            if i % 2:
                bodies.append(("v1", {"instances": [{"features": features[i].tolist(), "counts": counts[i].tolist()}]}))
            else:
                bodies.append(("v2", {"inputs": [
                    {"name": "features", "shape": [1, 3], "datatype": "FP32", "data": features[i].tolist()},
                    {"name": "counts", "shape": [1, 2], "datatype": "INT32", "data": counts[i].tolist()}]}))
            expected.append(score[i])
    else:
        import tensorflow as tf  # noqa: PLC0415

        texts = (REVIEWS * 2)[:ROWS]
        probs = model(tf.constant([[t] for t in texts]), training=False).numpy()
        for i, text in enumerate(texts):
            bodies.append(("v1", {"instances": [[text]]}) if i % 2 else
                          ("v2", {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}))
            expected.append(probs[i])
    server.connect_every_thread()
    with ThreadPoolExecutor(1) as runner, server.mule_stopped() as mule:
        future = runner.submit(_mixed_requests, server.url, name, bodies)
        wait_for(lambda: server.requests_waiting(mule) == ROWS, 60, f"{ROWS} requests waiting at the mule")
    responses = future.result(60)
    for (kind, _), response, want in zip(bodies, responses, expected):
        assert response.status_code == 200, response.text
        assert response.headers["X-Batch-Size"] == str(ROWS)
        body = response.json()
        got = body["predictions"][0] if kind == "v1" else body["outputs"][0]["data"]
        if isinstance(got, dict):
            got = got["score"]
        np.testing.assert_allclose(np.ravel(got), np.ravel(want), atol=1e-5)


@pytest.fixture(scope="module")
def tagger(tagger_model, module_server):
    path, model = tagger_model
    return module_server({"MODEL_PATH": str(path)}, name="tagger"), model


def test_rows_of_each_length_share_a_batch_and_lengths_never_mix(tagger):
    server, model = tagger
    meta = requests.get(f"{server.url}/v2/models/tagger").json()
    assert meta["inputs"] == [{"name": "tokens", "datatype": "INT32", "shape": [-1, -1]}]
    assert meta["outputs"] == [{"name": "tags", "datatype": "FP32", "shape": [-1, -1, 3]}]
    rng = np.random.default_rng(4)
    rows = [rng.integers(0, 20, (1, 3 if i % 2 else 7)).astype(np.int32) for i in range(ROWS)]
    bodies = [("v1", {"instances": row.tolist()}) if i % 4 < 2 else
              ("v2", {"inputs": [{"name": "tokens", "shape": list(row.shape), "datatype": "INT32",
                                  "data": row.ravel().tolist()}]}) for i, row in enumerate(rows)]
    server.connect_every_thread()
    with ThreadPoolExecutor(1) as runner, server.mule_stopped() as mule:
        future = runner.submit(_mixed_requests, server.url, "tagger", bodies)
        wait_for(lambda: server.requests_waiting(mule) == ROWS, 60, f"{ROWS} requests waiting at the mule")
    responses = future.result(60)
    for (kind, _), response, row in zip(bodies, responses, rows):
        assert response.status_code == 200, response.text
        assert response.headers["X-Batch-Size"] == str(ROWS // 2)  # one batch per length
        body = response.json()
        got = body["predictions"] if kind == "v1" else np.reshape(body["outputs"][0]["data"],
                                                                  body["outputs"][0]["shape"])
        np.testing.assert_allclose(np.asarray(got), model(row, training=False).numpy(), atol=1e-5)
    empty = requests.post(f"{server.url}/v1/models/tagger:predict", json={"instances": [[]]})
    assert empty.status_code == 400 and empty.json()["code"] == "invalid_shape"
