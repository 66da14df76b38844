"""Read what a client sent to /predict: image bytes (multipart, raw body, base64 JSON) or tensors.

Only parsing and validation against the model's input; decoding lives in images.py.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np
from flask import Request

from app.errors import ApiError
from app.inference.spec import ModelSpec

RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass
class Inputs:
    """Either `images` (encoded bytes) or `instances` (a tensor); `plural` if the client sent a list."""

    images: list[bytes] | None = None
    instances: np.ndarray | None = None
    plural: bool = False

    @property
    def count(self) -> int:
        return len(self.images) if self.images is not None else len(self.instances)


def parse_inputs(request: Request, max_inputs: int) -> tuple[Inputs, object]:
    """Return the inputs and, for JSON instances, the raw list still to check against the model."""
    content_type = (request.mimetype or "").lower()
    if content_type == "multipart/form-data":
        files = request.files.getlist("image")
        if not files:
            fields = sorted(set(request.files) | set(request.form))
            raise ApiError(
                400, "missing_input",
                "expected the image in multipart field 'image'"
                + (f"; got field(s) {', '.join(fields)}" if fields else "; the form is empty"),
            )
        inputs = Inputs(images=[f.read() for f in files], plural=len(files) > 1)
        raw_instances = None
    elif content_type.startswith(RAW_IMAGE_TYPES):
        body = request.get_data(cache=False)
        if not body:
            raise ApiError(400, "empty_body", "the request body is empty; send the image bytes")
        inputs, raw_instances = Inputs(images=[body]), None
    elif content_type == "application/json" or content_type.endswith("+json"):
        inputs, raw_instances = _parse_json(request)
    elif not content_type and not request.content_length:
        raise ApiError(
            400, "missing_input",
            "no input: send multipart field 'image', a raw image body, or JSON"
            " {'image': base64} / {'images': [...]} / {'instances': [...]}",
        )
    else:
        raise ApiError(
            415, "unsupported_media_type",
            f"Content-Type {content_type or '(none)'} is not accepted; use multipart/form-data,"
            " image/*, or application/json",
        )
    count = inputs.count if raw_instances is None else len(raw_instances)
    if count == 0:
        raise ApiError(400, "missing_input", "the request holds no inputs")
    if count > max_inputs:
        raise ApiError(
            413, "too_many_inputs",
            f"{count} inputs in one request; the limit is {max_inputs} (MAX_INPUTS_PER_REQUEST)",
        )
    return inputs, raw_instances


def _parse_json(request: Request) -> tuple[Inputs, object]:
    body = request.get_json(silent=True, cache=False)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body is not a JSON object")
    if "instances" in body:
        if not isinstance(body["instances"], list):
            raise ApiError(400, "invalid_json", "'instances' must be a list, one entry per input")
        return Inputs(plural=True), body["instances"]
    if "image" in body:
        return Inputs(images=[_b64(body["image"], "image")]), None
    if "images" in body:
        images = body["images"]
        if not isinstance(images, list):
            raise ApiError(400, "invalid_json", "'images' must be a list of base64 strings")
        return Inputs(images=[_b64(v, f"images[{i}]") for i, v in enumerate(images)], plural=True), None
    raise ApiError(
        400, "missing_input",
        f"the JSON body needs 'image', 'images' or 'instances'; got keys {sorted(body)}",
    )


def _b64(value: object, where: str) -> bytes:
    if isinstance(value, dict) and "b64" in value:  # TF Serving's binary convention
        value = value["b64"]
    if not isinstance(value, str):
        raise ApiError(400, "invalid_base64", f"{where} must be a base64 string")
    if value.startswith("data:") and "," in value:  # a data: URL from a browser
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"{where} is not valid base64") from None


def instances_to_tensor(raw: list, spec: ModelSpec) -> np.ndarray:
    """Check JSON instances against the model's input shape and dtype; 422 when they do not fit."""
    expected = (len(raw), *spec.input.shape)
    try:
        with np.errstate(over="ignore"):  # values too large for the dtype become inf: refused below
            tensor = np.asarray(raw, dtype=spec.input.dtype)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(
            422, "invalid_shape",
            f"instances must be numbers shaped {list(spec.input.shape)} each"
            f" (model input {spec.input.dtype})",
        ) from None
    if tensor.shape != expected:
        raise ApiError(
            422, "invalid_shape",
            f"instances have shape {list(tensor.shape[1:])}; the model takes {list(spec.input.shape)}",
        )
    if np.issubdtype(tensor.dtype, np.floating) and not np.isfinite(tensor).all():
        raise ApiError(
            422, "invalid_value", f"instances contain NaN, infinity or values too large for {spec.input.dtype}"
        )
    return tensor
