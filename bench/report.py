"""Turn the raw windows into the summary, the target checks, and the JSON, Markdown and PNG files.

Every comparison with the ceiling is made within a pair (a ceiling window and the server window
right after it) and then the median over pairs is taken, because the machine's speed drifts more
between minutes than the differences being measured.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path
from typing import Any

from app.inference.batching import per_row_ms

# The targets of issue 11 for mule mode, by workload (bench/workloads.py).
TARGETS: dict[str, dict[str, Any]] = {
    # x ceiling at these c; p50 at c=1 <= batch-1 latency + slack; p99 at c=16 <= factor x fair share
    "mobilenet": {"ratio": 1.05, "ratio_at": (16, 32), "p50_slack_ms": 2.0, "p99_factor": 1.3,
                  "triton": 1.1, "triton_at": (16, 32)},
    "small": {"ratio": 0.55, "ratio_at": (64,), "rps": 3000, "p50_slack_ms": 0.5, "triton": 2.0, "triton_at": (64,)},
    "tabular": {"ratio": 0.55, "ratio_at": (64,), "rps": 3000, "p50_slack_ms": 0.5, "triton": 2.0,
                "triton_at": (64,)},
    "photo12mp": {"ratio": 4.0, "ratio_at": (16,)},  # against the naive ceiling (full-size decode)
}


# an absolute path on the machine that ran the benchmark (not a URL's path, not a route)
_MACHINE_PATH = re.compile(r'(?<![^\s"=])/(?:home|mnt|opt|root|srv|tmp|usr|var|work)/(?:[^\s"/]*/)*([^\s"/]*)')


def without_machine_paths(value: Any) -> Any:
    """`value` (JSON-like) with every absolute path cut to its last part ("/usr/sbin/nginx" ->
    "nginx"): the committed results say which programs ran, not where this machine keeps them."""
    if isinstance(value, str):
        return _MACHINE_PATH.sub(r"\1", value)
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_machine_paths(item) for item in value]
    return value


CEILING_PREPARES = {"server": "the server's `decode_image` + `normalize`, or `json.loads` for a tabular body",
                    "naive": "a naive full-size PIL decode, then a resize, then `normalize`"}


def workload_of(results: dict[str, Any]) -> str:
    return results["settings"].get("workload", "mobilenet")  # runs before workloads were all MobileNetV2


def _median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (kind, concurrency): medians over the pairs."""
    rows = []
    for kind in results["kinds"]:
        for row in kind["rows"]:
            pairs = row["pairs"]
            concurrency = row["concurrency"]
            ceiling = [p["ceiling"]["img_per_s"] for p in pairs]
            rows.append({
                "kind": kind["kind"],
                "concurrency": concurrency,
                "pairs": len(pairs),
                "rejected": len(row.get("rejected", [])),
                "rps": _median([p["server"]["rps"] for p in pairs]),
                "ratio": _median([p["ratio"] for p in pairs]),
                "ratio_min": min(p["ratio"] for p in pairs),
                "ratio_max": max(p["ratio"] for p in pairs),
                "ceiling_img_s": _median(ceiling),
                "ceiling_min": min(ceiling),
                "ceiling_max": max(ceiling),
                "latency1_ms": _median([p["latency1_ms"] for p in pairs]),
                "p50_ms": _median([p["server"]["p50_ms"] for p in pairs]),
                "p90_ms": _median([p["server"]["p90_ms"] for p in pairs]),
                "p99_ms": _median([p["server"]["p99_ms"] for p in pairs]),
                # p50 over the batch-1 latency of the same pair (meaningful at c=1)
                "p50_over_latency1": _median([p["server"]["p50_ms"] / p["latency1_ms"] for p in pairs]),
                # fair share: c requests in flight served at the ceiling's rate take c / ceiling each
                "fair_share_ms": _median([1000 * concurrency / p["ceiling"]["img_per_s"] for p in pairs]),
                "p99_over_fair": _median([
                    p["server"]["p99_ms"] / (1000 * concurrency / p["ceiling"]["img_per_s"]) for p in pairs
                ]),
                "mean_batch": _median([p["batches"]["mean_batch"] for p in pairs]),
                "errors": sum(p["server"]["errors"] for p in pairs),
                "requests": sum(p["server"]["requests"] for p in pairs),
                "rss_mb": _median([p["memory"]["rss_mb"] for p in pairs]),
                "pss_mb": _median([p["memory"]["pss_mb"] for p in pairs]),
                "tensorflow_processes": max(p["memory"]["tensorflow_processes"] for p in pairs),
                "server_cpu_cores": _median([p["server_cpu_cores"] for p in pairs]),
                "ceiling_cpu_cores": _median([p["ceiling"]["cpu_cores"] for p in pairs]),
                "other_cpu_server": _median([p["other_cpu_cores"] for p in pairs]),
                "other_cpu_ceiling": _median([p["ceiling"]["other_cpu_cores"] for p in pairs]),
                "client_cpu_share": _median([p["server"]["client_cpu_s"] / p["server"]["seconds"] for p in pairs]),
            })
    return rows


