"""Tokens, CORS and the rate limit through the real stack (nginx, uWSGI workers, the mule)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tools.local_server import wait_for
from training.digits import heldout_split, render_png

FRONT_END = "https://app.example.com"


def write_tokens(path, *tokens: str) -> None:
    """As a Secret rotation does it: a new file renamed over the old one (readable by the workers)."""
    fresh = path.with_suffix(".new")
    fresh.write_text("".join(f"{token}\n" for token in tokens))
    fresh.chmod(0o644)
    os.replace(fresh, path)


@pytest.fixture
def token_file(readable_dir):
    path = readable_dir("kerasrv-tokens-") / "tokens"
    write_tokens(path, "# rotated by the test", "old-t0ken")
    return path


def test_rotating_the_token_file_under_load_takes_effect_without_a_restart(start_server, token_file):
    server = start_server({"AUTH_TOKENS_FILE": str(token_file), "CORS_ORIGINS": FRONT_END, "WORKERS": "2",
                           "THREADS": "8"}, name="tokens")
    server.token = "old-t0ken"
    processes = (server.mule_pid(), sorted(server.worker_pids()))
    png = render_png(heldout_split()[2][0])
    stop = threading.Event()
    codes: Counter[tuple[str, int]] = Counter()
    last: dict[int, tuple[str, int]] = {}

    def client(i: int) -> None:
        token = "old-t0ken" if i % 2 else "new-t0ken"
        with requests.Session() as session:
            while not stop.is_set():
                status = session.post(f"{server.url}/predict", files={"image": ("d.png", png)},
                                      headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code
                codes[(token, status)] += 1
                last[i] = (token, status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: codes[("old-t0ken", 200)] >= 16 and codes[("new-t0ken", 401)] >= 16, 60, "load under way")
        write_tokens(token_file, "new-t0ken")
        rotated = time.monotonic()
        wait_for(lambda: len(last) == 16 and all((token == "new-t0ken") == (status == 200)
                                                 for token, status in last.values()), 5, "the new token in force")
        swapped_s = time.monotonic() - rotated
        settled = dict(codes)
        wait_for(lambda: codes[("new-t0ken", 200)] >= settled.get(("new-t0ken", 200), 0) + 16, 30,
                 "16 more answers with the new token")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert {status for _, status in codes} == {200, 401}, codes  # never a 5xx
    assert codes[("old-t0ken", 200)] - settled[("old-t0ken", 200)] == 0, "the old token still worked"
    assert swapped_s < 5
    server.token = "new-t0ken"
    assert (server.mule_pid(), sorted(server.worker_pids())) == processes  # nothing restarted

    # what a client without a token is told, by the app through nginx
    refused = requests.post(f"{server.url}/predict", files={"image": ("d.png", png)})
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="kerasrv"' and refused.headers["X-Request-ID"]
    assert requests.get(f"{server.url}/health/ready").status_code == 200  # probes stay open

    # a browser page on the allowed origin: its preflight passes without a token
    preflight = requests.options(f"{server.url}/predict", headers={
        "Origin": FRONT_END, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == FRONT_END
    other = requests.options(f"{server.url}/predict", headers={
        "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other.headers


def test_rate_limit_answers_429_json_per_client(start_server):
    rate, burst = 5, 5
    server = start_server({"RATE_LIMIT_RPS": str(rate), "RATE_LIMIT_BURST": str(burst), "WORKERS": "1",
                           "THREADS": "2"}, name="ratelimit")
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # 40 requests at once, far above 5/s
        answers = list(pool.map(lambda _: requests.get(f"{server.url}/stats", timeout=30), range(40)))
    elapsed = time.monotonic() - started
    statuses = Counter(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 429}, statuses
    # nginx lets through the burst, plus the rate over the time it took (and one for rounding)
    assert 0 < statuses[200] <= burst + 1 + rate * elapsed + 1, (statuses, elapsed)
    assert statuses[429] > 0, (statuses, elapsed)
    limited = next(answer for answer in answers if answer.status_code == 429)
    assert limited.json()["code"] == "rate_limited" and limited.headers["Retry-After"] == "1"
    assert limited.headers["X-Request-ID"]
    with requests.Session() as session:
        probes = [session.get(f"{server.url}/health/live").status_code for _ in range(40)]
    assert probes == [200] * 40  # health probes are never limited
