"""Shared fixtures: models made for the tests, and real servers started on free loopback ports."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.server import Server, world_readable_dir


@pytest.fixture(scope="session")
def model_dir():
    path = world_readable_dir("kerasrv-models-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def mobilenet_path(model_dir) -> Path:
    """An ImageNet-shaped user model (random weights: none can be downloaded here)."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None)
    path = model_dir / "mobilenet.keras"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tabular_path(model_dir) -> Path:
    """A user's tabular model: 8 features in, 3 class probabilities out."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax"),
    ])
    path = model_dir / "tabular.keras"
    model.save(path)
    return path


@pytest.fixture
def start_server():
    """Start servers with given environment overrides; all are stopped at the end of the test."""
    servers: list[Server] = []

    def start(env: dict[str, str] | None = None, wait_ready: bool = True, name: str = "test") -> Server:
        server = Server(env, name=name)
        servers.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in servers:
        server.stop()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
