"""Read what a client sent to /predict: image bytes (multipart, raw body, base64 JSON) or tensors.

Only parsing and validation against the model's input; decoding lives in images.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request

from app.errors import ApiError
from app.serving import check_count, json_body
from app.tensors import b64

RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass
class Inputs:
    """Encoded `images`, or none when the client sent JSON instances; `plural` if it sent a list."""

    images: list[bytes] | None = None
    plural: bool = False


def parse_inputs(request: Request) -> tuple[Inputs, object]:
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
        check_count(len(inputs.images))
        return inputs, None
    if in_body(content_type):
        return body_inputs(content_type, request.get_data(cache=False))
    if not content_type and not request.content_length:
        raise ApiError(
            400, "missing_input",
            "no input: send multipart field 'image', a raw image body, or JSON"
            " {'image': base64} / {'images': [...]} / {'instances': [...]}",
        )
    raise ApiError(
        415, "unsupported_media_type",
        f"Content-Type {content_type or '(none)'} is not accepted; use multipart/form-data,"
        " image/*, or application/json",
    )


def in_body(content_type: str) -> bool:
    """Whether inputs of this (lowercased, parameter-free) type are the whole body: an image or JSON."""
    return (content_type.startswith(RAW_IMAGE_TYPES) or content_type == "application/json"
            or content_type.endswith("+json"))


def body_inputs(content_type: str, body: bytes) -> tuple[Inputs, object]:
    """parse_inputs for a body of a type `in_body` takes; app.fast_lane calls it without Flask."""
    if content_type.startswith(RAW_IMAGE_TYPES):
        if not body:
            raise ApiError(400, "empty_body", "the request body is empty; send the image bytes")
        inputs, raw_instances = Inputs(images=[body]), None
    else:
        inputs, raw_instances = _parse_json(body)
    check_count(len(inputs.images) if raw_instances is None else len(raw_instances))
    return inputs, raw_instances


def _parse_json(data: bytes) -> tuple[Inputs, object]:
    body = json_body(data)
    if "instances" in body:
        if not isinstance(body["instances"], list):
            raise ApiError(400, "invalid_json", "'instances' must be a list, one entry per input")
        return Inputs(plural=True), body["instances"]
    if "image" in body:
        return Inputs(images=[b64(body["image"], "image")]), None
    if "images" in body:
        images = body["images"]
        if not isinstance(images, list):
            raise ApiError(400, "invalid_json", "'images' must be a list of base64 strings")
        return Inputs(images=[b64(v, f"images[{i}]") for i, v in enumerate(images)], plural=True), None
    raise ApiError(
        400, "missing_input",
        f"the JSON body needs 'image', 'images' or 'instances'; got keys {sorted(body)}",
    )
