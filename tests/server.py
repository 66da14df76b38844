"""Start the real stack (app.launch -> supervisord -> nginx + uWSGI workers + mule) for tests.

Each server listens on a free loopback port with its own runtime directory, and is stopped
with SIGTERM (the way Docker and systemd stop it) at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from app.config import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def world_readable_dir(prefix: str) -> Path:
    """A temp dir the unprivileged service user (nobody, when tests run as root) can enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class Server:
    def __init__(self, env: dict[str, str] | None = None, name: str = "server"):
        self.port = free_port()
        self.runtime = world_readable_dir(f"kerasrv-{name}-")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.runtime / "server.log"
        base = {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "RUNTIME_DIR": str(self.runtime / "run"),
            "WORKERS": "2",
            "THREADS": "4",
            "LOG_LEVEL": "info",
        }
        self.env = {**os.environ, **base, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 120) -> Server:
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.launch"], cwd=PROJECT_ROOT, env=self.env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/health/ready", timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or workers still loading
                pass
            time.sleep(0.25)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self, tail: int = 8000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def mule_pid(self) -> int:
        """The mule publishes its PID in /stats."""
        return requests.get(f"{self.url}/stats", timeout=10).json()["pid"]

    def worker_pids(self) -> list[int]:
        master = int((self.runtime / "run" / "uwsgi.pid").read_text())
        mule = self.mule_pid() if self.env.get("INFERENCE_MODE", "mule") == "mule" else None
        return [pid for pid in _children(master) if pid != mule]

    def stop(self, timeout: float = 60) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        code = self.process.returncode
        if code == 0:
            shutil.rmtree(self.runtime, ignore_errors=True)
        return code


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found
