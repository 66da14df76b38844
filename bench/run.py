"""`python -m bench.run` (`make bench`): the in-process ceiling vs the server vs its peers, for one
workload (bench/workloads.py: MobileNetV2 photos, a small CNN, a tabular MLP, a 12 MP photo).

This machine's speed drifts by 30% and more within minutes, so no number is compared with one
taken minutes apart: every server window is paired with a ceiling window run just before it, and
the ratio within each pair is what the report keeps (the median over pairs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from app.config import PROJECT_ROOT
from app.launch import MALLOC_DEFAULTS
from bench import report
from bench.ceiling import Ceiling
from bench.load import Load, Request
from bench.servers import Kerasrv, Recipe, Triton, memory, system_busy_seconds, wait_idle
from bench.servers import cpu_seconds as tree_cpu
from bench.workloads import WORKLOADS

KINDS = ("mule", "worker", "recipe", "triton")  # triton: only when asked for (make bench-triton)
DEFAULT_KINDS = {"mobilenet": "mule,worker,recipe"}  # the recipe is written for MobileNetV2; others: mule
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
RACE_CLIENTS, RACE_LOAD_S = 32, 180.0  # load for MODEL_CONCURRENCY=auto's race before the rows


def server_env(kind: str, args: argparse.Namespace, workers: int | None = None) -> dict[str, str]:
    """The settings each kind runs with; recorded in the results."""
    workload = WORKLOADS[args.workload]
    env = {"MODEL_PATH": str(workload.model_path()), "PREPROCESS": workload.preprocess, "HOST": "127.0.0.1",
           "LOG_LEVEL": "info"}
    if kind == "mule":
        env |= {"INFERENCE_MODE": "mule", "WORKERS": str(workers or args.workers), "THREADS": str(args.threads),
                "MAX_BATCH_SIZE": str(args.max_batch), "BATCH_AUTOTUNE": args.batch_autotune,
                "MODEL_THREADS": str(args.model_threads), "MODEL_CONCURRENCY": args.model_concurrency}
    else:
        env |= {"INFERENCE_MODE": "worker", "WORKERS": str(workers or args.worker_mode_workers), "THREADS": "1"}
    return env


def start_server(kind: str, args: argparse.Namespace, probe: bytes) -> Kerasrv | Recipe | Triton:
    workload = WORKLOADS[args.workload]
    if kind in ("recipe", "triton"):
        server = Recipe(workload) if kind == "recipe" else Triton(workload, args.triton_python)
        server.start(probe)
        return server
    server = Kerasrv(kind, server_env(kind, args), workload)
    server.start()
    return server


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _mule_batches(before: dict | None, after: dict | None) -> dict[str, Any]:
    """Rows per model call in the window, from the mule's own counters."""
    if not before or not after:
        return {"mean_batch": 1.0, "batches": None, "rows": None, "batch_sizes": None}
    batches = after["batches"] - before["batches"]
    rows = after["rows"] - before["rows"]
    sizes = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    return {
        "mean_batch": rows / batches if batches else 0.0, "batches": batches, "rows": rows,
        "batch_sizes": {k: v for k, v in sizes.items() if v},
        "failed": after.get("failed", 0) - before.get("failed", 0),
        "overloaded": after.get("overloaded", 0) - before.get("overloaded", 0),
        "expired": after.get("expired", 0) - before.get("expired", 0),
        "batch_limit": after.get("batch_limit"),
        "model_concurrency": after.get("model_concurrency"),
        "compiled_buckets": after.get("compiled_buckets"),
    }


