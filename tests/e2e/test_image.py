"""The image built for real from the Dockerfile and run from its own filesystem, as `docker run`
would: its CMD, its ENV (PORT and HOST changed for loopback, as `-p` would map them), its user.

No Docker engine here: the Dockerfile's base (debian:bookworm-slim) is made with mmdebstrap,
`podman build` builds the image, `podman image mount` gives its root filesystem, and
`systemd-nspawn` runs the CMD in it over a throwaway overlay, forwarding SIGTERM to it as
`docker stop` does. Needs root and those tools (`make install-dev` installs them as root).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from app.config import PROJECT_ROOT
from tools.local_server import descendants, free_port, health, run_checked, wait_for
from training.digits import heldout_split, render_png

IMAGE = "localhost/kerasrv:test"
BASE = "docker.io/library/debian:bookworm-slim"  # the Dockerfile's FROM, made here
TOOLS = ("podman", "mmdebstrap", "systemd-nspawn")
LOCAL_CAS = Path("/usr/local/share/ca-certificates")  # a proxy's CA, if the host trusts one

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="building and running the image needs root (podman, nspawn)"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                       reason=f"needs {', '.join(TOOLS)} (Debian: mmdebstrap podman systemd-container)"),
]


@dataclass
class Image:
    root: str
    env: dict[str, str]
    cmd: list[str]
    workdir: str
    size: int


@pytest.fixture(scope="module")
def image():
    if subprocess.run(["podman", "image", "exists", BASE], check=False).returncode != 0:
        with tempfile.TemporaryDirectory() as scratch:
            tarball = Path(scratch) / "base.tar"
            run_checked(["mmdebstrap", "--variant=minbase", "--quiet", "bookworm", str(tarball)])
            run_checked(["podman", "import", str(tarball), BASE])
    mounts = ["-v", f"{LOCAL_CAS}:{LOCAL_CAS}:ro"] if LOCAL_CAS.is_dir() and any(LOCAL_CAS.iterdir()) else []
    run_checked(["podman", "build", "--isolation", "chroot", "--pull=never", *mounts, "-t", IMAGE, str(PROJECT_ROOT)],
                timeout=1800)
    config = json.loads(run_checked(["podman", "image", "inspect", IMAGE]))[0]
    root = run_checked(["podman", "image", "mount", IMAGE]).strip()
    env = dict(item.split("=", 1) for item in config["Config"]["Env"])
    yield Image(root, env, config["Config"]["Cmd"], config["Config"]["WorkingDir"], config["Size"])
    subprocess.run(["podman", "image", "unmount", IMAGE], capture_output=True, check=False)


class Container:
    """The image's CMD under systemd-nspawn on a free loopback port; SIGTERM reaches its PID 1."""

    def __init__(self, image: Image, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {**image.env, "PORT": str(self.port), "HOST": "127.0.0.1", **(env or {})}
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--volatile=overlay",
             "--kill-signal=SIGTERM", "-D", image.root, f"--chdir={image.workdir}",
             *(f"--setenv={k}={v}" for k, v in settings.items()), *image.cmd],
            stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-6000:]

    def wait_state(self, state: str) -> dict:
        def reached() -> dict | None:
            if self.process.poll() is not None:
                raise AssertionError(f"the container exited {self.process.returncode}:\n{self.output()}")
            answer = health(self.url)
            return answer if answer and answer.get("state") == state else None

        return wait_for(reached, 180, f"container state {state!r}")

    def stop(self) -> int:
        """`docker stop`: SIGTERM, and the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def test_the_image_is_lean(image):
    root = Path(image.root)
    assert not (root / "usr/bin/gcc").exists() and not (root / "root/.cache").exists()
    assert not any((root / "var/lib/apt/lists").glob("*_Packages"))
    assert (root / "app/models/digits.keras").is_file() and not (root / "app/.venv").exists()
    print(f"image size: {image.size / 1e9:.2f} GB")
    assert image.size < 2.5e9, image.size


def test_the_image_serves_unprivileged_and_drains_on_sigterm(image):
    container = Container(image)
    try:
        container.wait_state("ready")
        _, _, pictures, labels = heldout_split()
        for picture, label in zip(pictures[:5], labels[:5]):
            answer = requests.post(f"{container.url}/predict", data=render_png(picture),
                                   headers={"Content-Type": "image/png"}, timeout=30)
            assert answer.status_code == 200 and answer.json()["predictions"][0]["index"] == label
        below = descendants(container.process.pid)
        uwsgi = [pid for pid in below if b"uwsgi" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(uwsgi) >= 3 and {uid_of(pid) for pid in uwsgi} == {10001}  # master, workers, mule

        statuses: list[int] = []
        stop = threading.Event()

        def client() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        statuses.append(session.post(f"{container.url}/predict", data=render_png(pictures[0]),
                                                     headers={"Content-Type": "image/png"}, timeout=30).status_code)
                    except requests.ConnectionError:
                        return  # the server closed its listener: the drain is under way
        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(statuses) >= 20, 60, "requests under way")
        code = container.stop()
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        container.stop()
    assert code == 0, container.output()
    assert statuses and set(statuses) == {200}  # in flight at SIGTERM: answered, not dropped


def test_a_model_that_fails_to_load_keeps_it_running_and_not_ready(image):
    container = Container(image, {"MODEL_PATH": "/app/README.md"})
    try:
        failed = container.wait_state("failed")
        assert failed["http_status"] == 503 and container.process.poll() is None
    finally:
        assert container.stop() == 0


def test_a_process_that_fails_for_good_stops_it_with_an_error(image):
    """nginx cannot bind its port (taken): supervisord gives up on it, and the container exits 1
    so that its restart policy can act."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        container = Container(image, port=taken.getsockname()[1])
        try:
            code = container.process.wait(180)
        finally:
            container.stop()
    assert code == 1, container.output()
