"""What a worker must know about the model to prepare inputs and read outputs, without TensorFlow.

The process that loads the model (the mule, or the worker itself in worker mode) builds a
ModelSpec; in mule mode it travels to the workers as JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

BYTES = "bytes"  # the dtype name of a string tensor (tf.string); held in numpy as objects

VARIABLE = -1  # a dimension whose size each request chooses (keras.Input((None,)))

Batch = list[np.ndarray]  # one array per model input (or output), in the spec's order, rows first


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # without the batch dimension; VARIABLE where each request chooses
    dtype: str  # a numpy dtype name, or BYTES

    @property
    def is_bytes(self) -> bool:
        return self.dtype == BYTES

    @property
    def is_variable(self) -> bool:
        return VARIABLE in self.shape

    def concrete(self, dims: list[int]) -> tuple[int, ...]:
        """The shape with its variable dimensions taken, in order, off the front of `dims`."""
        return tuple(dims.pop(0) if d == VARIABLE else d for d in self.shape)

    def matches(self, shape: tuple[int, ...]) -> bool:
        """Whether a row shaped `shape` fits: equal sizes, any size where the model allows any."""
        return len(shape) == len(self.shape) and all(want in (VARIABLE, got) for want, got in zip(self.shape, shape))

    def row_bytes(self, string_bytes: int, shape: tuple[int, ...] | None = None) -> int:
        """Shared-memory bytes one row (of `shape`, for a variable tensor) takes; a string value
        takes its length (4 bytes) plus room for `string_bytes` bytes."""
        elements = math.prod(shape or self.shape)
        if self.is_bytes:
            return elements * (4 + string_bytes)
        return elements * np.dtype(self.dtype).itemsize

    def empty(self, rows: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """`rows` rows of zeros (or empty strings): padding the model can always take."""
        full = (rows, *(shape or self.shape))
        if self.is_bytes:
            return np.full(full, b"", dtype=object)
        return np.zeros(full, dtype=self.dtype)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...] | None = None
    preprocess: str = "unit"
    version: int = 1  # the model version these tensors belong to (app/inference/versions.py)

    @property
    def is_variable(self) -> bool:
        """Some input or output has a size each request chooses: rows are batched by shape."""
        return any(t.is_variable for t in (*self.inputs, *self.outputs))

    def input_shapes(self, dims: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Each input's row shape, given the sizes of all their variable dimensions in order."""
        rest = list(dims)
        return [t.concrete(rest) for t in self.inputs]

    def output_shapes(self, dims: tuple[int, ...]) -> list[tuple[int, ...]]:
        rest = list(dims)
        return [t.concrete(rest) for t in self.outputs]

    @staticmethod
    def variable_dims(tensors: tuple[TensorSpec, ...], arrays: Batch) -> tuple[int, ...]:
        """The sizes the arrays give to the tensors' variable dimensions, in order."""
        return tuple(size for t, a in zip(tensors, arrays) for want, size in zip(t.shape, a.shape[1:])
                     if want == VARIABLE)

    @property
    def input(self) -> TensorSpec | None:
        """The input of a single-input model (what /predict's images and plain instances fill)."""
        return self.inputs[0] if len(self.inputs) == 1 else None

    @property
    def is_image(self) -> bool:
        """One input, height x width x channels with 1, 3 or 4 channels, numeric: it takes pictures."""
        single = self.input
        if single is None or single.is_bytes or single.is_variable:
            return False
        shape = single.shape
        return len(shape) == 3 and shape[2] in (1, 3, 4)

    @property
    def is_classifier(self) -> bool:
        """One output vector per input: answered as top-k classes."""
        return len(self.outputs) == 1 and len(self.outputs[0].shape) == 1 and not self.outputs[0].is_bytes

    def input_named(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        def tensor(d: dict) -> TensorSpec:
            return TensorSpec(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"])

        labels = data.get("labels")
        return cls(
            name=data["name"],
            inputs=tuple(tensor(t) for t in data["inputs"]),
            outputs=tuple(tensor(o) for o in data["outputs"]),
            labels=tuple(labels) if labels is not None else None,
            preprocess=data.get("preprocess", "unit"),
            version=data.get("version", 1),
        )
