"""The live view (/dashboard) in headless Chromium while load runs: non-zero figures from /metrics."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import requests
from playwright.sync_api import sync_playwright

from tools.local_server import wait_for
from training.digits import heldout_split, render_png

CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by scripts/install.sh dev; Playwright downloads none
# no background traffic to hosts this machine cannot reach
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SCREENSHOT_DIR = os.environ.get("KERASRV_SCREENSHOT_DIR")  # set it to keep the picture


def test_live_view_shows_the_traffic_while_load_runs(start_server, tmp_path):
    server = start_server({"WORKERS": "2", "THREADS": "4"}, name="dashboard")
    png = render_png(heldout_split()[2][0])
    stop = threading.Event()
    answered: Counter[int] = Counter()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                answered[session.post(f"{server.url}/predict", files={"image": ("d.png", png)}, timeout=30)
                         .status_code] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: answered[200] >= 20, 60, "load under way")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(f"{server.url}/dashboard")
            # the page needs two scrapes (2 s apart) for a rate: wait until it shows one
            page.wait_for_function("() => Number(document.getElementById('p99').dataset.value) > 0", timeout=60_000)
            figures = {name: page.get_attribute(f"#{name}", "data-value") for name in ("rps", "p50", "p99", "queued",
                                                                                       "state")}
            bars = page.eval_on_selector_all(".bar", "bars => bars.map(b => Number(b.dataset.batches))")
            picture = Path(SCREENSHOT_DIR or tmp_path) / "dashboard.png"
            page.screenshot(path=str(picture), full_page=True)
            browser.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert set(answered) == {200}, answered
    assert float(figures["rps"]) > 0 and float(figures["p50"]) > 0, figures
    assert float(figures["p99"]) >= float(figures["p50"]), figures
    assert float(figures["queued"]) >= 0 and figures["state"] == "ready", figures
    assert bars and sum(bars) > 0, bars
    assert picture.stat().st_size > 10_000
