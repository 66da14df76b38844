"""The systemd unit under a real, booted systemd, installed the way the README says.

A Debian bookworm root filesystem made with mmdebstrap boots under `systemd-nspawn --boot` with
this checkout bound read-only at /src and its own network namespace (only loopback, so its port 80
is its own and nothing in it can reach the network). `/src/systemd/install.sh` then installs it as
on a fresh host: pip takes the pinned packages from a wheelhouse that the test downloads first,
since the machine has no network; the apt packages the script would install are in the root
filesystem already. Commands run inside through nsenter; HTTP reaches the machine's loopback from
threads of this process that joined its network namespace. Needs root and mmdebstrap,
systemd-nspawn (`make install-dev` installs them as root).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import requests

from app.config import PROJECT_ROOT
from tools.local_server import children, run_checked, wait_for
from training.digits import heldout_split, render_png

T = TypeVar("T")
TOOLS = ("mmdebstrap", "systemd-nspawn", "nsenter")
# What the root filesystem holds: a minimal Debian with systemd and procps (both on any standard
# install), and what scripts/install.sh would apt-install (nginx, the compiler, Python's headers).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps", "python3", "python3-venv", "python3.11-dev",
            "gcc", "libc6-dev", "nginx")
URL = "http://127.0.0.1"  # port 80 of the machine's own loopback: the unit's default PORT
CLONE_NEWNET = 0x40000000
EXPOSURE_LIMIT = 2.0  # `systemd-analyze security`: 0 is best, 10 worst; under 2.0 reads "OK"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="booting a systemd machine needs root (systemd-nspawn)"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                       reason=f"needs {', '.join(TOOLS)} (Debian: mmdebstrap systemd-container util-linux)"),
]


def join_network(pid: int) -> None:
    """Move the calling thread (only it: setns acts per thread) into the network namespace of `pid`."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/proc/{pid}/ns/net") as namespace:
        if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")


@dataclass
class Machine:
    """A booted Debian with systemd as `init` (its PID here); `http` runs calls in its network."""

    init: int
    http: ThreadPoolExecutor

    def sh(self, command: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["nsenter", "--target", str(self.init), "--all", "/bin/sh", "-c", command],
                              capture_output=True, text=True, timeout=timeout, check=False)
        output = f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        assert not check or done.returncode == 0, f"{command}: exit {done.returncode}\n{output}"
        return done

    def on_network(self, call: Callable[..., T], *args, **kwargs) -> T:
        return self.http.submit(call, *args, **kwargs).result()

    def show(self, prop: str) -> str:
        return self.sh(f"systemctl show --value -p {prop} kerasrv").stdout.strip()

    def ready(self, timeout: float = 180) -> dict:
        def state() -> dict | None:
            if self.show("ActiveState") == "failed":
                raise AssertionError(self.sh("journalctl -u kerasrv --no-pager -n 60").stdout)
            try:
                answer = self.on_network(requests.get, f"{URL}/health/ready", timeout=5)
            except requests.RequestException:
                return None
            return answer.json() if answer.status_code == 200 else None

        return wait_for(state, timeout, "kerasrv ready under systemd", interval=0.5)

    def predicts(self, count: int = 5) -> None:
        _, _, pictures, labels = heldout_split()
        for picture, label in zip(pictures[:count], labels[:count]):
            answer = self.on_network(requests.post, f"{URL}/predict", data=render_png(picture),
                                     headers={"Content-Type": "image/png"}, timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["index"] == label


@pytest.fixture(scope="module")
def machine():
    scratch = Path(tempfile.mkdtemp(prefix="kerasrv-systemd-", dir="/var/tmp"))
    wheels, root = scratch / "wheels", scratch / "root"
    run_checked([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                 "--dest", str(wheels), "-r", str(PROJECT_ROOT / "requirements.txt"), "setuptools", "wheel"])
    run_checked(["mmdebstrap", "--variant=minbase", "--quiet", f"--include={','.join(PACKAGES)}", "bookworm",
                 str(root)])
    console = tempfile.TemporaryFile()
    nspawn = subprocess.Popen(
        ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet", "--private-network",
         "-D", str(root), f"--bind-ro={PROJECT_ROOT}:/src", f"--bind-ro={wheels}:/wheels"],
        stdout=console, stderr=subprocess.STDOUT)
    http = None
    try:
        init = wait_for(lambda: children(nspawn.pid) if nspawn.poll() is None else [-1], 60, "the machine's init")[0]
        assert init > 0, "systemd-nspawn exited"
        http = ThreadPoolExecutor(8, initializer=join_network, initargs=(init,))
        box = Machine(init, http)
        wait_for(lambda: box.sh("systemctl is-system-running", check=False).stdout.strip() in {"running", "degraded"},
                 120, "the machine booted", interval=0.5)
        yield box
    finally:
        if http is not None:
            http.shutdown(wait=False, cancel_futures=True)
        nspawn.send_signal(signal.SIGTERM)  # a clean halt of the machine
        try:
            nspawn.wait(120)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(machine):
    """`systemd/install.sh` as root, as the README says; the log it printed."""
    log = machine.sh("PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels /src/systemd/install.sh 2>&1").stdout
    # the script leaves an nginx.service it did not install alone, and says what to do about it
    assert "nginx.service is running" in log and "systemctl disable --now nginx" in log, log
    machine.sh("systemctl disable --now nginx")
    return log


