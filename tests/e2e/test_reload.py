"""New versions in, old out, under load and without a restart: found by polling the directory,
asked for through the v2 repository API (tritonclient) or with SIGHUP; a broken version leaves the
current one serving; a rollback is a reload to what the directory holds. Each version's model adds
its own number, so every answer shows which version computed it."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.models import adder
from tools.local_server import wait_for
from training.digits import heldout_split, render_png

ROW = [1.0, 2.0, 3.0, 4.0]  # sum 10: version v answers 10 + v


@pytest.fixture
def versions(readable_dir):
    return readable_dir("kerasrv-versions-")


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


def copy_slowly(source: Path, target: Path, pause_s: float = 0.25, pieces: int = 3) -> None:
    """What a careless deployment does: copy straight into the watched directory, file by file
    (saved_model.pb first, the worst order) and each file in pieces, pausing between writes."""
    files = sorted((p for p in source.rglob("*") if p.is_file()), key=lambda p: p.name != "saved_model.pb")
    target.mkdir(mode=0o755, exist_ok=True)
    for file in files:
        destination = target / file.relative_to(source)
        destination.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        data = file.read_bytes()
        step = -(-len(data) // pieces)
        with destination.open("wb") as out:
            destination.chmod(0o644)
            for start in range(0, len(data), step):
                out.write(data[start : start + step])
                out.flush()
                time.sleep(pause_s)  # the copy is slow on purpose: this is the writer, not a wait


def saved_adders(folder: Path, numbers: list[int]) -> dict[int, Path]:
    """SavedModel exports of the adder, outside the watched directory, and one broken copy."""
    exports = {}
    for number in numbers:
        exports[number] = folder / f"export-{number}"
        adder(exports[number], number, saved_model=True)
    broken = folder / "export-broken"
    shutil.copytree(exports[numbers[0]], broken)
    (broken / "saved_model.pb").write_bytes(b"not a saved model" * 100)
    exports[0] = broken
    return exports


def reloads(url: str) -> dict[str, float]:
    """kerasrv_model_reloads_total by result."""
    found = {}
    for line in requests.get(f"{url}/metrics").text.splitlines():
        if line.startswith("kerasrv_model_reloads_total{"):
            found[line.split('result="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return found


def version_states(url: str, model: str = "adder") -> dict[str, tuple[str, str]]:
    """TF Serving's version status: version -> (state, error message)."""
    body = requests.get(f"{url}/v1/models/{model}").json()
    return {v["version"]: (v["state"], v["status"]["error_message"]) for v in body["model_version_status"]}


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


def test_slow_copies_and_a_broken_version_under_16_clients_for_60_s(start_server, versions, tmp_path):
    """Versions 2 and 3 copied in slowly, then a broken 4 (fixed in place later): no answer but
    200, each client moves 1 -> 2 -> 3 -> 4 and never back, no half-copied version is ever tried."""
    exports = saved_adders(tmp_path, [1, 2, 3, 4])
    shutil.copytree(exports[1], versions / "1")
    server = start_server({"MODEL_PATH": str(versions), "MODEL_NAME": "adder", "MODEL_POLL_S": "1",
                           "MODEL_SETTLE_S": "3"}, name="reload-slow")
    started = time.monotonic()
    clients = Clients(server.url, threads=16)
    try:
        wait_for(lambda: len(clients.seen) >= 50, 60, "answers from version 1")
        for number in (2, 3):
            copy_slowly(exports[number], versions / str(number))
            wait_for(lambda n=str(number): n in clients.versions(), 60, f"answers from version {number}")
        copy_slowly(exports[0], versions / "4")  # broken
        wait_for(lambda: requests.get(f"{server.url}/stats").json()["reload_error"], 60, "version 4's failure")
        states = version_states(server.url)
        assert states["3"] == ("AVAILABLE", "") and states["4"][0] == "END" and states["4"][1]
        assert requests.get(f"{server.url}/health/ready").status_code == 200
        count = len(clients.seen)
        wait_for(lambda: len(clients.seen) >= count + 50, 60, "more answers while version 4 is broken")
        assert clients.versions() == {"1", "2", "3"}
        shutil.rmtree(versions / "4")
        copy_slowly(exports[4], versions / "4")  # fixed: its files changed, so the poll tries it again
        wait_for(lambda: "4" in clients.versions(), 60, "answers from the fixed version 4")
        wait_for(lambda: time.monotonic() - started >= 60, 120, "60 s of load")
    finally:
        seen = clients.stop()
    assert len(seen) > 1000 and {status for _, status, _, _ in seen} == {200}
    for _, _, version, value in seen:
        assert value == pytest.approx(10 + int(version))
    for index in range(16):
        mine = [int(version) for i, _, version, _ in seen if i == index]
        assert mine == sorted(mine) and mine[-1] == 4
    assert reloads(server.url) == {"ok": 3.0, "failed": 1.0}  # 2, 3, fixed 4; a partial copy never tried
    assert version_states(server.url)["4"] == ("AVAILABLE", "")


