"""The batch costs a mule measured, kept in RUNTIME_DIR for the mule that replaces it.

A mule respawned after a crash warms up while the workers answer a flood of 503s on the same
cores; timings taken then were measured 3-4x too high, and the batch limit chosen from them is
noise (docs/reliability.md). The first mule of a server times its model on a quiet machine, so a
later mule of the same server loading the same, unchanged version reuses those figures.
The launcher empties the directory at each start: a new start (new settings, another machine
load) measures afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from app.inference import versions

log = logging.getLogger(__name__)


def _key(model: Path, buckets: tuple[int, ...]) -> dict:
    """What the costs hold for: these files, as they are now, called at these batch sizes."""
    return {"model": str(model.resolve()), "changed": versions.newest_change(model), "buckets": list(buckets)}


def recall(directory: Path, model: Path, buckets: tuple[int, ...]) -> dict[int, float] | None:
    """The costs saved for `model` as it is now, or None if there are none (or they are stale)."""
    try:
        saved = json.loads(_path(directory, model).read_text())
        if saved["key"] != _key(model, buckets):
            return None
        return {int(size): float(ms) for size, ms in saved["costs_ms"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def remember(directory: Path, model: Path, buckets: tuple[int, ...], costs_ms: dict[int, float]) -> None:
    """Save the costs for the next mule; failing to (say, a full disk) only costs it a re-timing."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        target = _path(directory, model)
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps({"key": _key(model, buckets), "costs_ms": costs_ms}))
        os.replace(partial, target)  # a mule killed mid-write leaves no half file to read
    except OSError as exc:
        log.warning("cannot keep the batch costs in %s for the next mule: %s", directory, exc)


def _path(directory: Path, model: Path) -> Path:
    name = hashlib.sha256(str(model.resolve()).encode()).hexdigest()[:16]
    return directory / f"{name}.json"
