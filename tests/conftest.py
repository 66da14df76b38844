"""Fixtures (models made for the tests, real servers on free loopback ports) and the markers.

tests/unit: no uWSGI, no TensorFlow; tests/model: TensorFlow in this process; tests/e2e (and any
test marked so): the real stack, marked `e2e`, so `pytest -m "not e2e"` is the fast run. Shared helpers live in
tests/doubles.py and tools/local_server.py, never here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.models import text_classifier, token_tagger, two_in_two_out
from tools.local_server import LocalServer, world_readable_dir

TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (TESTS / "e2e") in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


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


@pytest.fixture(scope="session")
def two_input_model(model_dir):
    """(path, model): two named inputs, two heads (tests/models.py)."""
    path = model_dir / "two_in_two_out.keras"
    return path, two_in_two_out(path)


@pytest.fixture(scope="session")
def text_model(model_dir):
    """(path, model): strings in, through TextVectorization (tests/models.py)."""
    path = model_dir / "reviews.keras"
    return path, text_classifier(path)


@pytest.fixture(scope="session")
def tagger_model(model_dir):
    """(path, model): token ids of any length in, 3 scores per token out (tests/models.py)."""
    path = model_dir / "tagger.keras"
    return path, token_tagger(path)


@pytest.fixture
def readable_dir():
    """Makes temp folders the unprivileged service user can enter (world_readable_dir), for files
    a server reads; each one is removed after the test."""
    made: list[Path] = []

    def make(prefix: str) -> Path:
        made.append(world_readable_dir(prefix))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_server():
    """Start servers with given environment overrides; each must stop cleanly (exit 0 on SIGTERM)
    at the end of the test, unless the test expects otherwise and stops it itself."""
    servers: list[LocalServer] = []

    def start(env: dict[str, str] | None = None, wait_ready: bool = True, name: str = "test") -> LocalServer:
        server = LocalServer(env, name=name)
        servers.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in servers:
        running = server.process.poll() is None
        code = server.stop()
        assert not running or code == 0, f"{server.url}: exit {code} on SIGTERM:\n{server.log()}"