@pytest.fixture(scope="module")
def started(machine, installed):
    machine.sh("systemctl enable --now kerasrv")
    machine.ready()
    return machine


def test_the_unit_verifies_and_is_hardened(machine, installed):
    verify = machine.sh("systemd-analyze verify kerasrv.service 2>&1")
    assert verify.stdout.strip() == "", verify.stdout
    report = machine.sh("systemd-analyze security --no-pager kerasrv 2>&1").stdout
    score = float(re.search(r"Overall exposure level for kerasrv\.service: ([\d.]+)", report)[1])
    print(f"systemd-analyze security kerasrv: exposure {score}")
    assert score <= EXPOSURE_LIMIT, report


def test_it_serves_as_the_service_user_with_one_capability(started):
    started.predicts()
    members = [path.split("/")[2] for path in
               started.sh("grep -l kerasrv.service /proc/[0-9]*/cgroup", check=False).stdout.split()]
    kerasrv_uid = started.sh("id -u kerasrv").stdout.strip()
    names: Counter[str] = Counter()
    for pid in members:
        status = dict(line.split(":\t", 1) for line in started.sh(f"cat /proc/{pid}/status").stdout.splitlines()
                      if ":\t" in line)
        names[status["Name"]] += 1
        assert status["Uid"].split()[0] == kerasrv_uid, status["Name"]  # nothing runs as root
        assert int(status["CapBnd"], 16) == 1 << 10, status["Name"]    # CAP_NET_BIND_SERVICE alone
    assert names["uwsgi"] >= 3 and names["nginx"] >= 2, names         # master, workers, mule; nginx


def test_its_logs_are_in_the_journal(started):
    """The mule's line, and supervisord's, which comes once nginx has run 5 s (its startsecs)."""
    def logged() -> bool:
        journal = started.sh("journalctl -u kerasrv --no-pager -o cat").stdout
        return "model digits version 1 loaded" in journal and "nginx entered RUNNING state" in journal

    wait_for(logged, 30, "the mule's and supervisord's lines in the journal", interval=0.5)


def statuses_while(machine: Machine, action: Callable[[], T], clients: int = 4) -> tuple[T, Counter]:
    """Run `action` while `clients` threads post digits, and what they were answered. A client
    whose connection fails stops there, counted as "closed" if the action had begun (a stopping
    server closes its listener) and as "failed" otherwise; the others stop once the action is done."""
    seen: Counter = Counter()
    lock, acting, done = threading.Lock(), threading.Event(), threading.Event()
    png = render_png(heldout_split()[2][0])

    def client() -> None:
        with requests.Session() as session:
            while not done.is_set():
                try:
                    status = session.post(f"{URL}/predict", data=png, headers={"Content-Type": "image/png"},
                                          timeout=30).status_code
                except requests.ConnectionError:
                    status = "closed" if acting.is_set() else "failed"
                with lock:
                    seen[status] += 1
                if not isinstance(status, int):
                    return

    running = [machine.http.submit(client) for _ in range(clients)]
    wait_for(lambda: seen[200] >= 20, 60, "requests under way")
    acting.set()
    try:
        result = action()
    finally:
        done.set()
        for future in running:
            future.result(60)
    return result, seen


def test_reload_keeps_serving(started):
    """`systemctl reload`: SIGHUP to the launcher, which asks the mule for the model's version
    (the same one here) and, without TLS, leaves nginx and its keep-alive connections alone."""
    main = started.show("MainPID")
    journal = "journalctl -u kerasrv --no-pager -o cat --grep 'nothing to load'"
    before = len(started.sh(journal, check=False).stdout.splitlines())
    _, seen = statuses_while(started, lambda: (
        started.sh("systemctl reload kerasrv"),
        wait_for(lambda: len(started.sh(journal, check=False).stdout.splitlines()) > before, 30,
                 "the mule's answer in the journal")))
    assert set(seen) == {200}, seen
    assert started.show("MainPID") == main


def test_restart_and_crash_start_it_again(started):
    first = started.show("MainPID")
    started.sh("systemctl restart kerasrv")
    started.ready()
    second = started.show("MainPID")
    assert second != first
    started.sh(f"kill -9 {second}")  # the launcher crashes: Restart=on-failure
    wait_for(lambda: started.show("MainPID") not in {"0", second}, 60, "a new main process")
    started.ready()
    started.predicts(1)
    assert int(started.show("NRestarts")) >= 1


def test_stop_drains_in_flight_requests(started):
    _, seen = statuses_while(started, lambda: started.sh("systemctl stop kerasrv", timeout=120))
    assert set(seen) <= {200, "closed"} and seen[200] >= 20, seen  # answered, or refused once closed
    assert started.show("ActiveState") == "inactive" and started.show("Result") == "success"
    assert started.show("ExecMainStatus") == "0"
    assert started.sh("pgrep -u kerasrv", check=False).stdout == ""  # nothing left behind
