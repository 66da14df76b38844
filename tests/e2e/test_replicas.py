"""Three kerasrv replicas behind the load balancer of deploy/compose.yaml (its nginx.conf, with
only the replicas' addresses and the listening port changed for loopback): under 16 clients, one
replica drained with SIGTERM and another crashed with kill -9 cost no client an error, and with
all three up the load spreads evenly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from collections import Counter
from contextlib import suppress
from pathlib import Path

import pytest
import requests

from app.config import PROJECT_ROOT
from tools.local_server import free_port, kill_tree, wait_for
from training.digits import heldout_split, render_png

LB_CONFIG = PROJECT_ROOT / "deploy" / "loadbalancer" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def loopback_config(ports: list[int], listen: int, folder: Path) -> str:
    text = LB_CONFIG.read_text()
    servers = "".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in ports)
    text, count = re.subn(r" {8}server kerasrv:80 [^\n]*\n", servers, text)
    assert count == 1, "the upstream's server line changed: update this test"
    text, count = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen};", text)
    assert count == 1
    return text.replace("/tmp/kerasrv-lb", str(folder / "lb"))


@pytest.fixture
def balancer(readable_dir):
    """Start the balancer for the given replica ports; stopped (QUIT) at the end, its process group
    killed after that."""
    folder = readable_dir("kerasrv-lb-")
    started: list[subprocess.Popen] = []

    def start(ports: list[int]) -> str:
        port = free_port()
        (folder / "nginx.conf").write_text(loopback_config(ports, port, folder))
        started.append(subprocess.Popen([NGINX, "-e", "stderr", "-p", str(folder), "-c", str(folder / "nginx.conf"),
                                         "-g", "daemon off;"], stderr=subprocess.PIPE, start_new_session=True))
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            if started[0].poll() is not None:
                raise AssertionError(f"nginx exited: {started[0].stderr.read().decode()}")
            try:
                return requests.get(f"{url}/health/ready", timeout=5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answers, 30, "the load balancer")
        return url

    yield start
    for process in started:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(30)
        finally:  # no worker outlives the test, whatever became of the master
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


class Clients:
    """Closed-loop clients through the balancer; each answer as (status, replica) or the error."""

    def __init__(self, url: str, pngs: list[bytes], threads: int = 16):
        self.seen: list[tuple[int, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, pngs, i)) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, url: str, pngs: list[bytes], index: int) -> None:
        with requests.Session() as session:
            n = index
            while not self._stop.is_set():
                n += 1
                try:
                    answer = session.post(f"{url}/predict", data=pngs[n % len(pngs)],
                                          headers={"Content-Type": "image/png"}, timeout=60)
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                    continue
                # after a retry nginx lists every replica tried: the last one answered
                replica = answer.headers.get("X-Upstream", "").split(",")[-1].strip()
                self.seen.append((answer.status_code, replica))
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


def test_a_drained_and_a_crashed_replica_cost_no_client_an_error(start_server, balancer):
    replicas = [start_server(wait_ready=False, name=f"replica-{i}") for i in range(3)]
    for replica in replicas:
        replica.wait_state("ready")
    url = balancer([replica.port for replica in replicas])
    pngs = [render_png(image) for image in heldout_split()[2][:32]]
    clients = Clients(url, pngs)
    try:
        wait_for(lambda: len(clients.seen) >= 900, 120, "900 answers with every replica up")
        shares = Counter(replica for _, replica in clients.seen[:900])
        for replica in replicas:  # an even spread is 1/3 each
            assert shares[f"127.0.0.1:{replica.port}"] >= 0.2 * 900, shares

        drained, crashed, survivor = replicas
        assert drained.stop() == 0  # SIGTERM: finishes what it has, then exits 0
        kill_tree(crashed.process.pid)  # a crash of the whole instance
        crashed.process.wait(30)
        count = len(clients.seen)
        wait_for(lambda: len(clients.seen) >= count + 300, 120, "300 more answers after the drain and the crash")
    finally:
        clients.stop()
    assert clients.failures == [], clients.failures[:5]
    assert {status for status, _ in clients.seen} == {200}
    late = Counter(replica for _, replica in clients.seen[count:])
    assert late[f"127.0.0.1:{survivor.port}"] >= 300  # the survivor took over
    shutil.rmtree(crashed.runtime, ignore_errors=True)
