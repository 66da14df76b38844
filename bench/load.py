"""The load generator: closed-loop, keep-alive clients POSTing photos, for one timed window.

wrk (C, one epoll thread) is the default because it costs the 2-core machine far less CPU per
request than any Python client, so the server keeps nearly all of the CPU it is measured on. The
Python client (http.client, one thread per connection) is the fallback when wrk cannot be had.
Both only ever talk to 127.0.0.1 and both stop at the end of their window.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Runs inside wrk: alternates the requests (each file holds a path line, header lines, a blank line
# and the body), counts non-200 answers and the X-Batch-Size header per thread, and prints one JSON
# line (latencies in microseconds) when the window ends.
WRK_SCRIPT = r"""
local requests_ = {}
local threads = {}
non200 = 0
batch_rows = 0
batch_answers = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for i, path in ipairs(args) do
    local f = assert(io.open(path, "rb"))
    local raw = f:read("*all")
    f:close()
    local head_end = assert(raw:find("\r\n\r\n", 1, true))
    local lines = {}
    for line in (raw:sub(1, head_end - 1) .. "\r\n"):gmatch("(.-)\r\n") do
      table.insert(lines, line)
    end
    local headers = {}
    for j = 2, #lines do
      local name, value = lines[j]:match("^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    requests_[i] = wrk.format("POST", lines[1], headers, raw:sub(head_end + 4))
  end
  counter = 0
end

function request()
  counter = counter + 1
  return requests_[(counter % #requests_) + 1]
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
  local size = headers["X-Batch-Size"] or headers["x-batch-size"]
  if size then
    batch_rows = batch_rows + tonumber(size)
    batch_answers = batch_answers + 1
  end
end

function done(summary, latency, requests)
  local n200, rows, answers = 0, 0, 0
  for _, thread in ipairs(threads) do
    n200 = n200 + thread:get("non200")
    rows = rows + thread:get("batch_rows")
    answers = answers + thread:get("batch_answers")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "non200": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "max_us": %d, "batch_rows": %d, "batch_answers": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, n200,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    rows, answers))
end
"""


@dataclass(frozen=True)
class Request:
    """One HTTP POST the clients send in turn: kerasrv takes a raw JPEG, Triton a KServe v2 body."""

    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def as_file(self) -> bytes:
        head = [self.path, *(f"{name}: {value}" for name, value in self.headers)]
        return "\r\n".join(head).encode() + b"\r\n\r\n" + self.body


def jpeg_requests(photos: list[bytes]) -> list[Request]:
    """kerasrv's simplest form: the photo as a raw image/jpeg body."""
    return [Request("/predict", (("Content-Type", "image/jpeg"),), photo) for photo in photos]


@dataclass
class Window:
    """One load window as the client saw it; latencies in milliseconds."""

    client: str
    concurrency: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    error_detail: dict[str, int] = field(default_factory=dict)
    client_batch_mean: float | None = None  # mean X-Batch-Size seen per answer (weights big batches more)
    client_cpu_s: float = 0.0  # CPU the load generator itself used in the window

    def as_dict(self) -> dict:
        return asdict(self)


def ensure_wrk() -> str | None:
    """wrk's path; installs the Debian package when running as root and it is missing."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            return None
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


class Load:
    """Runs windows of closed-loop clients, with wrk when it can."""

    def __init__(self, use_wrk: bool = True, cpus: str | None = None, timeout_s: int = 60):
        self.cpus = cpus
        self.timeout_s = timeout_s
        self.wrk = ensure_wrk() if use_wrk else None
        self.client = "wrk" if self.wrk else "python"
        self._dir = Path(tempfile.mkdtemp(prefix="kerasrv-bench-load-"))
        self._script = self._dir / "post.lua"
        self._script.write_text(WRK_SCRIPT)
        self._files: dict[tuple[Request, ...], list[Path]] = {}

    def _request_files(self, requests: list[Request]) -> list[Path]:
        key = tuple(requests)
        if key not in self._files:
            paths = [self._dir / f"request{len(self._files)}-{i}" for i in range(len(requests))]
            for path, request in zip(paths, requests):
                path.write_bytes(request.as_file())
            self._files[key] = paths
        return self._files[key]

    def version(self) -> str:
        if not self.wrk:
            return "python http.client threads"
        out = subprocess.run([self.wrk, "--version"], capture_output=True, text=True, check=False)
        return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()

    def window(self, url: str, concurrency: int, seconds: float, requests: list[Request]) -> Window:
        if self.wrk:
            return self._wrk_window(url, concurrency, seconds, requests)
        return _python_window(url, requests, concurrency, seconds, self.timeout_s)

    def _wrk_window(self, url: str, concurrency: int, seconds: float, requests: list[Request]) -> Window:
        command = [
            self.wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", f"--timeout={self.timeout_s}s",
            "-s", str(self._script), url, "--", *map(str, self._request_files(requests)),
        ]
        if self.cpus:
            command = ["taskset", "-c", self.cpus, *command]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + self.timeout_s + 30,
                              check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        duration = raw["duration_us"] / 1e6
        detail = {k: raw[k] for k in ("connect", "read", "write", "timeout", "non200")}
        return Window(
            client="wrk", concurrency=concurrency, seconds=duration, requests=raw["requests"],
            rps=raw["requests"] / duration if duration else 0.0,
            p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
            mean_ms=raw["mean_us"] / 1000, max_ms=raw["max_us"] / 1000,
            # wrk's "status" (>399) is a subset of non200; a failed socket is counted once
            errors=sum(detail.values()), error_detail=detail,
            client_batch_mean=raw["batch_rows"] / raw["batch_answers"] if raw["batch_answers"] else None,
            client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        )

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _python_window(url: str, requests: list[Request], concurrency: int, seconds: float, timeout_s: int) -> Window:
    """Fallback client: one thread and one keep-alive connection per concurrent client."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors = {"exception": 0, "non200": 0}
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
        n = index
        while time.perf_counter() < deadline:
            request = requests[n % len(requests)]
            n += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", request.path, body=request.body, headers=dict(request.headers))
                answer = conn.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException):
                with lock:
                    errors["exception"] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
                continue
            elapsed = time.perf_counter() - t0
            if time.perf_counter() > deadline:
                break  # finished after the window: not counted, like wrk
            with lock:
                latencies.append(elapsed * 1000)
                if answer.status != 200:
                    errors["non200"] += 1
                size = answer.getheader("X-Batch-Size")
                if size:
                    batch_sizes.append(int(size))
            if answer.will_close:
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
        conn.close()

    cpu0 = time.process_time()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout_s + 5)
    cpu = time.process_time() - cpu0
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else 0.0

    return Window(
        client="python", concurrency=concurrency, seconds=seconds, requests=len(lat), rps=len(lat) / seconds,
        p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99), mean_ms=statistics.fmean(lat) if lat else 0.0,
        max_ms=lat[-1] if lat else 0.0, errors=sum(errors.values()), error_detail=errors,
        client_batch_mean=statistics.fmean(batch_sizes) if batch_sizes else None, client_cpu_s=cpu,
    )
