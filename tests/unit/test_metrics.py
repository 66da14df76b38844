"""GET /metrics in one process (Flask test client, the mule on a thread) and promtool's verdict on it.

The multiprocess side (every worker and the mule summed, counters surviving restarts) is tested
end to end in tests/e2e/test_mule.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.config import PROJECT_ROOT, Settings
from app.inference.backend import DeadlineExceeded
from tests.doubles import TENSOR_SPEC, FakeBackend, MuleHarness, ToyModel

PROMTOOL = Path(sys.executable).parent / "promtool"  # scripts/install.sh dev puts it beside python


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def promtool_check(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def client():
    return create_app(Settings(model_name="m-test"), backend=FakeBackend(TENSOR_SPEC)).test_client()


def test_requests_are_counted_and_timed_by_route_and_code(client):
    ok = {"model": "m-test", "route": "/predict", "code": "200"}
    bad = {"model": "m-test", "route": "/predict", "code": "422"}
    lost = {"model": "m-test", "route": "unmatched", "code": "404"}
    before = {name: sample("kerasrv_requests_total", **labels) for name, labels in
              (("ok", ok), ("bad", bad), ("lost", lost))}
    timed = sample("kerasrv_request_duration_seconds_count", model="m-test", route="/predict")
    for _ in range(3):
        assert client.post("/predict", json={"instances": [[1, 2, 3, 4]]}).status_code == 200
    assert client.post("/predict", json={"instances": [[1, 2]]}).status_code == 422
    assert client.get("/no/such/path/123").status_code == 404
    assert sample("kerasrv_requests_total", **ok) - before["ok"] == 3
    assert sample("kerasrv_requests_total", **bad) - before["bad"] == 1
    assert sample("kerasrv_requests_total", **lost) - before["lost"] == 1  # paths never become labels
    assert sample("kerasrv_request_duration_seconds_count", model="m-test", route="/predict") - timed == 4


def test_metrics_endpoint_speaks_the_prometheus_text_format(client):
    client.post("/predict", json={"instances": [[1, 2, 3, 4]]})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    got = samples(response.get_data(as_text=True))
    assert got[("kerasrv_model_state", (("model", "m-test"), ("state", "ready")))] == 1.0
    assert got[("kerasrv_model_state", (("model", "m-test"), ("state", "loading")))] == 0.0
    assert got[("kerasrv_requests_total", (("code", "200"), ("model", "m-test"), ("route", "/predict")))] >= 1


def test_promtool_finds_nothing_to_fix(client, tmp_path):
    harness = MuleHarness.with_model(tmp_path, ToyModel())
    try:
        harness.wait_ready()
        harness.client().predict([np.ones((3, 4), dtype=np.float32)], deadline=time.monotonic() + 30)
    finally:
        harness.close()
    client.post("/predict", json={"instances": [[1, 2, 3, 4]]})
    text = client.get("/metrics").get_data(as_text=True)
    assert "kerasrv_batch_rows_bucket" in text and "kerasrv_queue_duration_seconds_bucket" in text
    result = promtool_check(text)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


def test_promtool_can_fail():
    result = promtool_check("# TYPE bad_metric_milliseconds counter\nbad_metric_milliseconds 1\n")
    assert result.returncode != 0 or result.stdout.strip() or result.stderr.strip()


def test_the_mule_counts_batches_rows_padding_queue_time_and_shedding(tmp_path):
    model = "toy"
    names = ("kerasrv_batch_rows_count", "kerasrv_batch_rows_sum", "kerasrv_padded_rows_total",
             "kerasrv_queue_duration_seconds_count", "kerasrv_batch_duration_seconds_count")
    before = {name: sample(name, model=model) for name in names}
    shed = sample("kerasrv_requests_shed_total", model=model, reason="deadline")
    harness = MuleHarness.with_model(tmp_path, ToyModel(), model_name=model)
    try:
        harness.wait_ready()
        client = harness.client()
        client.predict([np.ones((3, 4), dtype=np.float32)], deadline=time.monotonic() + 30)  # padded to the bucket of 4
        with pytest.raises(DeadlineExceeded):
            client.predict([np.ones((1, 4), dtype=np.float32)], deadline=time.monotonic() - 1)
        client.status(fresh=True)  # answered after the expired request was shed
        stats = harness.server.status().stats
    finally:
        harness.close()
    after = {name: sample(name, model=model) - before[name] for name in names}
    assert after == {"kerasrv_batch_rows_count": 1, "kerasrv_batch_rows_sum": 3, "kerasrv_padded_rows_total": 1,
                     "kerasrv_queue_duration_seconds_count": 1, "kerasrv_batch_duration_seconds_count": 1}
    assert sample("kerasrv_requests_shed_total", model=model, reason="deadline") - shed == 1
    assert stats.load_seconds >= stats.warmup_seconds >= 0


def test_live_view_page_is_served(client):
    page = client.get("/dashboard")
    assert page.status_code == 200 and '<script src="/static/dashboard.js">' in page.get_data(as_text=True)
    assert 'href="/dashboard"' in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("source", ["app/templates/dashboard.html", "app/static/dashboard.js"])
def test_live_view_loads_nothing_from_outside(source):
    """No CDN, no external script or style: everything the page needs comes from this server."""
    text = (PROJECT_ROOT / source).read_text()
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
