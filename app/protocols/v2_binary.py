"""The v2 protocol's tensors: datatypes, JSON `data` and the binary tensor extension (Triton's).

With the extension, a body is a JSON header of `Inference-Header-Content-Length` bytes followed
by raw little-endian tensors, in the order of the inputs that declare `binary_data_size`. A BYTES
element is a 4-byte little-endian length and its bytes. Answers use the same framing.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from app.errors import ApiError

HEADER = "Inference-Header-Content-Length"

# v2 datatype <-> numpy dtype name (BYTES: numpy objects holding bytes)
DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
    "FP32": "float32", "FP64": "float64", "BYTES": "bytes",
}
BY_DTYPE = {dtype: datatype for datatype, dtype in DATATYPES.items()}
# the same keyed by numpy's dtype objects: looking up `array.dtype` is cheaper than its name
_BY_NUMPY = {np.dtype(object if dtype == "bytes" else dtype): datatype for datatype, dtype in DATATYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of an output array (numpy objects holding bytes are BYTES)."""
    return _BY_NUMPY[array.dtype]


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it (empty without the extension)."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise ApiError(400, "invalid_binary",
                       f"{HEADER} is {header_length!r}, but the body has {len(body)} bytes")
    split = int(header_length)
    return body[:split], memoryview(body)[split:]


def shape_of(entry: dict, where: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ApiError(400, "invalid_shape", f"{where}: 'shape' must be a list of non-negative integers")
    if not shape:
        raise ApiError(400, "invalid_shape", f"{where}: 'shape' needs a batch dimension")
    return tuple(shape)


def decode(entry: dict, binary: memoryview, offset: int, where: str) -> tuple[np.ndarray, int]:
    """One input's tensor from its JSON `data` or from the binary data at `offset`; returns the
    array (shaped as declared) and the offset of the next binary tensor."""
    datatype = entry.get("datatype")
    if datatype not in DATATYPES:
        raise ApiError(400, "invalid_datatype", f"{where}: datatype {datatype!r} is not one of {sorted(DATATYPES)}")
    shape = shape_of(entry, where)
    count = math.prod(shape)
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "invalid_json", f"{where}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise ApiError(400, "invalid_binary", f"{where}: binary_data_size {size!r} runs past the body")
        chunk = binary[offset : offset + size]
        values = _bytes_elements(chunk, where) if datatype == "BYTES" else _raw(chunk, datatype, count, where)
        offset += size
    elif "data" in entry:
        values = _json_elements(entry["data"], datatype, where)
    else:
        raise ApiError(400, "missing_input", f"{where}: no 'data' and no binary_data_size")
    if len(values) != count:
        raise ApiError(400, "invalid_shape", f"{where}: shape {list(shape)} needs {count} values, got {len(values)}")
    return values.reshape(shape), offset


def _raw(chunk: memoryview, datatype: str, count: int, where: str) -> np.ndarray:
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    needed = count * dtype.itemsize
    if len(chunk) != needed:
        raise ApiError(400, "invalid_binary",
                       f"{where}: {len(chunk)} bytes of binary data; {count} {datatype} values need {needed}")
    return np.frombuffer(chunk, dtype=dtype).astype(dtype.newbyteorder("="))


def _bytes_elements(chunk: memoryview, where: str) -> np.ndarray:
    values, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise ApiError(400, "invalid_binary", f"{where}: a BYTES element's length is cut short")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise ApiError(400, "invalid_binary", f"{where}: a BYTES element runs past its tensor")
        values.append(bytes(chunk[offset : offset + length]))
        offset += length
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _json_elements(data: object, datatype: str, where: str) -> np.ndarray:
    """`data`, flat or nested row-major, as a flat array (numbers stay loose: checked against the
    model's input later)."""
    if not isinstance(data, list):
        data = [data]
    flat: list = []
    stack = [iter(data)]
    while stack:  # flattened without recursion, so no nesting depth can exhaust the stack
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise ApiError(400, "invalid_value", f"{where}: BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [v.encode() for v in flat]
        return array
    kind = "bool" if datatype == "BOOL" else "number"
    ok = (lambda v: isinstance(v, bool)) if kind == "bool" else (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    if not all(ok(v) for v in flat):
        raise ApiError(400, "invalid_value", f"{where}: {datatype} data must be {kind}s")
    try:
        return np.asarray(flat, dtype=np.float64 if any(isinstance(v, float) for v in flat) else None)
    except OverflowError:
        raise ApiError(400, "invalid_value", f"{where}: a value is out of range for {datatype}") from None


def encode(array: np.ndarray) -> bytes:
    """An output tensor as binary data (row-major, little-endian; BYTES length-prefixed)."""
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
