"""The in-process ceiling: decode + preprocess a batch of request bodies, one model call on them,
serially, in a loop.

This is the most a single process doing the server's work (the same decode_image, normalize and
load_runner as the mule) can deliver on this machine, with no HTTP, no IPC and no idle time. For
the 12 MP workload the ceiling is the naive one (a full-size decode, then a resize), as a
hand-written server would do it. A tabular body is parsed with json.loads.
It runs in its own long-lived subprocess, so its TensorFlow runtime does not share a process with
the load generator, and it is told when to run over stdin so its windows alternate with the
server's. Protocol: one JSON object per line each way.

    -> {"cmd": "latency1", "n": 30}      <- {"latency1_ms": ..., "samples_ms": [...]}
    -> {"cmd": "window", "seconds": 5}   <- {"images": ..., "seconds": ..., "img_per_s": ..., ...}
    -> {"cmd": "window", "seconds": 5, "batch": 4}   (the same at another batch size)
    -> {"cmd": "quit"}
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import time
from typing import IO, Any

import numpy as np

from app.config import PROJECT_ROOT, Settings
from app.inference.batching import efficient_batch
from app.launch import MALLOC_DEFAULTS
from bench.workloads import WORKLOADS, Workload


class Ceiling:
    """Client side: starts `python -m bench.ceiling WORKLOAD` and sends it commands."""

    def __init__(self, workload: Workload, cpus: str | None = None, timeout: float = 300):
        # the server's malloc thresholds, so the ceiling is not slowed by page faults the server avoids
        env = {**MALLOC_DEFAULTS, **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, "-m", "bench.ceiling", workload.name]
        self.batch = workload.ceiling_batch
        if cpus:
            command = ["taskset", "-c", cpus, *command]
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.timeout = timeout
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        """One answer line; a ceiling process that hangs or dies ends the benchmark instead of stalling it."""
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not ready:
            self.process.kill()
            raise RuntimeError(f"the ceiling process did not answer within {self.timeout}s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the ceiling process exited with {self.process.wait(self.timeout)}")
        return json.loads(line)

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def latency1(self, n: int = 30) -> dict[str, Any]:
        return self._ask({"cmd": "latency1", "n": n})

    def window(self, seconds: float, batch: int | None = None) -> dict[str, Any]:
        return self._ask({"cmd": "window", "seconds": seconds, "batch": batch or self.batch})

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


class _Worker:
    """Server side: the same load_runner, decode_image and normalize that the server uses."""

    def __init__(self, workload: Workload):
        from app.inference.model_runner import load_runner  # noqa: PLC0415 - the only TensorFlow import

        self.workload = workload
        # TensorFlow's own thread spinning (kerasrv turns it off), as a plain script would run it
        self.settings = Settings.from_env({"MODEL_PATH": str(workload.model_path()), "PREPROCESS": workload.preprocess,
                                           "MAX_BATCH_SIZE": str(workload.ceiling_batch),
                                           "MODEL_THREAD_SPINNING": "on", "MODEL_CONCURRENCY": "1"})
        started = time.perf_counter()
        self.runner = load_runner(self.settings)
        self.load_s = time.perf_counter() - started
        self.spec = self.runner.spec
        self.bodies = workload.bodies()
        self.rows = np.empty((self.runner.max_batch, *self.spec.input.shape), dtype=self.spec.input.dtype)

    def _prepare(self, count: int, offset: int = 0) -> None:
        for i in range(count):
            self.workload.fill_row(self.bodies[(offset + i) % len(self.bodies)], self.spec, self.settings, self.rows[i])

    def latency1(self, n: int) -> dict[str, Any]:
        samples = []
        for i in range(n):
            started = time.perf_counter()
            self._prepare(1, offset=i)
            self.runner.run([self.rows[:1]])
            samples.append((time.perf_counter() - started) * 1000)
        return {"latency1_ms": statistics.median(samples), "samples_ms": [round(s, 3) for s in samples]}

    def window(self, seconds: float, batch: int) -> dict[str, Any]:
        """Whole batches until `seconds` have passed; the rate counts only batches that finished."""
        prepare_ms, model_ms = [], []
        started = time.perf_counter()
        deadline = started + seconds
        batches = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            self._prepare(batch, offset=batches)
            t1 = time.perf_counter()
            self.runner.run([self.rows[:batch]])
            t2 = time.perf_counter()
            prepare_ms.append((t1 - t0) * 1000)
            model_ms.append((t2 - t1) * 1000)
            batches += 1
        elapsed = time.perf_counter() - started
        return {
            "batch": batch,
            "images": batches * batch,
            "batches": batches,
            "seconds": elapsed,
            "img_per_s": batches * batch / elapsed,
            "prepare_ms_per_batch": statistics.median(prepare_ms),
            "model_ms_per_batch": statistics.median(model_ms),
        }


def _serve(workload: Workload, out: IO[str]) -> None:
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    worker = _Worker(workload)

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    send({
        "ready": True, "load_s": worker.load_s, "tf_version": tf.__version__, "keras_version": keras.__version__,
        "input": list(worker.spec.input.shape), "buckets": list(worker.runner.buckets), "batch": workload.ceiling_batch,
        "batch_cost_ms": worker.runner.batch_costs_ms, "efficient_batch": efficient_batch(worker.runner.batch_costs_ms),
        "compiled_buckets": list(worker.runner.compiled_buckets),
    })
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return
        if command["cmd"] == "latency1":
            send(worker.latency1(int(command.get("n", 30))))
        elif command["cmd"] == "window":
            send(worker.window(float(command["seconds"]), int(command["batch"])))
        else:
            send({"error": f"unknown command {command['cmd']!r}"})


if __name__ == "__main__":
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _serve(WORKLOADS[sys.argv[1]], protocol)