def measure_pair(server: Kerasrv | Recipe | Triton, concurrency: int, args: argparse.Namespace, ceiling: Ceiling,
                 load: Load, *, requests: list[Request]) -> dict[str, Any]:
    """A ceiling window, then a server window right after it, with what else used the CPU meanwhile."""
    lat1 = ceiling.latency1(args.latency_samples)
    busy0, own0 = system_busy_seconds(), tree_cpu(ceiling.process.pid)
    ceil = ceiling.window(args.window)
    busy1, own1 = system_busy_seconds(), tree_cpu(ceiling.process.pid)
    ceil["cpu_cores"] = (own1 - own0) / ceil["seconds"]  # how much of the machine it keeps busy
    # CPU that other processes on this shared machine took during the window
    ceil["other_cpu_cores"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / ceil["seconds"]
    stats0 = server.stats()
    cpu0, busy0 = tree_cpu(server.root), system_busy_seconds()
    window = load.window(server.url, concurrency, args.window, requests)
    cpu1, busy1 = tree_cpu(server.root), system_busy_seconds()
    mem = memory(server.root)
    stats1 = server.stats()
    drained = wait_idle(server.root)
    return {
        "ceiling": ceil, "latency1_ms": lat1["latency1_ms"], "server": window.as_dict(),
        "batches": _mule_batches(stats0, stats1),
        "server_cpu_cores": (cpu1 - cpu0) / window.seconds,
        "other_cpu_cores": max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - window.client_cpu_s) / window.seconds,
        "memory": mem, "drain_s": drained, "ratio": window.rps / ceil["img_per_s"],
    }


def best_batch_ceiling(ceiling: Ceiling, args: argparse.Namespace) -> dict[str, Any]:
    """The issue's ceiling runs batches of 16, but on a CPU a smaller batch can cost less per row
    (app.inference.batching.efficient_batch; the mule uses it). Alternate windows of the ceiling at
    both sizes, so the report can also compare the server with the ceiling at its own best batch."""
    best = ceiling.info.get("efficient_batch") or ceiling.info["batch"]
    result: dict[str, Any] = {"batch": best, "batch_cost_ms": ceiling.info.get("batch_cost_ms"), "pairs": []}
    if best == ceiling.info["batch"]:
        result["ratio"] = 1.0
        return result
    for _ in range(args.pairs):
        at_16, at_best = ceiling.window(args.window), ceiling.window(args.window, batch=best)
        result["pairs"].append({"img_per_s": at_16["img_per_s"], "best_img_per_s": at_best["img_per_s"],
                                "ratio": at_best["img_per_s"] / at_16["img_per_s"]})
    result["ratio"] = statistics.median(pair["ratio"] for pair in result["pairs"])
    _log(f"ceiling at batch {best}: x{result['ratio']:.2f} the batch-{ceiling.info['batch']} ceiling")
    return result


def measure_kind(kind: str, args: argparse.Namespace, ceiling: Ceiling, load: Load,
                 bodies: list[bytes]) -> dict[str, Any]:
    """All concurrencies of one server kind: a warm-up, then `pairs` x [ceiling window, server window].

    A server that dies during a row (Triton's Python backend once crashed with SIGSEGV in the
    middle of a run) is started once more and that row measured anew, so the run keeps its
    comparison; the crash stays in the problems and its log in `crash_log`.
    """
    _log(f"starting {kind}")
    started = time.monotonic()
    server = start_server(kind, args, bodies[0])
    result: dict[str, Any] = {"kind": kind, "start_s": time.monotonic() - started, "rows": [], "problems": []}
    result["env"] = server.env if kind in ("mule", "worker") else {"command": " ".join(server.command)}
    restarts = 1
    try:
        if kind == "mule":
            result["race_s"] = settle_concurrency_race(server, load, server.load_requests(bodies))
        for concurrency in args.concurrency:
            while True:
                try:
                    result["rows"].append(measure_row(server, concurrency, args, ceiling, load, kind=kind,
                                                      bodies=bodies, problems=result["problems"]))
                    break
                except Exception as exc:
                    if server.alive() or not restarts:
                        raise
                    restarts -= 1
                    result["problems"].append(f"c={concurrency}: the server died ({type(exc).__name__}: {exc});"
                                              " started again, the row measured anew")
                    _log(f"{kind} died at c={concurrency}: starting it again")
                    result["crash_log"] = server.log(20000)
                    server.stop()
                    server = start_server(kind, args, bodies[0])
    except Exception as exc:
        result["problems"].append(f"aborted: {type(exc).__name__}: {exc}")
        _log(f"{kind} aborted: {exc}")
    finally:
        if result["problems"]:
            result["log_tail"] = server.log(20000)
        result["exit_code"] = server.stop()
    return result


