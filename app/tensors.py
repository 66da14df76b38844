"""Turn what a client sent (JSON values, base64, encoded images) into the model's input arrays,
and output arrays back into JSON. Shared by /predict, TF Serving v1 and the v2 protocol, so a
value is checked the same way whichever door it came through.

Every mistake becomes an ApiError 422 with a stable code; the protocol blueprints re-map the
status where their peers use 400.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from app.config import Settings
from app.errors import ApiError
from app.images import decode_image
from app.inference.spec import VARIABLE, Batch, ModelSpec, TensorSpec
from app.preprocess import normalize


def to_array(values: object, tensor: TensorSpec, settings: Settings, where: str) -> np.ndarray:
    """JSON values (nested lists, rows first) as an array for `tensor`, or a 422 that says why."""
    if tensor.is_bytes:
        array = _string_array(values, where, settings.max_string_bytes)
    else:
        array = _numeric_array(values, tensor, where)
    check_shape(array, tensor, where)
    return array


def check_shape(array: np.ndarray, tensor: TensorSpec, where: str) -> None:
    """Rows shaped as the input, any size (at least 1) where the model lets each request choose."""
    if array.ndim == 0 or not tensor.matches(array.shape[1:]) or 0 in array.shape[1:]:
        got = list(array.shape[1:]) if array.ndim else "a single value"
        wanted = ["any" if d == VARIABLE else d for d in tensor.shape]
        raise ApiError(422, "invalid_shape",
                       f"{where}: each row has shape {got}; the model's input {tensor.name!r} takes {wanted}")


def _numeric_array(values: object, tensor: TensorSpec, where: str) -> np.ndarray:
    dtype = np.dtype(tensor.dtype)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are refused below
            loose = np.asarray(values)
            if loose.dtype.kind not in "biuf":
                raise TypeError
            if dtype.kind in "iu" and loose.dtype.kind == "f":
                if not np.array_equal(loose, np.trunc(loose)):
                    raise ApiError(422, "invalid_value", f"{where}: {tensor.name!r} takes integers ({dtype.name})")
                if np.isfinite(loose).all():
                    loose = loose.astype(np.int64)  # then checked against the dtype's range below
            if dtype.kind in "iu" and loose.dtype.kind in "iu":
                info = np.iinfo(dtype)
                if loose.size and (loose.min() < info.min or loose.max() > info.max):
                    raise ApiError(422, "invalid_value", f"{where}: values out of range for {dtype.name}")
            array = loose.astype(dtype)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(
            422, "invalid_shape",
            f"{where}: {tensor.name!r} takes numbers ({dtype.name}) shaped {list(tensor.shape)} per row",
        ) from None
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise ApiError(422, "invalid_value", f"{where}: NaN, infinity or values too large for {dtype.name}")
    return array


def _string_array(values: object, where: str, max_bytes: int) -> np.ndarray:
    """Strings (UTF-8) or {"b64": ...} values, as an object array of bytes."""
    try:
        array = np.array(values, dtype=object)
    except ValueError:
        array = None  # ragged nesting
    if array is None or any(isinstance(v, list) for v in array.reshape(-1)):
        raise ApiError(422, "invalid_shape", f"{where}: rows of strings must all have the same shape")
    flat = array.reshape(-1)
    for i, value in enumerate(flat):
        flat[i] = text_or_b64(value, where)
        if len(flat[i]) > max_bytes:
            raise ApiError(
                413, "string_too_long",
                f"{where}: a value of {len(flat[i])} bytes; the limit is {max_bytes} (MAX_STRING_BYTES)",
            )
    return array


def text_or_b64(value: object, where: str) -> bytes:
    """A JSON string as UTF-8 bytes, or TF Serving's {"b64": "..."} as the bytes it encodes."""
    if _is_b64(value):
        return b64(value, where)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):  # from the v2 binary extension
        return value
    raise ApiError(422, "invalid_value", f"{where}: expected a string or {{\"b64\": ...}}")


