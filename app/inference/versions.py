"""Which model file to load: TF Serving's layout of numbered version directories, or a plain model.

MODEL_PATH may name a model (a .keras or .h5 file, a SavedModel directory, or a directory holding
one .keras/.h5 file, as KServe's /mnt/models does), served as version 1, or a directory whose
numeric subdirectories are versions (`/models/resnet/1/`, `.../2/`), each
holding one .keras/.h5 file or a SavedModel. The highest complete version is served, unless
MODEL_VERSION pins one. No TensorFlow here: the launcher and the workers may import it.

"Complete" guards against loading a version that is still being copied: its directory must hold
a model, and nothing in it may have changed for `settle_s` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

MODEL_SUFFIXES = (".keras", ".h5")


class NotSettled(FileNotFoundError):
    """No version is complete yet, but one holds a model whose files are still changing."""


@dataclass(frozen=True)
class Version:
    number: int
    path: Path  # what the loader opens: the model file, or the SavedModel directory


def is_versioned(root: Path) -> bool:
    """A directory of numbered versions rather than a model (a SavedModel has saved_model.pb)."""
    return root.is_dir() and not (root / "saved_model.pb").exists() and any(_numbered(root))


def model_in(directory: Path) -> Path | None:
    """The model a version directory holds, or None if it holds none (yet)."""
    if (directory / "saved_model.pb").exists():
        return directory
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES)
    return found[0] if len(found) == 1 else None


def complete_versions(root: Path, settle_s: float, now: float | None = None) -> list[Version]:
    """The versions under `root` that hold a model and have not changed for `settle_s`, lowest first."""
    now = time.time() if now is None else now
    found = []
    for number, directory in sorted(_numbered(root)):
        model = model_in(directory)
        if model is not None and now - newest_change(directory) >= settle_s:
            found.append(Version(number, model))
    return found


def choose(root: Path, pin: int, settle_s: float) -> Version:
    """The version to serve: the pinned one (MODEL_VERSION > 0) or the highest complete one. A
    plain model is version 1. Raises FileNotFoundError saying what is missing, NotSettled if
    the only candidates are still being copied."""
    if not is_versioned(root):
        if pin not in (0, 1):
            raise FileNotFoundError(f"MODEL_VERSION={pin}, but MODEL_PATH {root} is a single model (version 1)")
        model = model_in(root) if root.is_dir() else root  # a directory may hold one model (KServe's /mnt/models)
        if model is None:
            raise FileNotFoundError(f"MODEL_PATH {root} holds no model: one .keras/.h5 file, a SavedModel or"
                                    " numbered version directories")
        return Version(1, model)
    versions = complete_versions(root, settle_s)
    if pin:
        versions = [v for v in versions if v.number == pin]
    if not versions:
        copying = [n for n, directory in sorted(_numbered(root)) if (not pin or n == pin) and model_in(directory)]
        if copying:
            raise NotSettled(f"version {copying[-1]} in {root} changed less than {settle_s:g} s ago (MODEL_SETTLE_S):"
                             " waiting for the copy to end")
        wanted = f"version {pin}" if pin else "complete version"
        raise FileNotFoundError(f"MODEL_PATH {root} has no {wanted} (a numbered directory holding one"
                                f" .keras/.h5 file or a SavedModel, unchanged for {settle_s:g} s)")
    return versions[-1]


def changed_at(root: Path, number: int) -> float:
    """When version `number`'s files last changed (0 if it is gone or `root` holds no versions)."""
    try:
        return newest_change(root / str(number)) if is_versioned(root) else 0.0
    except FileNotFoundError:
        return 0.0


def _numbered(root: Path):
    for child in root.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
            yield int(child.name), child


def newest_change(path: Path) -> float:
    """The latest modification time of the directory or anything in it (of a file: its own)."""
    newest = path.stat().st_mtime
    for inner in path.rglob("*"):
        try:
            newest = max(newest, inner.stat().st_mtime)
        except FileNotFoundError:  # removed while we looked: it changed
            return time.time()
    return newest
