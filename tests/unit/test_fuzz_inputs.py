"""Hypothesis against every parser behind the HTTP routes (a fake backend, no TensorFlow): raw and
multipart /predict bodies, JSON of every protocol, the v2 binary framing, query parameters, and
image bytes of every format Pillow writes, random and mutated. Whatever arrives, the answer is a
200 or a 4xx JSON error with a stable code: never a 5xx, never an answer that is not JSON."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app import create_app
from app.config import Settings
from tests.doubles import TENSOR_SPEC, FakeBackend

FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=list(HealthCheck), derandomize=True,
                database=None)
ROUTES = ["/predict", "/v1/models/digits:predict", "/v1/models/digits/versions/1:predict",
          "/v2/models/digits/infer", "/v2/models/digits/versions/1/infer"]
CONTENT_TYPES = [None, "application/json", "image/png", "image/jpeg", "application/octet-stream", "text/plain",
                 "multipart/form-data; boundary=xyz", "multipart/form-data", "application/x-www-form-urlencoded"]


@pytest.fixture(scope="module", params=["image", "tensor"])
def client(request):
    backend = FakeBackend() if request.param == "image" else FakeBackend(TENSOR_SPEC)
    return create_app(Settings(model_name="digits"), backend=backend).test_client()


def assert_answered(response) -> None:
    """A 200, or a 4xx whose body is our JSON error."""
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        body = response.get_json(silent=True)
        assert isinstance(body, dict), response.get_data()[:200]
        assert isinstance(body.get("error"), str) and isinstance(body.get("code"), str), body


def formats() -> dict[str, bytes]:
    """A small picture in every format Pillow can write in RGB (or grey, for those that need it)."""
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.init()  # registers every plugin: Image.SAVE is empty before
    written = {}
    for name in sorted(Image.SAVE):
        for mode in ("RGB", "L", "1"):
            buffer = io.BytesIO()
            try:
                Image.fromarray(pixels).convert(mode).save(buffer, format=name)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            written[name] = buffer.getvalue()
            break
    return written


IMAGES = formats()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
# shapes near the valid ones, so the parsers past the first checks are reached too
near_valid = st.fixed_dictionaries({}, optional={
    "instances": st.lists(json_values | st.lists(st.floats(allow_nan=False), max_size=6), max_size=4),
    "inputs": json_values | st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["pixels", "features", "x", ""]),
        "shape": st.lists(st.integers(-2, 70), max_size=4),
        "datatype": st.sampled_from(["FP32", "UINT8", "BYTES", "INT64", "BOOL", "FP16", "nope"]),
        "data": json_values,
    }, optional={"parameters": json_values}), max_size=3),
    "outputs": json_values,
    "images": st.lists(st.text(max_size=30), max_size=3),
    "image": json_values,
    "signature_name": json_values,
    "parameters": json_values,
    "id": json_values,
})


@FUZZ
@given(route=st.sampled_from(ROUTES), body=st.binary(max_size=2000), content_type=st.sampled_from(CONTENT_TYPES))
def test_any_bytes_to_any_route(client, route, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    assert_answered(client.post(route, data=body, headers=headers))


@FUZZ
@given(route=st.sampled_from(ROUTES), body=json_values | near_valid)
def test_any_json_to_any_route(client, route, body):
    assert_answered(client.post(route, data=json.dumps(body), content_type="application/json"))


@FUZZ
@given(header=json_values | near_valid, tail=st.binary(max_size=300),
       # a header value cannot hold a line break: no HTTP client sends one (Werkzeug's test client refuses)
       length=st.one_of(st.none(), st.integers(-5, 5000), st.text(st.characters(exclude_characters="\r\n"),
                                                                  max_size=8)))
def test_v2_binary_framing(client, header, tail, length):
    head = json.dumps(header).encode()
    declared = str(len(head)) if length is None else str(length)
    response = client.post("/v2/models/digits/infer", data=head + tail,
                           headers={"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": declared})
    assert_answered(response)


@FUZZ
@given(top_k=st.text(max_size=12), fmt=st.sampled_from(sorted(IMAGES)))
def test_query_parameters(client, top_k, fmt):
    assert_answered(client.post("/predict", query_string={"top_k": top_k}, data=IMAGES[fmt],
                                content_type="application/octet-stream"))


@FUZZ
@given(fmt=st.sampled_from(sorted(IMAGES)), data=st.data())
def test_mutated_images_of_every_format(client, fmt, data):
    """Flipped bytes, cuts and insertions in a real image of each format: a decoder's edge cases."""
    image = bytearray(IMAGES[fmt])
    for _ in range(data.draw(st.integers(1, 6))):
        where = data.draw(st.integers(0, len(image) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            image[where] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del image[where:]
            if not image:
                image = bytearray(b"\x00")
        else:
            image[where:where] = data.draw(st.binary(min_size=1, max_size=16))
    raw = client.post("/predict", data=bytes(image), content_type="application/octet-stream")
    assert_answered(raw)
    multipart = client.post("/predict", data={"image": (io.BytesIO(bytes(image)), "x")},
                            content_type="multipart/form-data")
    assert_answered(multipart)


def test_every_format_pillow_writes_is_taken_whole(client):
    """The unmutated pictures: a 200 for an image model, or a 4xx for the tensor model."""
    assert len(IMAGES) >= 8, sorted(IMAGES)
    for fmt, image in IMAGES.items():
        response = client.post("/predict", data=image, content_type="application/octet-stream")
        assert_answered(response)
        if client.application.extensions["kerasrv.backend"].spec.is_image:
            assert response.status_code in (200, 415), (fmt, response.get_data(as_text=True))


@FUZZ
@given(fields=st.lists(st.tuples(st.sampled_from(["image", "images", "file", ""]), st.binary(max_size=200)),
                       max_size=4))
def test_multipart_fields(client, fields):
    data = {}
    for name, content in fields:
        data.setdefault(name or "x", []).append((io.BytesIO(content), "f"))
    assert_answered(client.post("/predict", data=data, content_type="multipart/form-data"))


def test_the_binary_tail_struct_is_what_tritonclient_sends(client):
    """A correct BYTES element through the framing the fuzz test mangles: answered 200 or 4xx."""
    png = IMAGES["PNG"]
    head = json.dumps({"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 4 + len(png)}}]}).encode()
    response = client.post("/v2/models/digits/infer", data=head + struct.pack("<I", len(png)) + png,
                           headers={"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(len(head))})
    assert_answered(response)