def b64(value: object, where: str) -> bytes:
    """Base64 text, TF Serving's {"b64": ...} or a browser's data: URL, as the bytes it encodes."""
    if _is_b64(value):
        value = value["b64"]
    if not isinstance(value, str):
        raise ApiError(400, "invalid_base64", f"{where} must be a base64 string")
    if value.startswith("data:") and "," in value:  # a data: URL from a browser
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"{where} is not valid base64") from None


def images_to_array(images: list[bytes], spec: ModelSpec, settings: Settings) -> np.ndarray:
    """Decode and preprocess encoded images (JPEG, PNG, ...) into the image model's input rows."""
    if not spec.is_image:
        shapes = ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in spec.inputs)
        raise ApiError(
            422, "not_an_image_model", f"model {spec.name} takes tensors ({shapes}), not encoded images",
        )
    tensor = spec.input
    height, width, channels = tensor.shape
    rows = np.empty((len(images), height, width, channels), dtype=tensor.dtype)
    for i, data in enumerate(images):
        pixels = decode_image(data, (height, width), channels, settings.max_image_pixels, settings.resize_mode)
        normalize(pixels, spec.preprocess, tensor.dtype, out=rows[i])
    return rows


def rows_to_inputs(instances: list, spec: ModelSpec, settings: Settings) -> Batch:
    """TF Serving's row format: one entry per row, a value or {input name: value} per row."""
    if not instances:
        raise ApiError(400, "missing_input", "'instances' is empty")
    named = all(isinstance(row, dict) and not _is_b64(row) for row in instances)
    if len(spec.inputs) > 1 and not named:
        raise ApiError(
            422, "missing_input",
            f"model {spec.name} has inputs {[t.name for t in spec.inputs]}: each instance must be"
            " an object with one value per input",
        )
    if named:
        columns = {}
        for tensor in spec.inputs:
            if not all(tensor.name in row for row in instances):
                raise ApiError(422, "missing_input", f"every instance needs the input {tensor.name!r}")
            columns[tensor.name] = [row[tensor.name] for row in instances]
        return columns_to_inputs(columns, spec, settings, where="instances")
    return columns_to_inputs(instances, spec, settings, where="instances")


def columns_to_inputs(columns: object, spec: ModelSpec, settings: Settings, where: str = "inputs") -> Batch:
    """TF Serving's columnar format: all rows of one input, or {input name: rows}."""
    if isinstance(columns, dict) and not _is_b64(columns):
        unknown = sorted(set(columns) - {t.name for t in spec.inputs})
        if unknown:
            raise ApiError(422, "unknown_input", f"{where}: no model input named {unknown[0]!r}")
        missing = [t.name for t in spec.inputs if t.name not in columns]
        if missing:
            raise ApiError(422, "missing_input", f"{where}: the model's input {missing[0]!r} is missing")
        arrays = [input_array(columns[t.name], t, spec, settings, f"{where}.{t.name}") for t in spec.inputs]
    elif len(spec.inputs) == 1:
        arrays = [input_array(columns, spec.input, spec, settings, where)]
    else:
        raise ApiError(422, "missing_input", f"{where}: name each of the inputs {[t.name for t in spec.inputs]}")
    if len({len(a) for a in arrays}) > 1:
        raise ApiError(422, "invalid_shape", f"{where}: the inputs have different numbers of rows")
    return arrays


def input_array(values: object, tensor: TensorSpec, spec: ModelSpec, settings: Settings, where: str) -> np.ndarray:
    """One input's rows; for an image model, rows of {"b64": ...} are encoded images."""
    if spec.is_image and isinstance(values, list) and values and all(_is_b64(v) for v in values):
        images = [b64(v, f"{where}[{i}]") for i, v in enumerate(values)]
        return images_to_array(images, spec, settings)
    if not isinstance(values, list) or not values:
        raise ApiError(422, "invalid_shape", f"{where}: expected a non-empty list of rows")
    return to_array(values, tensor, settings, where)


def _is_b64(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def to_json(array: np.ndarray) -> list:
    """An output as nested lists; strings as UTF-8 text, or {"b64": ...} when they are not text."""
    if array.dtype != object:
        return array.tolist()
    return np.vectorize(_string_json, otypes=[object])(array).tolist()


def _string_json(value: bytes) -> object:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}