def test_the_repository_api_loads_unloads_and_rolls_back(start_server, versions):
    add_version(versions, 1)
    server = start_server({"MODEL_PATH": str(versions), "MODEL_NAME": "adder", "MODEL_SETTLE_S": "0"},
                          name="reload-api")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.get_model_repository_index() == [
            {"name": "adder", "version": "1", "state": "READY", "reason": ""}]
        add_version(versions, 2)
        assert served(server.url) == "1"  # nothing polls
        client.load_model("adder")  # answers once version 2 serves
        assert served(server.url) == "2"
        index = {entry["version"]: entry["state"] for entry in client.get_model_repository_index()}
        assert index == {"2": "READY", "1": "UNAVAILABLE"}

        add_version(versions, 3, broken=True)
        with pytest.raises(InferenceServerException, match="version 2 keeps serving") as failed:
            client.load_model("adder")
        assert failed.value.status() == "400"
        assert client.is_model_ready("adder") and served(server.url) == "2"
        assert client.get_model_repository_index(query_params=None) and client.is_server_ready()

        client.unload_model("adder")
        assert not client.is_model_ready("adder") and not client.is_server_ready()
        refused = requests.post(f"{server.url}/v1/models/adder:predict", json={"instances": [ROW]})
        assert refused.status_code == 503 and refused.json()["code"] == "not_ready"
        assert requests.get(f"{server.url}/health/ready").status_code == 503

        shutil.rmtree(versions / "3")  # a rollback: the newest versions out, then a load
        shutil.rmtree(versions / "2")
        client.load_model("adder")
        assert served(server.url) == "1" and client.is_server_ready()
        assert {v: s for v, (s, _) in version_states(server.url).items()} == {
            "3": "END", "2": "END", "1": "AVAILABLE"}
    finally:
        client.close()


def mule_rss_mb(url: str) -> float:
    pid = requests.get(f"{url}/stats").json()["pid"]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_ten_reloads_leave_no_model_copies_behind(start_server, versions):
    """Each version a copy of the demo model: memory after ten reloads within 10% of after one."""
    from app.config import DEMO_MODEL  # noqa: PLC0415

    def add(number: int) -> None:
        staging = versions.parent / f"{versions.name}-staging-{number}"
        staging.mkdir(mode=0o755)
        shutil.copy(DEMO_MODEL, staging / "model.keras")
        (staging / "model.keras").chmod(0o644)
        staging.rename(versions / str(number))

    add(1)
    server = start_server({"MODEL_PATH": str(versions), "MODEL_NAME": "digits", "MODEL_SETTLE_S": "0"},
                          name="reload-memory")
    load = f"{server.url}/v2/repository/models/digits/load"
    pngs = [render_png(image) for image in heldout_split()[2][:8]]
    after = {}
    for number in range(2, 12):
        add(number)
        answer = requests.post(load, timeout=60)
        assert answer.status_code == 200 and answer.json()["model_version"] == str(number), answer.text
        for png in pngs:  # each version serves before the next replaces it
            predicted = requests.post(f"{server.url}/predict", data=png, headers={"Content-Type": "image/png"})
            assert predicted.headers["X-Model-Version"] == str(number)
        wait_for(lambda n=str(number): [v for v, (state, _) in version_states(server.url, "digits").items()
                                        if state != "END"] == [n], 30, "the older version freed")
        after[number - 1] = mule_rss_mb(server.url)
    print(f"mule RSS after reloads (MB): {after}")
    assert after[10] <= after[1] * 1.10, after


def test_a_server_started_before_its_model_waits_or_recovers(start_server, versions, readable_dir):
    """Started on an empty directory it fails (not ready, saying why) and, with polling, becomes
    ready once a version arrives; started beside a copy still under way it waits for the copy."""
    server = start_server({"MODEL_PATH": str(versions), "MODEL_NAME": "adder", "MODEL_POLL_S": "1",
                           "MODEL_SETTLE_S": "1"}, wait_ready=False, name="reload-empty")
    failed = server.wait_state("failed")
    assert "holds no model" in failed["error"], failed
    add_version(versions, 1)
    server.wait_state("ready")
    assert served(server.url) == "1"

    fresh = readable_dir("kerasrv-versions-")
    add_version(fresh, 1)  # written just now: it settles 8 s from now
    late = start_server({"MODEL_PATH": str(fresh), "MODEL_NAME": "adder", "MODEL_SETTLE_S": "8"},
                        wait_ready=False, name="reload-settling")
    wait_for(lambda: "waiting for the copy to end" in late.log(), 60, "the mule waiting for the copy")
    assert late.wait_state("ready")["state"] == "ready"
    assert served(late.url) == "1"