def _row(summary: list[dict[str, Any]], kind: str, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in summary if r["kind"] == kind and r["concurrency"] == concurrency), None)


def _disturbance(row: dict[str, Any], limit: float | None) -> str | None:
    """Why a row's medians say more about the machine than the server, or None: other processes
    took more than `limit` cores (median over its pairs) in its server or its ceiling windows."""
    server, ceiling = row.get("other_cpu_server"), row.get("other_cpu_ceiling")
    if limit is None or server is None or ceiling is None or max(server, ceiling) <= limit:
        return None
    return (f"{row['kind']} c={row['concurrency']} ran while other processes took {ceiling:.2f} / {server:.2f}"
            f" cores (ceiling / server windows, median)")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's checks for mule mode on this workload; a row that was not measured is reported,
    not passed, and a verdict that rests on a row measured while other processes took more than
    `max_other_load` cores is UNSURE, whichever way it went: a peer slowed by a noisy neighbour
    must not make a PASS, nor a slowed mule a FAIL."""
    summary, goal = results["summary"], TARGETS[workload_of(results)]
    limit = results["settings"].get("max_other_load")
    checks = []

    def add(name: str, row: dict[str, Any] | None, ok: bool | None, detail: str,
            *, peer: dict[str, Any] | None = None, timed: bool = True) -> None:
        if row is None:
            checks.append({"target": name, "result": "NOT MEASURED", "detail": "row not measured"})
            return
        verdict = "PASS" if ok else "FAIL"
        disturbed = [why for r in (row, peer) if timed and r is not None and (why := _disturbance(r, limit))]
        if disturbed:
            detail = f"{detail}; would be {verdict}, but " + "; ".join(disturbed)
            verdict = "UNSURE"
        checks.append({"target": name, "result": verdict, "detail": detail})

    for concurrency in goal["ratio_at"]:
        row = _row(summary, "mule", concurrency)
        add(f"throughput at c={concurrency} >= {goal['ratio']:.2f} x ceiling", row,
            row and row["ratio"] >= goal["ratio"],
            row and f"median paired ratio {row['ratio']:.2f} (range {row['ratio_min']:.2f}-{row['ratio_max']:.2f});"
                    f" {row['rps']:.1f} req/s vs ceiling {row['ceiling_img_s']:.1f} img/s")
    if "rps" in goal:
        row = _row(summary, "mule", goal["ratio_at"][-1])
        add(f"throughput at c={goal['ratio_at'][-1]} >= {goal['rps']} req/s", row, row and row["rps"] >= goal["rps"],
            row and f"{row['rps']:.0f} req/s")
    if "triton" in goal:
        for concurrency in goal["triton_at"]:
            row, peer = _row(summary, "mule", concurrency), _row(summary, "triton", concurrency)
            both = row if peer else None
            add(f"throughput at c={concurrency} >= {goal['triton']:.1f} x Triton's in the same run", both,
                both and row["rps"] >= goal["triton"] * peer["rps"],
                both and f"{row['rps']:.1f} vs {peer['rps']:.1f} req/s: {row['rps'] / peer['rps']:.2f} x", peer=peer)
    if "p50_slack_ms" in goal:
        row = _row(summary, "mule", 1)
        slack = goal["p50_slack_ms"]
        add(f"p50 at c=1 <= batch-1 latency + {slack:g} ms", row,
            row and row["p50_ms"] <= row["latency1_ms"] + slack,
            row and f"p50 {row['p50_ms']:.2f} ms; batch-1 latency {row['latency1_ms']:.2f} ms (p50/batch-1"
                    f" {row['p50_over_latency1']:.2f})")
    if "p99_factor" in goal:
        row = _row(summary, "mule", 16)
        add(f"p99 at c=16 <= {goal['p99_factor']} x (16 / ceiling)", row,
            row and row["p99_over_fair"] <= goal["p99_factor"],
            row and f"p99 {row['p99_ms']:.0f} ms; fair share 16 / {row['ceiling_img_s']:.1f} img/s ="
                    f" {row['fair_share_ms']:.0f} ms; median paired p99/fair share {row['p99_over_fair']:.2f}")
    mule_rows = [r for r in summary if r["kind"] == "mule"]
    worker_rows = [r for r in summary if r["kind"] == "worker"]
    probes = [p for p in results.get("memory_probe", []) if "memory" in p]
    copies = [r["tensorflow_processes"] for r in mule_rows] + [p["memory"]["tensorflow_processes"] for p in probes]
    detail = []
    if mule_rows:
        detail.append(f"mule mode RSS {_median([r['rss_mb'] for r in mule_rows]):.0f} MB,"
                      f" PSS {_median([r['pss_mb'] for r in mule_rows]):.0f} MB")
    if worker_rows:
        detail.append(f"worker mode RSS {_median([r['rss_mb'] for r in worker_rows]):.0f} MB,"
                      f" PSS {_median([r['pss_mb'] for r in worker_rows]):.0f} MB,"
                      f" {max(r['tensorflow_processes'] for r in worker_rows)} processes with TensorFlow")
    for probe in probes:
        detail.append(f"mule with {probe['workers']} workers: RSS {probe['memory']['rss_mb']:.0f} MB,"
                      f" PSS {probe['memory']['pss_mb']:.0f} MB, {probe['memory']['tensorflow_processes']}"
                      " process with TensorFlow")
    add("one model copy in mule mode whatever the worker count", mule_rows[0] if mule_rows else None,
        bool(copies) and all(c == 1 for c in copies),
        f"processes with TensorFlow loaded in mule mode: {sorted(set(copies))} in every measured window and"
        f" probe; " + "; ".join(detail), timed=False)
    return checks


def _compiled_note(results: dict[str, Any]) -> list[str]:
    """At which batch sizes the ceiling and the mule ran XLA (MODEL_COMPILE=auto races it at warm-up)."""
    ceiling = results["machine"].get("ceiling_compiled_buckets")
    mule = sorted({tuple(p["batches"]["compiled_buckets"]) for k in results["kinds"] if k["kind"] == "mule"
                   for r in k["rows"] for p in r["pairs"] if p["batches"].get("compiled_buckets") is not None})
    if ceiling is None and not mule:
        return []  # a run from before the race
    text = (f"XLA (`MODEL_COMPILE=auto`: raced against the graph per batch size at warm-up): the ceiling ran compiled"
            f" at batch sizes {_sizes(ceiling)}; the mule at {' / '.join(map(_sizes, mule)) or 'not recorded'}.")
    return [text, ""]


def _concurrency_note(results: dict[str, Any]) -> list[str]:
    """How many model calls the mule ran at once (MODEL_CONCURRENCY=auto races the counts on live load)."""
    counts = sorted({p["batches"]["model_concurrency"] for k in results["kinds"] if k["kind"] == "mule"
                     for r in k["rows"] for p in r["pairs"] if p["batches"].get("model_concurrency")})
    if not counts:
        return []  # a run from before the setting, or no mule
    setting = results["settings"]["servers"]["mule"].get("MODEL_CONCURRENCY", "1")
    race_s = [k["race_s"] for k in results["kinds"] if k["kind"] == "mule" and "race_s" in k]
    how = "as set"
    if setting == "auto" and race_s and race_s[0] is not None:
        how = f"as its race on live load chose, after {race_s[0]:.0f} s at 32 clients before the rows"
    elif setting == "auto":
        how = "no race ran: see MODEL_CONCURRENCY in the README"
    return [f"The mule ran {' / '.join(map(str, counts))} model call(s) at once"
            f" (`MODEL_CONCURRENCY={setting}`, {how}).", ""]


def _sizes(buckets: list[int] | tuple[int, ...] | None) -> str:
    return ", ".join(map(str, buckets)) if buckets else "none"


def _best_batch_note(results: dict[str, Any]) -> list[str]:
    """How the server compares with the ceiling run at its own cheapest batch size, not only at 16."""
    best = results["machine"].get("best_batch_ceiling")
    if not best:
        return []
    batch16 = results["settings"]["ceiling"]["batch"]
    costs = {int(size): ms for size, ms in (best.get("batch_cost_ms") or {}).items()}  # JSON keys are strings
    per_row = {str(size): round(ms, 1) for size, ms in per_row_ms(costs).items()}
    limits = sorted({p["batches"].get("batch_limit") for k in results["kinds"] if k["kind"] == "mule"
                     for r in k["rows"] for p in r["pairs"]} - {None})
    text = (f"The issue's ceiling uses batches of {batch16}. Timed at its own warm-up, the cheapest batch per row"
            f" is {best['batch']} (ms per row by batch size: {per_row}).")
    if limits and results["settings"]["servers"]["mule"].get("BATCH_AUTOTUNE", "on") == "off":
        text += f" The mule ran batches of up to {' / '.join(map(str, limits))} rows (BATCH_AUTOTUNE=off)."
    elif limits:
        text += (f" The mule times its own warm-up the same way and capped its batches at"
                 f" {' / '.join(map(str, limits))} (BATCH_AUTOTUNE).")
    if best["pairs"]:
        text += (f" The ceiling itself at batch {best['batch']} runs at {best['ratio']:.2f} x its batch-{batch16}"
                 f" rate (median of {len(best['pairs'])} alternating pairs).")
        against = [(c, _row(results["summary"], "mule", c)) for c in (16, 32)]
        against = [f"{row['ratio'] / best['ratio']:.2f} x at c={c}" for c, row in against if row]
        if against:
            text += f" Against that stronger ceiling, mule mode reaches {' and '.join(against)}."
    return [text, ""]


def _malloc_note(settings: dict[str, Any]) -> str:
    """Runs since 2026-12-02 give the ceiling and Triton the server's glibc malloc thresholds."""
    malloc = settings.get("malloc")
    if not malloc:
        return ""
    values = ", ".join(f"`{k}={v}`" for k, v in malloc.items())
    return f", with the server's glibc malloc thresholds ({values}, as Triton too)"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    info, settings = results["machine"], results["settings"]
    lines = [
        f"# kerasrv benchmark, {results['date']}",
        "",
        f"{settings.get('workload_title', 'MobileNetV2 (224x224 input), two JPEG photos')} (bench/workloads.py;"
        f" request bodies of {', '.join(str(b) for b in settings.get('body_bytes', settings.get('photo_bytes', [])))}"
        f" bytes). {info['nproc']} cores ({info['cpu_model']}), {info['memory_gb']} GB,"
        f" Python {info['python']}, TensorFlow {info['tensorflow']}, Keras {info['keras']}."
        f" {settings['pairs']} pairs of {settings['window_s']:g} s windows per row; run took"
        f" {results['duration_s'] / 60:.0f} min.",
        "",
        "| kind | c | req/s | x ceiling | ceiling img/s | p50 ms | p90 ms | p99 ms | p99 / fair share"
        " | p50 / batch-1 | mean batch | errors | RSS MB | PSS MB | CPU cores ceiling / server | other load"
        " | pairs (rejected) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    window_ms = 1000 * settings["window_s"]
    truncated = False
    for row in results["summary"]:
        # requests still in flight when a window ends are not counted: near the window's length,
        # the slowest requests are missing and the percentiles are too low
        mark = " †" if row["p99_ms"] is not None and row["p99_ms"] > 0.5 * window_ms else ""
        truncated = truncated or bool(mark)
        lines.append(
            f"| {row['kind']} | {row['concurrency']} | {_fmt(row['rps'])} | {_fmt(row['ratio'], 2)}"
            f" | {_fmt(row['ceiling_img_s'])} | {_fmt(row['p50_ms'])} | {_fmt(row['p90_ms'])}"
            f" | {_fmt(row['p99_ms'])}{mark}"
            f" | {_fmt(row['p99_over_fair'], 2)}"
            f" | {_fmt(row['p50_over_latency1'], 2) if row['concurrency'] == 1 else ''}"
            f" | {_fmt(row['mean_batch'], 2)} | {row['errors']} | {_fmt(row['rss_mb'], 0)} | {_fmt(row['pss_mb'], 0)}"
            f" | {_fmt(row['ceiling_cpu_cores'], 2)} / {_fmt(row['server_cpu_cores'], 2)}"
            f" | {_fmt(row['other_cpu_ceiling'], 2)} / {_fmt(row['other_cpu_server'], 2)}"
            f" | {row['pairs']} ({row['rejected']}) |"
        )
    if truncated:
        lines += ["", f"† p99 above half the {settings['window_s']:g} s window: requests still in flight when a"
                      " window ends are not counted, so the slowest ones are missing and these latencies are"
                      " underestimates."]
    lines += [
        "",
        "x ceiling: median over pairs of (server req/s) / (ceiling img/s of the window just before)."
        " Fair share: c / ceiling img/s, the latency of c requests in flight served at the ceiling's rate."
        " Other load: CPU cores used by processes that are neither the one measured nor the client"
        " (median over the ceiling / server windows; this machine is shared). CPU cores: what the ceiling"
        " process and the server's processes used, of the machine's"
        f" {info['nproc']}.",
        "",
        f"Batch-1 latency of the ceiling (decode + preprocess + model, one image; median of"
        f" {settings['latency_samples']}): {info['latency1_at_start']['latency1_ms']:.1f} ms at start.",
        "",
        "## Targets (mule mode)",
        "",
        "| target | result | measured |",
        "|---|---|---|",
    ]
    lines += [f"| {c['target']} | **{c['result']}** | {c['detail']} |" for c in results["targets"]]
    lines += [""]
    lines += _best_batch_note(results)
    lines += _compiled_note(results)
    lines += _concurrency_note(results)
    problems = [(k["kind"], p) for k in results["kinds"] for p in k["problems"]]
    problems += [(f"memory probe {p['workers']} workers", p["problem"]) for p in results["memory_probe"]
                 if "problem" in p]
    if problems:
        lines += ["## Problems seen", ""] + [f"- {kind}: {text}" for kind, text in problems] + [""]
    mule, worker = settings["servers"]["mule"], settings["servers"]["worker"]
    client_share = max((r["client_cpu_share"] for r in results["summary"]), default=0.0)
    client = (f"`wrk` ({info['client']}, one thread, a Lua script that POSTs the request bodies"
              " in turn and counts non-200 answers)" if settings["client"] == "wrk"
              else "a Python client (one thread and one `http.client` connection per concurrent client)")
    pinned = f", pinned with `taskset` to CPU {settings['client_cpu']}" if settings["client_cpu"] else ""
    lines += [
        "## How measured",
        "",
        f"`python -m bench.run` measures everything in one run. The ceiling is a separate long-lived process"
        " that loads the model with the server's own `load_runner` (with TensorFlow's default thread"
        " spinning, `MODEL_THREAD_SPINNING=on`, as Triton's model function too)"
        f"{_malloc_note(settings)} and, serially, decodes and"
        f" preprocesses {settings['ceiling']['batch']} request bodies"
        f" ({CEILING_PREPARES[settings.get('ceiling_decode', 'server')]},"
        f" `PREPROCESS={settings['servers']['mule']['PREPROCESS']}`), then"
        " makes one model call on them, for the whole window; its batch-1 latency is the median time of one"
        " image through the same steps. Each server is started alone (the others are stopped) and warmed"
        f" up for {settings['warmup_s']:g} s at each concurrency; one that dies during a row is started once"
        " more and that row measured anew (the crash is listed under the problems). For every row,"
        f" {settings['pairs']} pairs of"
        f" [ceiling window, server window] of {settings['window_s']:g} s each alternate, and the ratio"
        " server req/s / ceiling img/s is taken within each pair; the table shows medians over the pairs."
        " After each server window the benchmark waits until the server's processes are idle (requests"
        " still queued when the client hangs up are still served), so the next ceiling window runs alone."
        f" The machine is shared: a pair during which other processes used more than {settings['max_other_load']:g}"
        f" cores in either window is rejected and run again (at most {settings['retries']} times per row;"
        " the last attempt is kept whatever the load); rejected pairs are in the JSON. A target whose rows"
        " (the peer's included) still show more than that load, as a median over their pairs, is UNSURE"
        " rather than passed or failed."
        f" The client is {client}{pinned}: closed loop, keep-alive connections, only to 127.0.0.1; it used"
        f" at most {client_share:.0%} of one core. Latencies are the client's, per request."
        " Mean batch is rows / model calls from the mule's `/stats` over the window (1 without batching)."
        " Memory is the total RSS and PSS (`/proc/PID/smaps_rollup`) of every process of the server"
        " (launcher, supervisord, nginx, uWSGI master, workers, mule), read right after each window;"
        " a process counts as holding a model copy when it maps TensorFlow."
        f" Settings: mule mode WORKERS={mule['WORKERS']} THREADS={mule['THREADS']}"
        f" MAX_BATCH_SIZE={mule['MAX_BATCH_SIZE']} BATCH_AUTOTUNE={mule.get('BATCH_AUTOTUNE', 'on')}"
        f" MODEL_THREADS={mule.get('MODEL_THREADS', '0')} MODEL_CONCURRENCY={mule.get('MODEL_CONCURRENCY', '1')}"
        " (default buckets, BATCH_TIMEOUT_MS=0); worker mode"
        f" WORKERS={worker['WORKERS']} THREADS=1 ({worker['WORKERS']} model copies); both behind nginx with"
        " HOST=127.0.0.1 and LOG_LEVEL=info. The recipe is `bench/recipe_app.py` (Flask, model loaded at"
        " import, PIL decode, `model.predict` per request) under `uwsgi --http-socket --processes 1"
        " --need-app` without a master; that socket closes each connection after its answer, so it sends"
        " `Connection: close` and the client reconnects."
        + (f" Triton is NVIDIA Triton Inference Server through PyTriton {info.get('pytriton')}"
           " (`bench/triton_app.py`, in its own venv): its dynamic batcher (max batch 16, 2 ms queue delay,"
           " as in the issue) calls one Python function per batch, which prepares each row as the ceiling"
           f" does ({CEILING_PREPARES[settings.get('ceiling_decode', 'server')]}) and makes one model call"
           " through kerasrv's `ModelRunner`; an image travels as a KServe v2 binary tensor (raw BYTES in,"
           " raw float32 scores out), a tabular row as v2 JSON." if "triton" in settings["kinds"] else ""),
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    summary = results["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    ceilings = [r["ceiling_img_s"] for r in summary]
    if ceilings:
        left.axhspan(min(r["ceiling_min"] for r in summary), max(r["ceiling_max"] for r in summary),
                     color="0.85", label="ceiling (range of windows)")
        left.axhline(statistics.median(ceilings), color="0.4", linestyle="--", label="ceiling (median)")
    for kind in dict.fromkeys(r["kind"] for r in summary):
        rows = [r for r in summary if r["kind"] == kind]
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["rps"] for r in rows], marker="o", label=kind)
        right.plot(xs, [r["p99_ms"] for r in rows], marker="o", label=kind)
    if ceilings:
        xs = sorted({r["concurrency"] for r in summary})
        median = statistics.median(ceilings)
        right.plot(xs, [1000 * c / median for c in xs], color="0.4", linestyle="--", marker="x",
                   label="fair share c / ceiling")
    ticks = sorted({r["concurrency"] for r in summary})
    for axis, title, unit in ((left, "throughput", "requests (images) / s"), (right, "p99 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    right.set_yscale("log")
    left.set_ylim(bottom=0)
    fig.suptitle(f"kerasrv, {workload_of(results)}, {results['machine']['nproc']} cores, {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], folder: Path, suffix: str = "", latest: bool = True) -> dict[str, Path]:
    """<date><suffix>.json/.md/.png, and the workload's latest*.md for a full run."""
    results = without_machine_paths(results)
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    stem = folder / f"{results['date']}{suffix}"
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    paths["md"].write_text(markdown(results))
    plot(results, paths["png"])
    if latest:  # latest.md for the standard case, latest-<workload>.md for the others
        workload = workload_of(results)
        paths["latest"] = folder / ("latest.md" if workload == "mobilenet" else f"latest-{workload}.md")
        shutil.copyfile(paths["md"], paths["latest"])
    for path in paths.values():
        path.chmod(0o644)
    return paths


if __name__ == "__main__":
    # Re-render the Markdown and the plot from a saved JSON: python -m bench.report bench/results/DATE.json
    import sys

    saved = Path(sys.argv[1])
    data = json.loads(saved.read_text())
    data["summary"] = summarize(data)
    data["targets"] = targets(data)
    suffix = saved.stem.removeprefix(data["date"])  # "-quick", "-triton": not the latest full run
    plain = "" if workload_of(data) == "mobilenet" else f"-{workload_of(data)}"  # a full run's own suffix
    written = write(data, saved.parent, suffix=suffix, latest=suffix == plain)
    print("\n".join(str(p) for p in written.values()))
