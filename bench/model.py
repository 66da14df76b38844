"""The benchmark's models and photos: MobileNetV2 and a small tabular MLP (random weights,
nothing downloaded) and scikit-learn's JPEGs.

Models are built in a subprocess (`python -m bench.model NAME PATH`) so that the orchestrating
process, which also drives the load, never imports TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.config import PROJECT_ROOT

WORK_DIR = PROJECT_ROOT / "bench" / "work"
TABULAR_FEATURES = 32
PHOTO_NAMES = ("china.jpg", "flower.jpg")


def photo_paths() -> list[Path]:
    """The real photos that ship inside scikit-learn (read as bytes, never re-encoded)."""
    import sklearn  # noqa: PLC0415 - only for its data directory

    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    return [folder / name for name in PHOTO_NAMES]


def photos() -> list[bytes]:
    return [path.read_bytes() for path in photo_paths()]


def ensure_world_readable(path: Path) -> None:
    """The server drops to `nobody` when started as root: every parent must be enterable, the file readable."""
    for parent in reversed(path.parents):
        if str(parent).startswith(str(PROJECT_ROOT)) and parent.is_dir():
            parent.chmod(parent.stat().st_mode | 0o555)
    path.chmod(0o644)


def ensure_model(name: str = "mobilenet_v2") -> Path:
    """Build and save the model `name` (see BUILDERS) once; later runs reuse the file."""
    path = WORK_DIR / f"{name}.keras"
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    if not path.is_file():
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        subprocess.run([sys.executable, "-m", "bench.model", name, str(path)], cwd=PROJECT_ROOT, env=env, check=True)
    ensure_world_readable(path)
    return path


def _mobilenet_v2():
    import keras  # noqa: PLC0415

    return keras.applications.MobileNetV2(weights=None)  # 224x224x3 -> 1000 classes


def _tabular_mlp():
    """TABULAR_FEATURES floats -> 3 classes: the size of a typical tabular model (a few thousand weights)."""
    import keras  # noqa: PLC0415

    return keras.Sequential([
        keras.Input((TABULAR_FEATURES,), name="features"), keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(3, activation="softmax", name="probs"),
    ])


BUILDERS = {"mobilenet_v2": _mobilenet_v2, "tabular_mlp": _tabular_mlp}


def _build(name: str, path: Path) -> None:
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = BUILDERS[name]()
    tmp = path.with_suffix(".tmp.keras")
    model.save(tmp)
    tmp.replace(path)  # a run killed mid-save leaves no half-written model behind


if __name__ == "__main__":
    _build(sys.argv[1], Path(sys.argv[2]))
