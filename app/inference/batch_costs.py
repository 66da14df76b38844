"""The batch costs a mule measured, kept in RUNTIME_DIR for the mule that replaces it.

A mule respawned after a crash warms up while the workers answer a flood of 503s on the same
cores; timings taken then were measured 3-4x too high, and the batch limit chosen from them is
noise (docs/reliability.md). The first mule of a server times its model on a quiet machine, so a
later mule of the same server loading the same, unchanged version reuses those figures.
The same goes for the batch sizes at which the compiled (XLA) call won the warm-up race: the
successor compiles those and times nothing. The launcher empties the directory at each start: a
new start (new settings, another machine load) measures afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from app.inference import versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timings:
    """What a warm-up measured: ms per call by batch size, and the sizes that run compiled."""

    costs_ms: dict[int, float]
    compiled: tuple[int, ...] = ()


def _key(model: Path, buckets: tuple[int, ...]) -> dict:
    """What the costs hold for: these files, as they are now, called at these batch sizes."""
    return {"model": str(model.resolve()), "changed": versions.newest_change(model), "buckets": list(buckets)}


def recall(directory: Path, model: Path, buckets: tuple[int, ...]) -> Timings | None:
    """The timings saved for `model` as it is now, or None if there are none (or they are stale)."""
    try:
        saved = json.loads(_path(directory, model).read_text())
        if saved["key"] != _key(model, buckets):
            return None
        costs = {int(size): float(ms) for size, ms in saved["costs_ms"].items()}
        return Timings(costs, tuple(int(size) for size in saved["compiled"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def remember(directory: Path, model: Path, buckets: tuple[int, ...], timings: Timings) -> None:
    """Save the timings for the next mule; failing to (say, a full disk) only costs it a re-timing."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        target = _path(directory, model)
        partial = target.with_suffix(".partial")
        saved = {"key": _key(model, buckets), "costs_ms": timings.costs_ms, "compiled": list(timings.compiled)}
        partial.write_text(json.dumps(saved))
        os.replace(partial, target)  # a mule killed mid-write leaves no half file to read
    except OSError as exc:
        log.warning("cannot keep the batch costs in %s for the next mule: %s", directory, exc)


def _path(directory: Path, model: Path) -> Path:
    name = hashlib.sha256(str(model.resolve()).encode()).hexdigest()[:16]
    return directory / f"{name}.json"
