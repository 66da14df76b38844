"""A versioned model directory (TF Serving's layout) on the real stack: the highest complete version
is served, or the one MODEL_VERSION pins, and every answer says which version computed it."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import requests

from app.config import DEMO_MODEL
from training.digits import heldout_split, render_png


@pytest.fixture(scope="module")
def versions(model_dir):
    """versions/1 and versions/2 (the demo model), and versions/3 still being written."""
    root = model_dir / "versions"
    past = time.time() - 600
    for number in (1, 2, 3):
        directory = root / str(number)
        directory.mkdir(mode=0o755, parents=True)
        shutil.copy(DEMO_MODEL, directory / "digits.keras")
        (directory / "digits.keras").chmod(0o644)
        if number < 3:
            for path in (directory / "digits.keras", directory):
                os.utime(path, (past, past))
    return root


def answers(url: str) -> dict[str, requests.Response]:
    png = render_png(heldout_split()[2][0])
    return {
        "predict": requests.post(f"{url}/predict", files={"image": ("d.png", png)}),
        "v1": requests.post(f"{url}/v1/models/digits:predict", json={"instances": [[[[0.0]] * 32] * 32]}),
        "v2": requests.post(f"{url}/v2/models/digits/infer", json={"inputs": [
            {"name": "image", "shape": [1, 32, 32, 1], "datatype": "FP32", "data": [0.0] * 1024}]}),
    }


@pytest.mark.parametrize(("pin", "served"), [(None, 2), ("1", 1)])
def test_the_served_version_is_in_every_answer(start_server, versions, pin, served):
    env = {"MODEL_PATH": str(versions), "MODEL_NAME": "digits", "MODEL_SETTLE_S": "30"}
    if pin:
        env["MODEL_VERSION"] = pin
    server = start_server(env, name=f"versions-{pin or 'latest'}")
    got = answers(server.url)
    for kind in ("predict", "v1", "v2"):
        assert got[kind].status_code == 200, got[kind].text
        assert got[kind].headers["X-Model-Version"] == str(served), kind
    assert got["v2"].json()["model_version"] == str(served)
    status = requests.get(f"{server.url}/v1/models/digits").json()["model_version_status"]
    assert [s["version"] for s in status] == [str(served)]
    assert requests.get(f"{server.url}/v2/models/digits").json()["versions"] == [str(served)]
    assert requests.get(f"{server.url}/v2/models/digits/versions/{served}/ready").status_code == 200
    other = 3 - served
    assert requests.get(f"{server.url}/v2/models/digits/versions/{other}").status_code == 404
    assert requests.get(f"{server.url}/v1/models/digits/versions/{other}").status_code == 404
