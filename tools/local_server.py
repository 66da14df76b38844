"""Start the real stack (app.launch -> supervisord -> nginx + uWSGI workers + mule) on loopback.

The end-to-end tests and the benchmark both run kerasrv this way: a free port chosen at run time,
a runtime directory of its own, readiness awaited through /health/ready, and SIGTERM to stop it
(the way Docker and systemd stop it). `wait_for` is the one way anything here waits for another
process: on a condition, with a bounded timeout, never on a fixed sleep.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import requests

from app.config import PROJECT_ROOT

T = TypeVar("T")
POLL_S = 0.05


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = POLL_S) -> T:
    """Call `condition` until it returns something truthy and return that; TimeoutError naming
    `what` after `timeout` seconds. `condition` may raise to give up early (a process died)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def run_checked(command: list[str], timeout: float = 600) -> str:
    """A command's stdout; an AssertionError with the tail of its output if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(command[:6])}...: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def world_readable_dir(prefix: str) -> Path:
    """A temp dir the unprivileged service user (nobody, when run as root) can enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _parents() -> dict[int, int]:
    """PID -> parent PID of every live process, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            found[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return found


def mappings(pid: int | str = "self") -> list[dict]:
    """Each memory mapping of a process (/proc/PID/smaps): start address, permissions, path, and its
    sizes in kB by field name ("Size", "Rss", ...)."""
    found: list[dict] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        name, _, rest = line.partition(":")
        if " " not in name:  # a field: "Rss:      12 kB", "VmFlags: rd mr"
            if rest.endswith(" kB"):
                found[-1][name] = int(rest.split()[0])
        else:  # a mapping's header: range, permissions, offset, device, inode, path
            fields = line.split(maxsplit=5)
            found.append({"start": int(fields[0].split("-")[0], 16), "perms": fields[1],
                          "path": fields[5] if len(fields) > 5 else ""})
    return found


def children(parent: int) -> list[int]:
    return [pid for pid, ppid in _parents().items() if ppid == parent]


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    below: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        below.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(below.get(pid, []))
    return found


def kill_tree(root: int) -> None:
    """SIGKILL `root` and everything below it, all frozen first (SIGSTOP) so that no parent
    respawns a child, and no child outlives its parent, between the kills."""
    everyone = descendants(root)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in everyone:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def mule_connections(mule: int, path: Path) -> list[int]:
    """Bytes not yet read on each of the mule's connections from worker threads, from `ss` (iproute2).

    Only SEQPACKET sockets accepted on the mule's own socket `path` count: the mule also holds
    sockets it inherited from the uWSGI master (its signal socketpairs), which may hold data too.
    With the mule stopped (SIGSTOP), one with unread bytes is one request waiting for it."""
    listing = subprocess.run(["ss", "-x", "-a", "-p", "-H"], capture_output=True, text=True, check=True).stdout
    owner = f"pid={mule},"
    return [int(fields[2]) for fields in map(str.split, listing.splitlines())
            if fields[0] == "u_seq" and fields[1] == "ESTAB" and fields[4] == str(path) and owner in fields[-1]]


def _wchan(pid: int) -> str:
    """Where the main thread of `pid` sleeps in the kernel (do_epoll_wait: in epoll_wait)."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/wchan").read_text()
    except OSError:
        return ""


def health(url: str, verify: str | bool = True) -> dict | None:
    """/health/ready's JSON body (with the HTTP status under "http_status"), or None if nothing answers."""
    try:
        response = requests.get(f"{url}/health/ready", timeout=5, verify=verify)
        return {**response.json(), "http_status": response.status_code}
    except (requests.RequestException, ValueError):  # not listening yet, or nginx's own page
        return None


class LocalServer:
    """One kerasrv on a free loopback port; WORKERS=2, THREADS=4 unless `env` says otherwise."""

    def __init__(self, env: dict[str, str] | None = None, name: str = "server"):
        self.port = free_port()
        self.runtime = world_readable_dir(f"kerasrv-{name}-")
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
        # with TLS, the helpers' own requests trust exactly the server's certificate
        self.verify: str | bool = self.env.get("TLS_CERT_FILE") or True
        self.url = f"{'https' if self.env.get('TLS_CERT_FILE') else 'http'}://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.token: str | None = None  # sent with the helpers' own requests when AUTH_TOKENS_FILE is set

    def start(self, wait_ready: bool = True, timeout: float = 120) -> LocalServer:
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.launch"], cwd=PROJECT_ROOT, env=self.env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        if wait_ready:
            self.wait_state("ready", timeout)
        return self

    def wait_state(self, state: str, timeout: float = 120) -> dict:
        """Wait until /health/ready reports `state` ("ready", "failed"); return its body."""

        def reached() -> dict | None:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            body = health(self.url, self.verify)
            return body if body and body.get("state") == state else None

        try:
            return wait_for(reached, timeout, f"server state {state!r}", interval=0.1)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last answer {health(self.url, self.verify)}:\n{self.log()}") from None

    def log(self, tail: int = 8000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stats(self) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return requests.get(f"{self.url}/stats", headers=headers, timeout=10, verify=self.verify).json()

    def mule_pid(self) -> int:
        """The mule publishes its PID in /stats."""
        return self.stats()["pid"]

    def connect_every_thread(self) -> None:
        """Send bursts of readiness checks until every worker thread holds its connection to the
        mule (a thread connects on its first request). A thread that has not connected cannot
        reach a stopped mule at all, so this comes before mule_stopped()."""
        threads = int(self.env["WORKERS"]) * int(self.env["THREADS"])
        mule = self.mule_pid()

        def all_connected() -> bool:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda _: health(self.url, self.verify), range(2 * threads)))
            return len(mule_connections(mule, self.mule_socket)) >= threads

        wait_for(all_connected, 120, f"all {threads} worker threads connected to the mule", interval=0)

    @contextmanager
    def mule_stopped(self) -> Iterator[int]:
        """The mule SIGSTOPped for the duration (its PID is yielded): requests pile up in its
        connections, where requests_waiting() counts them, until it goes on."""
        mule = self.mule_pid()  # a STATUS round trip: the mule may still be reading that connection
        # Stop it only once it waits in epoll_wait: stopped mid-read, it would go on to read that
        # connection alone on SIGCONT, before seeing the others, and batch its request alone.
        wait_for(lambda: _wchan(mule) == "do_epoll_wait", 30, "the mule idle in epoll_wait", interval=0.01)
        os.kill(mule, signal.SIGSTOP)
        try:
            yield mule
        finally:
            os.kill(mule, signal.SIGCONT)

    @property
    def mule_socket(self) -> Path:
        return self.runtime / "run" / "mule.sock"

    def requests_waiting(self, mule: int) -> int:
        """Worker requests waiting, unread, at the (stopped) mule."""
        return sum(unread > 0 for unread in mule_connections(mule, self.mule_socket))

    def master_pid(self) -> int:
        """uWSGI's master, from its pid file."""
        return int((self.runtime / "run" / "uwsgi.pid").read_text())

    def worker_pids(self) -> list[int]:
        mule = self.mule_pid() if self.env.get("INFERENCE_MODE", "mule") == "mule" else None
        return [pid for pid in children(self.master_pid()) if pid != mule]

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as `docker stop` sends it; after `timeout`, the whole tree is killed (supervisord
        alone would leave nginx and uWSGI running). The exit code; the runtime directory is
        removed only after a clean exit, so a failure's logs stay to be read."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.process.pid)
                self.process.wait()
        self._log.close()
        code = self.process.returncode
        if code == 0:
            shutil.rmtree(self.runtime, ignore_errors=True)
        return code
