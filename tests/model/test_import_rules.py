"""The project's core rule: TensorFlow is not fork-safe and costs hundreds of MB per process, so in
mule mode nothing a uWSGI worker imports may pull it in; only the mule loads it.

Each case imports the WSGI app in a fresh interpreter, as a worker does after the fork, with a
stand-in for the `uwsgi` module that only exists inside uWSGI. Worker mode, which loads the model
in the worker on purpose, is the control that shows the check sees TensorFlow when it is there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from app.config import PROJECT_ROOT

HEAVY = ("tensorflow", "keras", "h5py")

WORKER = f"""
import json, mmap, sys, types
uwsgi = types.ModuleType("uwsgi")
uwsgi.sharedarea_memoryview = lambda area: memoryview(mmap.mmap(-1, 1 << 30))  # room for any slots; untouched
uwsgi.worker_id = lambda: 1
sys.modules["uwsgi"] = uwsgi
import app.wsgi
import app.inference.mule_client
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY!r})))
"""


def heavy_modules_in_a_worker(mode: str) -> list[str]:
    with tempfile.TemporaryDirectory() as runtime:  # its own: a stopped server's marker would end the worker
        env = {**os.environ, "INFERENCE_MODE": mode, "LOG_LEVEL": "warning", "TF_CPP_MIN_LOG_LEVEL": "3",
               "RUNTIME_DIR": runtime}
        result = subprocess.run([sys.executable, "-c", WORKER], cwd=PROJECT_ROOT, env=env, capture_output=True,
                                text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_mule_mode_worker_never_imports_tensorflow():
    assert heavy_modules_in_a_worker("mule") == []


@pytest.mark.parametrize("module", ["tensorflow", "keras"])
def test_the_check_sees_tensorflow_where_a_worker_loads_the_model(module, worker_mode_modules):
    assert module in worker_mode_modules


@pytest.fixture(scope="module")
def worker_mode_modules() -> list[str]:
    return heavy_modules_in_a_worker("worker")
