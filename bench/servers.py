"""The servers under test and what /proc says about them: memory, CPU, and whether TensorFlow is loaded.

A server is the launcher's whole process tree (supervisord, nginx, the uWSGI master, workers and
mule), so memory and CPU are summed over every descendant of the process the benchmark started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from app.config import PROJECT_ROOT
from app.launch import MALLOC_DEFAULTS
from bench import triton_app
from bench.load import Request
from bench.workloads import Workload
from tools.local_server import LocalServer, descendants, free_port, wait_for

LOG_DIR = PROJECT_ROOT / "bench" / "work" / "logs"  # each server's log, kept after it stops
TF_MARKER = "libtensorflow_framework"  # mapped by every process that imported TensorFlow
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _rollup(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return values


def _has_tensorflow(pid: int) -> bool:
    try:
        return TF_MARKER in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def memory(root: int) -> dict[str, Any]:
    """Total RSS and PSS (MB) of the tree; PSS splits shared pages, so it does not count them N times."""
    per_process = []
    for pid in descendants(root):
        rollup = _rollup(pid)
        if not rollup:
            continue
        per_process.append({
            "pid": pid, "cmd": _name(pid), "rss_mb": rollup.get("Rss", 0) / 1024,
            "pss_mb": rollup.get("Pss", 0) / 1024, "tensorflow": _has_tensorflow(pid),
        })
    return {
        "rss_mb": sum(p["rss_mb"] for p in per_process),
        "pss_mb": sum(p["pss_mb"] for p in per_process),
        "processes": len(per_process),
        "tensorflow_processes": sum(p["tensorflow"] for p in per_process),
        "per_process": per_process,
    }


def cpu_seconds(root: int) -> float:
    """User + system CPU of every live process in the tree."""
    total = 0
    for pid in descendants(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def system_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_idle(root: int, max_s: float = 60, step_s: float = 0.5, busy_share: float = 0.05) -> float:
    """Wait until the tree uses under `busy_share` of one core; return the seconds waited.

    A load window ends with requests still queued inside the server (the client hangs up, but
    queued work still runs), so the next ceiling window would otherwise compete with that drain.
    """
    started = time.monotonic()
    last = cpu_seconds(root)
    while time.monotonic() - started < max_s:
        time.sleep(step_s)
        now = cpu_seconds(root)
        if now - last < busy_share * step_s:
            break
        last = now
    return time.monotonic() - started


class Kerasrv:
    """The real stack (app.launch) in mule or worker mode, started as the end-to-end tests start it."""

    def __init__(self, kind: str, env: dict[str, str], workload: Workload, label: str | None = None):
        self.kind = kind
        self.env = env
        self.workload = workload
        self.server_name = label or kind
        self.server = LocalServer(env, name=f"bench-{self.server_name}")
        self.url = self.server.url

    def start(self, timeout: float = 300) -> None:
        self.server.start(timeout=timeout)

    def load_requests(self, bodies: list[bytes]) -> list[Request]:
        return self.workload.kerasrv_requests(bodies)

    @property
    def root(self) -> int:
        return self.server.process.pid

    def stats(self) -> dict[str, Any] | None:
        """The mule's counters (batches, rows); None in worker mode."""
        if self.env.get("INFERENCE_MODE") != "mule":
            return None
        return requests.get(f"{self.url}/stats", timeout=30).json()

    def log(self, tail: int = 8000) -> str:
        return self.server.log(tail)

    def alive(self) -> bool:
        return self.server.process.poll() is None

    def stop(self) -> int:
        """Stop it, keeping its log in bench/work/logs (LocalServer deletes its runtime dir on a clean exit)."""
        LOG_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        text = self.server.log_path.read_text(errors="replace") if self.server.log_path.exists() else ""
        code = self.server.stop()
        (LOG_DIR / f"{self.server_name}.log").write_text(text + f"\n[bench] server exited with {code}\n")
        return code


