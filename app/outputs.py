"""Shape the model's outputs into the JSON answer: top-k classes for classifiers, raw values otherwise."""

from __future__ import annotations

import numpy as np

from app.inference.spec import ModelSpec
from app.tensors import to_json


def top_k(scores: np.ndarray, k: int, labels: tuple[str, ...] | None) -> list[list[dict]]:
    """The k best classes of each row, best first, as {"label", "index", "score"}."""
    k = min(k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        [
            {"label": labels[i] if labels else str(i), "index": int(i), "score": float(row[i])}
            for i in indices
        ]
        for row, indices in zip(scores, best)
    ]


def raw_rows(outputs: list[np.ndarray], spec: ModelSpec) -> list:
    """One entry per input row: the output values, or {name: values} for multi-output models."""
    if len(outputs) == 1:
        return to_json(outputs[0])
    names = [o.name for o in spec.outputs]
    columns = [to_json(out) for out in outputs]
    return [dict(zip(names, values)) for values in zip(*columns)]