def settle_concurrency_race(server: Kerasrv, load: Load, requests: list[Request]) -> float | None:
    """MODEL_CONCURRENCY=auto times its counts on the first load that keeps the model busy; load
    the mule until it has chosen (at most RACE_LOAD_S), so every row measures the chosen count.
    None: no race (a fixed count, or batches cheap enough for the mule's loop)."""
    if not (server.stats() or {}).get("model_concurrency_racing"):
        return None
    began = time.monotonic()
    while time.monotonic() - began < RACE_LOAD_S:
        stats = server.stats() or {}
        if not stats.get("model_concurrency_racing"):
            break
        load.window(server.url, RACE_CLIENTS, 15.0, requests)
    took = time.monotonic() - began
    stats = server.stats() or {}
    _log(f"mule: {stats.get('model_concurrency')} model call(s) at once after {took:.0f} s of load"
         + (" (still racing)" if stats.get("model_concurrency_racing") else ""))
    return took


def measure_row(server: Kerasrv | Recipe | Triton, concurrency: int, args: argparse.Namespace, ceiling: Ceiling,
                load: Load, *, kind: str, bodies: list[bytes], problems: list[str]) -> dict[str, Any]:
    """One concurrency: a warm-up, then `pairs` x [ceiling window, server window].

    A pair during which other processes took more than --max-other-load cores (in either window)
    is run again, at most --retries times per row; the rejected pairs stay in the raw data.
    """
    requests = server.load_requests(bodies)
    warm = load.window(server.url, concurrency, args.warmup, requests)
    drained = wait_idle(server.root)
    _log(f"{kind} c={concurrency}: warm-up {warm.rps:.1f} req/s, {warm.errors} errors, drained {drained:.1f}s")
    pairs: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    while len(pairs) < args.pairs and len(rejected) <= args.retries:
        pair = measure_pair(server, concurrency, args, ceiling, load, requests=requests)
        window, ceil = pair["server"], pair["ceiling"]
        other = max(ceil["other_cpu_cores"], pair["other_cpu_cores"])
        # the last allowed attempt is kept whatever the load, so every row gets its pairs
        keep = other <= args.max_other_load or len(rejected) == args.retries
        pair["pair"] = len(pairs) if keep else None
        if not pairs:
            pair["memory_per_process"] = pair["memory"]["per_process"]
        del pair["memory"]["per_process"]
        (pairs if keep else rejected).append(pair)
        _log(f"{kind} c={concurrency} {'pair ' + str(pair['pair']) if keep else 'REJECTED'}:"
             f" ceiling {ceil['img_per_s']:.1f} img/s, server {window['rps']:.1f} req/s"
             f" (x{pair['ratio']:.2f}), p50 {window['p50_ms']:.0f} ms, p99 {window['p99_ms']:.0f} ms,"
             f" batch {pair['batches']['mean_batch']:.2f}, errors {window['errors']},"
             f" cpu {ceil['cpu_cores']:.2f}/{pair['server_cpu_cores']:.2f},"
             f" other load {ceil['other_cpu_cores']:.2f}/{pair['other_cpu_cores']:.2f} cores")
        if window["errors"]:
            problems.append(f"c={concurrency}: {window['errors']} errors in a window {window['error_detail']}")
        if not server.alive():
            raise RuntimeError(f"{kind} server exited during the run:\n{server.log()}")
    return {"concurrency": concurrency, "warmup": warm.as_dict(), "pairs": pairs, "rejected": rejected}


def memory_probe(args: argparse.Namespace, load: Load, photos: list[bytes]) -> list[dict[str, Any]]:
    """Mule mode with other worker counts: the model must stay a single copy however many workers run."""
    found = []
    for workers in args.memory_probe_workers:
        _log(f"memory probe: mule mode with {workers} workers")
        server = Kerasrv("mule", server_env("mule", args, workers=workers), WORKLOADS[args.workload],
                         label=f"mule-{workers}w")
        entry: dict[str, Any] = {"workers": workers, "threads": args.threads}
        try:
            server.start()
            concurrency = workers * args.threads  # every worker thread busy at once
            window = load.window(server.url, concurrency, max(args.warmup, 3), server.load_requests(photos))
            mem = memory(server.root)
            entry |= {"concurrency": concurrency, "rps": window.rps, "errors": window.errors, "memory": mem}
        except Exception as exc:
            entry["problem"] = f"{type(exc).__name__}: {exc}"
            entry["log_tail"] = server.log(20000)
        finally:
            entry["exit_code"] = server.stop()
        found.append(entry)
    return found