class _Process:
    """A server the benchmark runs as one subprocess (and whatever that starts), logging to LOG_DIR."""

    kind = ""

    def __init__(self, command: list[str], env: dict[str, str], port: int, workload: Workload):
        self.workload = workload
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.command = command
        self.env = env
        LOG_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{self.kind}.log"
        self.process: subprocess.Popen | None = None

    def load_requests(self, bodies: list[bytes]) -> list[Request]:
        return self.workload.kerasrv_requests(bodies)

    def start(self, probe: bytes, timeout: float = 300) -> None:
        """Start it and wait until it answers a photo."""
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(self.command, cwd=PROJECT_ROOT, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        request = self.load_requests([probe])[0]

        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.kind} server exited with {self.process.returncode}:\n{self.log()}")
            try:
                return requests.post(f"{self.url}{request.path}", data=request.body, headers=dict(request.headers),
                                     timeout=30).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_for(answers, timeout, f"the {self.kind} server answering a photo", interval=0.5)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}:\n{self.log()}") from None

    @property
    def root(self) -> int:
        return self.process.pid

    def stats(self) -> dict[str, Any] | None:
        return None

    def log(self, tail: int = 8000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int:
        """SIGINT: uWSGI without a master exits on it (SIGTERM would mean "reload"), and PyTriton
        stops its tritonserver on KeyboardInterrupt. Anything left after that is killed."""
        if self.alive():
            children = descendants(self.process.pid)
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()
        return self.process.returncode


class Recipe(_Process):
    """bench/recipe_app.py under one uWSGI process on an HTTP socket, as tutorials deploy it."""

    kind = "recipe"

    def __init__(self, workload: Workload):
        if workload.name != "mobilenet":
            raise ValueError("the recipe (bench/recipe_app.py) is written for MobileNetV2 on photos")
        port, model_path = free_port(), workload.model_path()
        command = [
            str(Path(sys.executable).parent / "uwsgi"), "--http-socket", f"127.0.0.1:{port}",
            "--processes", "1", "--need-app", "--module", "bench.recipe_app:app", "--chdir", str(PROJECT_ROOT),
            "--disable-logging",
            # uWSGI's plain http-socket closes the connection after each answer; saying so lets the
            # client reconnect cleanly instead of counting a read error per request.
            "--add-header", "Connection: close",
        ]
        super().__init__(command, {**os.environ, "RECIPE_MODEL_PATH": str(model_path), "TF_CPP_MIN_LOG_LEVEL": "2"},
                         port, workload)


class Triton(_Process):
    """bench/triton_app.py: the same model and decode behind Triton's dynamic batcher, via PyTriton,
    run by the Python of its own venv (TRITON_PYTHON; see bench/requirements-triton.txt)."""

    kind = "triton"

    def __init__(self, workload: Workload, python: str):
        port, self.metrics_port = free_port(), free_port()
        command = [python, "-m", "bench.triton_app", workload.name, str(port), str(free_port()),
                   str(self.metrics_port)]
        # the server's malloc thresholds too: a peer is not weakened by page faults kerasrv avoids
        env = {**MALLOC_DEFAULTS, **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT_ROOT)}
        super().__init__(command, env, port, workload)

    def load_requests(self, bodies: list[bytes]) -> list[Request]:
        path = f"/v2/models/{triton_app.MODEL_NAME}/infer"
        return [Request(path, headers, body) for body, headers in
                (triton_app.v2_request(body, self.workload.is_tabular) for body in bodies)]

    def stats(self) -> dict[str, Any]:
        """Rows and model calls from Triton's Prometheus metrics, in the shape of the mule's counters."""
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30).text
        counters = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith(("nv_inference_count{", "nv_inference_exec_count{"))}
        return {"batches": counters["nv_inference_exec_count"], "rows": counters["nv_inference_count"],
                "batch_sizes": {}}
