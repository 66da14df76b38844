"""The batching mule under real load and real faults, through nginx and uWSGI."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.inference.batching import BatchPolicy, Pending
from app.inference.model_runner import COMPILE_UP_TO_MS
from tools.local_server import LocalServer, wait_for
from training.digits import heldout_split, render_png


@pytest.fixture(scope="module")
def server():
    started = LocalServer({"WORKERS": "2", "THREADS": "8"}, name="mule").start()
    yield started
    assert started.stop() == 0, started.log()


@pytest.fixture(scope="module")
def digit_pngs():
    _, _, images, _ = heldout_split()
    return [render_png(image) for image in images[:32]]


def predict(url: str, png: bytes, session: requests.Session | None = None, **kwargs) -> requests.Response:
    poster = session or requests
    return poster.post(f"{url}/predict", files={"image": ("d.png", png)}, params={"top_k": 10}, timeout=30, **kwargs)


def scrape(server: LocalServer) -> list[Sample]:
    response = requests.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name` over every series whose labels include `labels`."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


COUNTERS = ("kerasrv_requests_total", "kerasrv_request_duration_seconds_count", "kerasrv_batch_rows_count",
            "kerasrv_batch_rows_sum", "kerasrv_queue_duration_seconds_count", "kerasrv_process_starts_total")


def assert_no_counter_went_back(before: list[Sample], after: list[Sample]) -> None:
    for name in COUNTERS:
        assert total(after, name) >= total(before, name), name


def scores(response: requests.Response) -> dict[str, float]:
    return {p["label"]: p["score"] for p in response.json()["predictions"]}


def batches_the_policy_forms(requests: int, limit: int, costs_ms: dict[str, float]) -> list[int]:
    """The batch sizes the mule's policy makes of `requests` one-row requests queued together,
    given the costs the mule measured: the first batch is the limit, and the rest may run as
    smaller batches where a smaller bucket costs less per row than padding (a warm-up's timings
    of a tiny model decide that, so it differs from one start to the next)."""
    policy = BatchPolicy(limit, 0, requests)
    policy.costs_ms = {int(size): ms for size, ms in costs_ms.items()}
    for n in range(requests):
        assert policy.admit(Pending(conn=None, slot=n, seq=n, rows=1, deadline=math.inf, arrival=0.0))
    sizes = []
    while policy.queue:
        sizes.append(sum(p.rows for p in policy.decide(0.0).batch))
    return sizes


def test_concurrent_requests_are_batched_and_answers_match_single_requests(server, digit_pngs):
    """16 requests reach the (stopped) mule together: they run in the batches its policy forms
    (as few as its batch limit allows, the rest split where the measured costs say it is
    cheaper), and each gets the answer it gets alone."""
    alone = [scores(predict(server.url, png)) for png in digit_pngs[:16]]
    server.connect_every_thread()
    before = server.stats()
    scraped = scrape(server)
    with ThreadPoolExecutor(16) as pool, server.mule_stopped() as mule:
        futures = [pool.submit(predict, server.url, png) for png in digit_pngs[:16]]
        wait_for(lambda: server.requests_waiting(mule) == 16, 60, "16 requests waiting at the mule")
    responses = [future.result(60) for future in futures]
    for response, expected in zip(responses, alone):
        assert response.status_code == 200, response.text
        got = scores(response)
        assert got.keys() == expected.keys()
        for label, score in got.items():
            assert score == pytest.approx(expected[label], abs=1e-5)
    after = server.stats()
    limit = after["batch_limit"]
    planned = batches_the_policy_forms(16, limit, after["batch_cost_ms"])
    assert planned[0] == min(16, limit)
    assert after["rows"] - before["rows"] == 16
    assert after["batches"] - before["batches"] == len(planned)
    ran = Counter(after["batch_sizes"]) - Counter(before["batch_sizes"])
    assert ran == Counter({str(size): count for size, count in Counter(planned).items()})
    assert Counter(int(r.headers["X-Batch-Size"]) for r in responses) == Counter(s for s in planned for _ in range(s))
    # the limit the mule chose from the batch costs it measured at warm-up, and kept to
    assert set(after["batch_cost_ms"]) == {str(size) for size in after["buckets"]}
    # XLA only where it was raced: sizes whose call cost COMPILE_UP_TO_MS or less
    assert all(after["batch_cost_ms"][str(size)] <= COMPILE_UP_TO_MS for size in after["compiled_buckets"])
    assert limit in after["buckets"]
    assert max(int(size) for size in after["batch_sizes"]) <= limit
    # /metrics, summed over both workers and the mule, saw exactly these 16 requests and batches
    now = scrape(server)
    grew = {name: total(now, name, route="/predict") - total(scraped, name, route="/predict")
            for name in ("kerasrv_requests_total", "kerasrv_request_duration_seconds_count")}
    assert grew == {"kerasrv_requests_total": 16, "kerasrv_request_duration_seconds_count": 16}
    assert total(now, "kerasrv_requests_total", route="/predict", code="200") - \
        total(scraped, "kerasrv_requests_total", route="/predict", code="200") == 16
    batches = total(now, "kerasrv_batch_rows_count") - total(scraped, "kerasrv_batch_rows_count")
    assert batches == len(planned)
    assert total(now, "kerasrv_batch_rows_sum") - total(scraped, "kerasrv_batch_rows_sum") == 16
    assert total(now, "kerasrv_queue_duration_seconds_count") - total(scraped, "kerasrv_queue_duration_seconds_count") \
        == 16
    assert total(now, "kerasrv_batch_duration_seconds_count") - total(scraped, "kerasrv_batch_duration_seconds_count") \
        == batches
    one_row = total(now, "kerasrv_batch_rows_bucket", le="1.0") - total(scraped, "kerasrv_batch_rows_bucket", le="1.0")
    assert one_row < batches, "the histogram shows no batch of more than one row"
    assert total(now, "kerasrv_model_state", state="ready") == 1
    assert total(now, "kerasrv_model_load_seconds") >= total(now, "kerasrv_model_warmup_seconds") > 0
    assert total(now, "kerasrv_model_concurrency") == after["model_concurrency"] >= 1
    memory = {s.labels["process"] for s in now if s.name == "kerasrv_process_resident_memory_bytes" and s.value > 0}
    assert memory == {"worker", "mule"}


def test_promtool_passes_the_real_scrape(server):
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    result = subprocess.run([str(Path(sys.executable).parent / "promtool"), "check", "metrics"], input=text,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


def test_lone_requests_are_not_delayed(server, digit_pngs):
    """At concurrency 1 every batch is a batch of one, with no waiting for company."""
    with requests.Session() as session:
        for png in digit_pngs[:10]:
            response = predict(server.url, png, session)
            assert response.headers["X-Batch-Size"] == "1"


def test_killing_the_mule_under_load_gives_clean_503s_then_recovery(server, digit_pngs):
    old_mule = server.mule_pid()
    scraped = scrape(server)
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    slow: list[float] = []

    def client(i: int):
        with requests.Session() as session:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = predict(server.url, digit_pngs[i % len(digit_pngs)], session)
                except requests.RequestException as exc:
                    outcomes[f"exception {type(exc).__name__}"] += 1
                    continue
                elapsed = time.monotonic() - started
                if response.status_code == 200:
                    outcomes["ok"] += 1
                else:
                    body = response.json()
                    outcomes[f"{response.status_code} {body['code']}"] += 1
                    if response.status_code == 503:
                        assert "Retry-After" in response.headers
                    if elapsed > 5:
                        slow.append(elapsed)

    def new_mule_ready() -> bool:
        try:
            ready = requests.get(f"{server.url}/health/ready", timeout=5).status_code == 200
            return ready and server.stats().get("pid") not in (None, old_mule)  # no pid: mule unreachable
        except requests.RequestException:
            return False

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: outcomes["ok"] >= 16, 60, "16 answers before the kill")
        os.kill(old_mule, signal.SIGKILL)
        wait_for(new_mule_ready, 90, "a new mule, ready", interval=0.2)
        ok_at_recovery = outcomes["ok"]
        wait_for(lambda: outcomes["ok"] > ok_at_recovery, 60, f"successes after recovery ({outcomes})")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    errors = {k: v for k, v in outcomes.items() if k != "ok"}
    assert errors, "killing the mule went unnoticed?"
    assert set(errors) <= {"503 backend_unavailable", "503 not_ready"}, outcomes
    assert not slow, f"503s should come at once, not after a timeout: {slow}"
    now = scrape(server)
    assert_no_counter_went_back(scraped, now)
    assert total(now, "kerasrv_process_starts_total", process="mule") == \
        total(scraped, "kerasrv_process_starts_total", process="mule") + 1


def test_killing_a_worker_mid_request_leaves_no_wedged_slot(server, digit_pngs):
    server.connect_every_thread()
    workers = server.worker_pids()
    scraped = scrape(server)
    assert len(workers) == 2
    files = [("image", ("d.png", digit_pngs[0]))] * 64
    in_flight = threading.Thread(
        target=lambda: _swallow(lambda: requests.post(f"{server.url}/predict", files=files, timeout=30))
    )
    with server.mule_stopped() as mule:  # the request cannot finish: it is mid-request for sure when the workers die
        in_flight.start()
        wait_for(lambda: server.requests_waiting(mule) == 1, 30, "the request waiting at the mule")
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    in_flight.join(30)
    # respawned workers reuse the slots of the dead ones: every slot must still work
    wait_for(lambda: not set(server.worker_pids()) & set(workers) and len(server.worker_pids()) == 2, 60,
             "workers respawned")

    def one(i: int) -> int:
        return predict(server.url, digit_pngs[i % len(digit_pngs)]).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(64)))
    assert codes == [200] * 64
    starts = total(scraped, "kerasrv_process_starts_total", process="worker") + 2

    def new_workers_counted() -> list[Sample] | None:
        got = scrape(server)
        return got if total(got, "kerasrv_process_starts_total", process="worker") == starts else None

    now = wait_for(new_workers_counted, 60, "both new workers in kerasrv_process_starts_total")
    assert_no_counter_went_back(scraped, now)  # the dead workers' counts are still in the sums


def test_deadline_answers_504(start_server, digit_pngs):
    """A request that cannot be answered within REQUEST_TIMEOUT_MS gets 504, and the server goes on."""
    env = {"REQUEST_TIMEOUT_MS": "1", "WORKERS": "1", "THREADS": "2"}
    server = start_server(env, name="deadline")
    files = [("image", ("d.png", digit_pngs[0]))] * 64
    response = requests.post(f"{server.url}/predict", files=files, timeout=30)
    assert response.status_code == 504, response.text
    assert response.json()["code"] == "timeout"


def test_full_queue_answers_503_with_retry_after(start_server, digit_pngs):
    """16 requests of 16 rows reach the mule at once; its queue holds 4 rows (one 4-row chunk):
    one request is admitted and goes on chunk by chunk, the other 15 get 503 at once."""
    server = start_server(
        {"MAX_QUEUE_ROWS": "4", "WORKERS": "2", "THREADS": "8", "MAX_BATCH_SIZE": "4"}, name="queue",
    )
    server.connect_every_thread()
    files = [("image", ("d.png", digit_pngs[0]))] * 16

    def one(_):
        response = requests.post(f"{server.url}/predict", files=files, timeout=60)
        return response.status_code, response.json().get("code"), response.headers.get("Retry-After")

    with ThreadPoolExecutor(16) as pool:
        with server.mule_stopped() as mule:
            futures = [pool.submit(one, i) for i in range(16)]
            wait_for(lambda: server.requests_waiting(mule) == 16, 60, "16 requests waiting at the mule")
        outcomes = [future.result(60) for future in futures]
    codes = Counter((status, code) for status, code, _ in outcomes)
    assert codes == {(200, None): 1, (503, "overloaded"): 15}, codes
    assert all(retry for status, _, retry in outcomes if status == 503)


def _swallow(call):
    try:
        call()
    except requests.RequestException:
        pass


def test_inputs_do_not_mix_between_rows(server):
    """Several images in one request come back in order, each with its own answer."""
    _, _, images, labels = heldout_split()
    chosen = [i for i in range(len(labels)) if labels[i] in (0, 1, 7)][:12]
    files = [("image", (f"{i}.png", render_png(images[i]))) for i in chosen]
    response = requests.post(f"{server.url}/predict", files=files, timeout=30)
    got = [p[0]["label"] for p in response.json()["predictions"]]
    expected = [str(labels[i]) for i in chosen]
    assert np.mean([a == b for a, b in zip(got, expected)]) >= 0.9