def machine_info(load: Load, ceiling: Ceiling, triton_python: str = "") -> dict[str, Any]:
    def first_line(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "not found"
        return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]

    # a VM may name its CPU only "AMD EPYC": family, model and AVX-512 tell the generations apart
    first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    cpu = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    cpu = {key.strip(): value.strip() for key, value in cpu.items()}
    cpu_model = (f"{cpu.get('model name', platform.processor())}, family {cpu.get('cpu family', '?')}"
                 f" model {cpu.get('model', '?')}" + (", AVX-512" if "avx512f" in cpu.get("flags", "").split() else ""))
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))

    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": cpu_model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1), "kernel": platform.release(),
        "python": platform.python_version(), "tensorflow": ceiling.info.get("tf_version"),
        "keras": ceiling.info.get("keras_version"), "numpy": version("numpy"), "pillow": version("pillow"),
        "flask": version("flask"), "ceiling_compiled_buckets": ceiling.info.get("compiled_buckets"),
        "uwsgi": first_line([str(Path(sys.executable).parent / "uwsgi"), "--version"]),
        "nginx": first_line([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "client": load.version(), "user": os.getenv("USER") or str(os.geteuid()),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "pytriton": triton_python and first_line(
            [triton_python, "-c", "from importlib.metadata import version; print(version('nvidia-pytriton'))"]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, help="seconds per measured window (default 5)")
    parser.add_argument("--pairs", type=int, help="[ceiling, server] window pairs per row (default 5)")
    parser.add_argument("--concurrency", help="client connections, comma-separated (default 1,4,16,32,64)")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="mobilenet",
                        help="what to measure (bench/workloads.py; default mobilenet)")
    parser.add_argument("--kinds", help=f"servers to measure, of {','.join(KINDS)}"
                                         " (default mule,worker,recipe for mobilenet, mule for the others; and triton"
                                         " when TRITON_PYTHON is set)")
    parser.add_argument("--triton-python", default=os.environ.get("TRITON_PYTHON", ""),
                        help="the Python of a venv with bench/requirements-triton.txt (or TRITON_PYTHON)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each concurrency (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 s windows, 2 pairs, concurrency 1,16, no memory probe;"
                             " writes <date>-quick.* and leaves latest.md alone")
    parser.add_argument("--workers", type=int, help="mule mode WORKERS (default: the workload's, 4 or 2)")
    parser.add_argument("--threads", type=int, help="mule mode THREADS (default: the workload's, 4 or 16)")
    parser.add_argument("--model-threads", type=int,
                        help="mule mode MODEL_THREADS (default: the workload's, 1 for the cheap models, else 0)")
    parser.add_argument("--max-batch", type=int, help="mule mode MAX_BATCH_SIZE (default: the workload's, 16 or 32)")
    parser.add_argument("--batch-autotune", choices=("on", "off"), default="on",
                        help="mule mode BATCH_AUTOTUNE; off runs batches of up to MAX_BATCH_SIZE whatever each"
                             " size costs per row on this machine")
    parser.add_argument("--model-concurrency", default="auto",
                        help="mule mode MODEL_CONCURRENCY (default auto: the mule races the counts on the load first)")
    parser.add_argument("--worker-mode-workers", type=int, default=4, help="worker mode WORKERS, THREADS=1")
    parser.add_argument("--memory-probe-workers",
                        help="mule mode worker counts for the one-model-copy check (default 2,8 for mobilenet;"
                             " '' to skip)")
    parser.add_argument("--max-other-load", type=float, default=0.25,
                        help="re-run a pair when other processes used more CPU cores than this (default 0.25);"
                             " a target resting on a row still over it is UNSURE")
    parser.add_argument("--retries", type=int, default=3, help="re-runs allowed per row (default 3)")
    parser.add_argument("--latency-samples", type=int, default=30, help="calls per batch-1 latency median")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk",
                        help="load generator (wrk is installed when missing and running as root)")
    parser.add_argument("--client-cpu", default="last",
                        help="core to pin the load generator to with taskset: a number, 'last' or 'none'")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--name", default="",
                        help="results go to DATE-NAME.*; a named run leaves latest.md alone (as --quick does)")
    args = parser.parse_args(argv)
    # what --quick changes, unless an option says otherwise
    workload = WORKLOADS[args.workload]
    workers, threads, max_batch = workload.mule_settings
    defaults = {"window": (5.0, 2.0), "pairs": (5, 2), "warmup": (3.0, 2.0),
                "workers": (workers,) * 2, "threads": (threads,) * 2, "max_batch": (max_batch,) * 2,
                "model_threads": (workload.model_threads,) * 2,
                "concurrency": (workload.concurrency, "1,16"),
                "memory_probe_workers": ("2,8" if workload.name == "mobilenet" else "", ""),
                "kinds": (DEFAULT_KINDS.get(workload.name, "mule") + (",triton" if args.triton_python else ""),) * 2}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if "triton" in args.kinds and not args.triton_python:
        parser.error("the triton kind needs --triton-python or TRITON_PYTHON (see make bench-triton)")
    args.memory_probe_workers = [int(w) for w in str(args.memory_probe_workers).split(",") if w.strip()]
    cores = sorted(os.sched_getaffinity(0))
    args.client_cpu = {"none": None, "last": str(cores[-1])}.get(args.client_cpu, args.client_cpu)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.time()
    workload = WORKLOADS[args.workload]
    model = workload.model_path()
    bodies = workload.bodies()
    load = Load(use_wrk=args.client == "wrk", cpus=args.client_cpu)
    if load.client != "wrk":
        args.client_cpu = None  # the Python client runs in this process, whose children must not inherit a pin
    _log(f"client: {load.version()}{f', pinned to CPU {args.client_cpu}' if args.client_cpu else ''}")
    _log("starting the ceiling process")
    ceiling = Ceiling(workload)
    kinds: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    try:
        info = machine_info(load, ceiling, args.triton_python if "triton" in args.kinds else "")
        info["latency1_at_start"] = ceiling.latency1(args.latency_samples)
        _log(f"batch-1 latency at start: {info['latency1_at_start']['latency1_ms']:.1f} ms")
        info["best_batch_ceiling"] = best_batch_ceiling(ceiling, args)
        for kind in args.kinds:
            kinds.append(measure_kind(kind, args, ceiling, load, bodies))
        if "mule" in args.kinds:
            probes = memory_probe(args, load, bodies)
    finally:
        ceiling.close()
        load.close()
    info["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    results = {
        "date": dt.date.fromtimestamp(began).isoformat(),  # a run past midnight keeps its start date
        "started": dt.datetime.fromtimestamp(began).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - began, 1),
        "machine": info,
        "settings": {
            "window_s": args.window, "pairs": args.pairs, "concurrency": args.concurrency, "kinds": args.kinds,
            "warmup_s": args.warmup, "quick": args.quick, "client": load.client, "client_cpu": args.client_cpu,
            "latency_samples": args.latency_samples, "max_other_load": args.max_other_load,
            "retries": args.retries, "model": str(model.relative_to(PROJECT_ROOT)),
            "workload": workload.name, "workload_title": workload.title, "body_bytes": [len(b) for b in bodies],
            "ceiling_decode": workload.ceiling_decode,
            "ceiling": {"batch": ceiling.info.get("batch"), "buckets": ceiling.info.get("buckets"),
                        "input": ceiling.info.get("input")},
            "servers": {k: server_env(k, args) for k in ("mule", "worker")},
            "memory_probe_workers": args.memory_probe_workers,
            # glibc malloc thresholds of every process measured (the launcher's, given to the peers too)
            "malloc": {k: os.environ.get(k, v) for k, v in MALLOC_DEFAULTS.items()},
        },
        "kinds": kinds,
        "memory_probe": probes,
    }
    results["summary"] = report.summarize(results)
    results["targets"] = report.targets(results)
    parts = (workload.name if workload.name != "mobilenet" else "", args.name, "quick" if args.quick else "")
    suffix = "".join(f"-{part}" for part in parts if part)
    paths = report.write(results, args.out, suffix=suffix, latest=not (args.name or args.quick))
    print(paths["md"].read_text())
    _log(f"results: {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
