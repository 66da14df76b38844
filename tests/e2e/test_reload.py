"""New versions in, old out, under load and without a restart: found by polling the directory or
asked for with SIGHUP; a broken version leaves the current one serving. Each version's model adds
its own number, so every answer shows which version computed it."""

from __future__ import annotations

import os
import shutil
import signal
import threading

import pytest
import requests

from tests.models import adder
from tools.local_server import wait_for, world_readable_dir

ROW = [1.0, 2.0, 3.0, 4.0]  # sum 10: version v answers 10 + v


@pytest.fixture
def versions():
    root = world_readable_dir("kerasrv-versions-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def add_version(root, number: int, broken: bool = False) -> None:
    """Write the version beside, then move it in: what a careful deployment does."""
    staging = root.parent / f"{root.name}-staging-{number}"
    staging.mkdir(mode=0o755)
    if broken:
        (staging / "model.keras").write_bytes(b"not a model")
    else:
        adder(staging / "model.keras", number)
    (staging / "model.keras").chmod(0o644)
    staging.rename(root / str(number))


class Clients:
    """Threads that keep asking through TF Serving's API and record (status, version, value)."""

    def __init__(self, url: str, threads: int = 4):
        self.url, self.seen, self._stop = url, [], threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                response = session.post(f"{self.url}/v1/models/adder:predict", json={"instances": [ROW]}, timeout=30)
                value = response.json()["predictions"][0][0] if response.status_code == 200 else None
                self.seen.append((index, response.status_code, response.headers.get("X-Model-Version"), value))

    def versions(self) -> set[str]:
        return {version for _, _, version, _ in list(self.seen)}

    def stop(self) -> list:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.seen


def served(url: str) -> str:
    return requests.post(f"{url}/v1/models/adder:predict", json={"instances": [ROW]}).headers["X-Model-Version"]


def test_polling_picks_up_a_new_version_under_load_and_survives_a_broken_one(start_server, versions):
    add_version(versions, 1)
    server = start_server({"MODEL_PATH": str(versions), "MODEL_NAME": "adder", "MODEL_POLL_S": "1",
                           "MODEL_SETTLE_S": "1"}, name="reload-poll")
    clients = Clients(server.url)
    try:
        wait_for(lambda: len(clients.seen) >= 20, 60, "answers from version 1")
        add_version(versions, 2)
        wait_for(lambda: "2" in clients.versions(), 120, "answers from version 2")
        count = len(clients.seen)
        wait_for(lambda: len(clients.seen) >= count + 20, 60, "more answers from version 2")
    finally:
        seen = clients.stop()
    assert {status for _, status, _, _ in seen} == {200}
    for _, _, version, value in seen:
        assert value == pytest.approx(10 + int(version))  # the header names the version that computed it
    for index in range(4):  # each client moves from 1 to 2, never back
        mine = [int(version) for i, _, version, _ in seen if i == index]
        assert mine == sorted(mine) and mine[-1] == 2
    stats = requests.get(f"{server.url}/stats").json()
    assert stats["reloads"] == 1 and stats["reload_error"] is None

    add_version(versions, 3, broken=True)
    wait_for(lambda: requests.get(f"{server.url}/stats").json()["reload_error"], 120, "the broken version's failure")
    assert served(server.url) == "2" and requests.get(f"{server.url}/health/ready").status_code == 200
    metrics = requests.get(f"{server.url}/metrics").text
    assert 'kerasrv_model_reloads_total{model="adder",result="failed"} 1.0' in metrics
    assert 'kerasrv_model_reloads_total{model="adder",result="ok"} 1.0' in metrics


def test_sighup_loads_the_newest_version(start_server, versions):
    add_version(versions, 1)
    server = start_server({"MODEL_PATH": str(versions), "MODEL_NAME": "adder", "MODEL_SETTLE_S": "0"},
                          name="reload-sighup")
    assert served(server.url) == "1"
    add_version(versions, 2)
    assert served(server.url) == "1"  # nothing polls: only the signal makes it look
    os.kill(server.process.pid, signal.SIGHUP)
    wait_for(lambda: served(server.url) == "2", 120, "version 2 after SIGHUP")
    assert server.process.poll() is None
