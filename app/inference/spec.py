"""What a worker must know about the model to prepare inputs and read outputs, without TensorFlow.

The process that loads the model (the mule, or the worker itself in worker mode) builds a
ModelSpec; in mule mode it travels to the workers as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # without the batch dimension
    dtype: str  # numpy dtype name

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...] | None = None
    preprocess: str = "unit"

    @property
    def is_image(self) -> bool:
        """Height x width x channels with 1, 3 or 4 channels: the model takes pictures."""
        shape = self.input.shape
        return len(shape) == 3 and shape[2] in (1, 3, 4)

    @property
    def is_classifier(self) -> bool:
        """One output vector per input: answered as top-k classes."""
        return len(self.outputs) == 1 and len(self.outputs[0].shape) == 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        def tensor(d: dict) -> TensorSpec:
            return TensorSpec(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"])

        labels = data.get("labels")
        return cls(
            name=data["name"],
            input=tensor(data["input"]),
            outputs=tuple(tensor(o) for o in data["outputs"]),
            labels=tuple(labels) if labels is not None else None,
            preprocess=data.get("preprocess", "unit"),
        )
