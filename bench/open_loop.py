"""Open-loop load: requests start on a fixed schedule, whatever the server does.

Closed-loop clients (bench/load.py) wait for each answer before sending the next, so an
overloaded server slows its clients down and never sees more than it can take. Real traffic does
not wait. Here h2load (nghttp2's load generator, in C) opens a new connection for every request
at a fixed rate (in bursts every 20 ms or more) and logs each answer's status and time; a Python
generator cost the 2-core machine 4x the CPU and took a quarter of the server's capacity away
at 10x. While the last answers drain, a probe times how long until a lone request is answered
quickly again. Only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

PERIOD_MS = 20  # h2load starts a burst of connections every PERIOD_MS (longer at low rates)


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (share 0.99 for p99); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


@dataclass
class OpenLoopWindow:
    """What one window of open-loop arrivals got; latencies in milliseconds."""

    rate: float                    # arrivals per second, as h2load's bursts make it
    seconds: float
    sent: int
    statuses: dict[str, int]       # by HTTP status; "error": no answer (refused, reset, timed out)
    ok_per_s: float                # goodput: 200s completed within the window, per second
    ok_p50_ms: float | None
    ok_p99_ms: float | None
    ok_max_ms: float | None
    rejected_p50_ms: float | None  # the 503s
    rejected_p99_ms: float | None
    recovery_s: float | None       # from the last arrival to the first quick 200 (None: not asked, or never)
    client_cpu_s: float            # what h2load itself used

    def as_dict(self) -> dict:
        return asdict(self)


def h2load() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise RuntimeError("h2load is not installed (Debian: apt-get install nghttp2-client; make install-dev does)")
    return found


def _recovery(url: str, body: bytes, content_type: str, *, ended: float, quick_ms: float,
              timeout_s: float) -> float | None:
    """Seconds from `ended` until one request, sent alone, is answered 200 within `quick_ms`."""
    while time.monotonic() < ended:
        time.sleep(0.01)
    while time.monotonic() - ended < timeout_s:
        sent = time.monotonic()
        try:
            status = requests.post(url, data=body, headers={"Content-Type": content_type},
                                   timeout=timeout_s).status_code
        except requests.RequestException:
            status = 0
        if status == 200 and (time.monotonic() - sent) * 1000 <= quick_ms:
            return time.monotonic() - ended
        time.sleep(0.02)
    return None


def open_loop(url: str, body: bytes, content_type: str, *, rate: float, seconds: float,
              timeout_s: float = 60, quick_ms: float | None = None) -> OpenLoopWindow:
    """POST `body` to `url` at `rate` requests per second for `seconds`, each on its own connection;
    with `quick_ms`, also time how long until a lone request is answered within it (recovery)."""
    period_ms = max(PERIOD_MS, round(5000 / rate))  # bursts of 5 or more keep the rate close to `rate`
    per_period = max(1, round(rate * period_ms / 1000))
    count = max(1, round(per_period * 1000 / period_ms * seconds))
    recovery: list[float | None] = [None]
    with tempfile.TemporaryDirectory(prefix="kerasrv-open-loop-") as scratch:
        body_file, log_file = Path(scratch) / "body", Path(scratch) / "answers.tsv"
        body_file.write_bytes(body)
        command = [h2load(), "--h1", "-n", str(count), "-c", str(count), "-r", str(per_period),
                   "--rate-period", f"{period_ms}ms", "-T", f"{timeout_s:g}", "-d", str(body_file),
                   "-H", f"Content-Type: {content_type}", "--log-file", str(log_file), url]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.monotonic()
        generator = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        probe = None
        if quick_ms is not None:
            def run_probe() -> None:
                recovery[0] = _recovery(url, body, content_type, ended=began + seconds, quick_ms=quick_ms,
                                        timeout_s=timeout_s)
            probe = threading.Thread(target=run_probe)
            probe.start()
        output, _ = generator.communicate(timeout=seconds + 2 * timeout_s + 30)
        if probe is not None:
            probe.join(timeout_s + 30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if generator.returncode != 0 or not log_file.exists():
            raise RuntimeError(f"h2load failed ({generator.returncode}): {output.decode(errors='replace')[-2000:]}")
        rows = [line.split("\t") for line in log_file.read_text().splitlines() if line.count("\t") >= 2]
    start = min((int(row[0]) for row in rows), default=0)
    answers = [((int(row[0]) - start) / 1e6, int(row[2]) / 1000, row[1]) for row in rows]  # start s, ms, status
    statuses = Counter(status for _, _, status in answers)
    if count > len(answers):
        statuses["error"] = count - len(answers)
    ok = [ms for _, ms, status in answers if status == "200"]
    rejected = [ms for _, ms, status in answers if status == "503"]
    return OpenLoopWindow(
        rate=per_period * 1000 / period_ms, seconds=seconds, sent=count, statuses=dict(sorted(statuses.items())),
        ok_per_s=sum(status == "200" and at + ms / 1000 <= seconds for at, ms, status in answers) / seconds,
        ok_p50_ms=statistics.median(ok) if ok else None, ok_p99_ms=percentile(ok, 0.99),
        ok_max_ms=max(ok) if ok else None,
        rejected_p50_ms=statistics.median(rejected) if rejected else None,
        rejected_p99_ms=percentile(rejected, 0.99), recovery_s=recovery[0],
        client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )
