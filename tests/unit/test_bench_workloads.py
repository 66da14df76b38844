"""The benchmark's workloads: their bodies, the requests each server gets, and the targets checked."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from app.config import PROJECT_ROOT, Settings
from app.inference.spec import ModelSpec, TensorSpec
from bench import report, triton_app
from bench.model import TABULAR_FEATURES
from bench.workloads import WORKLOADS


def spec_of(shape: tuple[int, ...], preprocess: str) -> ModelSpec:
    return ModelSpec(name="m", inputs=(TensorSpec("x", shape, "float32"),), outputs=(TensorSpec("y", (3,), "float32"),),
                     labels=None, preprocess=preprocess, version=1)


@pytest.mark.parametrize("name", ["small", "tabular"])
def test_the_server_and_the_ceiling_get_the_same_bodies(name):
    workload = WORKLOADS[name]
    bodies = workload.bodies()
    requests = workload.kerasrv_requests(bodies)
    assert [r.body for r in requests] == bodies and len(bodies) >= 2
    assert all(r.path == "/predict" and dict(r.headers)["Content-Type"] == workload.content_type for r in requests)


def test_the_small_workload_draws_a_64x64_png_that_fills_a_32x32_row():
    workload = WORKLOADS["small"]
    body = workload.bodies()[0]
    with Image.open(io.BytesIO(body)) as image:
        assert (image.format, image.size) == ("PNG", (64, 64))
    row = np.zeros((32, 32, 1), np.float32)
    workload.fill_row(body, spec_of((32, 32, 1), "unit"), Settings(), row)
    assert 0.0 <= row.min() < row.max() <= 1.0  # ink and background, scaled to [0, 1]


def test_a_tabular_body_is_one_row_of_features_for_kerasrv_and_for_triton():
    workload = WORKLOADS["tabular"]
    body = workload.bodies()[0]
    row = np.zeros(TABULAR_FEATURES, np.float32)
    workload.fill_row(body, spec_of((TABULAR_FEATURES,), "none"), Settings(), row)
    np.testing.assert_allclose(row, json.loads(body)["instances"][0], rtol=1e-6)
    data, headers = triton_app.v2_request(body, tabular=True)
    (tensor,) = json.loads(data)["inputs"]
    assert dict(headers) == {"Content-Type": "application/json"}
    assert tensor["shape"] == [1, TABULAR_FEATURES] and tensor["datatype"] == "FP32"
    assert tensor["data"] == json.loads(body)["instances"][0]


def test_triton_gets_an_image_as_one_binary_bytes_tensor():
    photo = WORKLOADS["small"].bodies()[0]
    data, headers = triton_app.v2_request(photo, tabular=False)
    length = int(dict(headers)["Inference-Header-Content-Length"])
    header = json.loads(data[:length])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 4 + len(photo)
    assert struct.unpack("<I", data[length : length + 4]) == (len(photo),) and data[length + 4 :] == photo


def _results(workload: str, rows: list[tuple[str, int, float, float]], other_load: dict | None = None) -> dict:
    """A run's results with one summary row per (kind, c, req/s, x ceiling); `other_load`: the
    cores other processes took in a row's server windows, by (kind, c), 0.0 where not given."""
    other_load = other_load or {}
    summary = [{"kind": kind, "concurrency": c, "rps": rps, "ratio": ratio, "ratio_min": ratio, "ratio_max": ratio,
                "ceiling_img_s": rps / ratio, "p50_ms": 1.0, "latency1_ms": 0.8, "p50_over_latency1": 1.25,
                "p99_ms": 10.0, "fair_share_ms": 10.0, "p99_over_fair": 1.0, "rss_mb": 900, "pss_mb": 700,
                "tensorflow_processes": 1, "other_cpu_ceiling": 0.0, "other_cpu_server": other_load.get((kind, c), 0.0)}
               for kind, c, rps, ratio in rows]
    return {"settings": {"workload": workload, "max_other_load": 0.25}, "summary": summary, "memory_probe": []}


def test_the_small_models_targets_need_3000_requests_a_second_and_twice_triton():
    def verdicts(mule_rps: float, triton_rps: float) -> dict[str, str]:
        results = _results("small", [("mule", 1, 900, 0.3), ("mule", 64, mule_rps, mule_rps / 5000),
                                     ("triton", 64, triton_rps, triton_rps / 5000)])
        return {check["target"]: check["result"] for check in report.targets(results)}

    passing = verdicts(3100, 1500)
    assert passing["throughput at c=64 >= 3000 req/s"] == "PASS"
    assert passing["throughput at c=64 >= 2.0 x Triton's in the same run"] == "PASS"
    assert passing["throughput at c=64 >= 0.55 x ceiling"] == "PASS"
    assert passing["p50 at c=1 <= batch-1 latency + 0.5 ms"] == "PASS"  # 1.0 ms vs 0.8 + 0.5
    failing = verdicts(2900, 1500)
    assert failing["throughput at c=64 >= 3000 req/s"] == "FAIL"
    assert failing["throughput at c=64 >= 2.0 x Triton's in the same run"] == "FAIL"


def test_a_target_against_a_peer_that_was_not_run_is_not_measured_rather_than_passed():
    results = _results("mobilenet", [("mule", 16, 80, 1.1), ("mule", 32, 80, 1.1)])
    verdicts = {check["target"]: check["result"] for check in report.targets(results)}
    assert verdicts["throughput at c=16 >= 1.1 x Triton's in the same run"] == "NOT MEASURED"
    assert verdicts["throughput at c=16 >= 1.05 x ceiling"] == "PASS"


def test_a_verdict_that_rests_on_a_disturbed_row_is_unsure_whichever_way_it_went():
    rows = [("mule", 1, 900, 0.3), ("mule", 64, 3100, 0.62), ("triton", 64, 1500, 0.3)]

    def verdicts(other_load: dict) -> dict[str, dict]:
        return {check["target"]: check for check in report.targets(_results("small", rows, other_load))}

    calm = verdicts({})
    assert calm["throughput at c=64 >= 2.0 x Triton's in the same run"]["result"] == "PASS"
    # Triton slowed by a neighbour: the lead over it proves nothing
    slowed_peer = verdicts({("triton", 64): 0.7})["throughput at c=64 >= 2.0 x Triton's in the same run"]
    assert slowed_peer["result"] == "UNSURE"
    assert "would be PASS" in slowed_peer["detail"] and "triton c=64" in slowed_peer["detail"]
    # the mule slowed: its failures prove nothing either, and only the checks on that row change
    slowed_mule = verdicts({("mule", 64): 0.7})
    assert slowed_mule["throughput at c=64 >= 0.55 x ceiling"]["result"] == "UNSURE"
    assert slowed_mule["throughput at c=64 >= 3000 req/s"]["result"] == "UNSURE"
    assert slowed_mule["p50 at c=1 <= batch-1 latency + 0.5 ms"]["result"] == "PASS"
    assert slowed_mule["one model copy in mule mode whatever the worker count"]["result"] == "PASS"
    # at the limit is not over it
    assert verdicts({("triton", 64): 0.25})["throughput at c=64 >= 2.0 x Triton's in the same run"]["result"] == "PASS"


def test_the_report_says_where_the_ceiling_and_the_mule_ran_xla():
    def pair(compiled):
        return {"batches": {"compiled_buckets": compiled}}

    results = {"machine": {"ceiling_compiled_buckets": [1, 2, 3]},
               "kinds": [{"kind": "mule", "rows": [{"pairs": [pair([1, 2]), pair([1, 2])]}]},
                         {"kind": "triton", "rows": [{"pairs": [{"batches": {}}]}]}]}
    (note, _) = report._compiled_note(results)
    assert "the ceiling ran compiled at batch sizes 1, 2, 3; the mule at 1, 2." in note
    results["machine"]["ceiling_compiled_buckets"] = []
    assert "the ceiling ran compiled at batch sizes none;" in report._compiled_note(results)[0]
    assert report._compiled_note({"machine": {}, "kinds": []}) == []  # a run from before the race


def test_results_name_programs_not_the_directories_of_the_machine_that_ran_them():
    raw = {"env": {"MODEL_PATH": "/work/main/models/digits.keras"},
           "memory": [{"cmd": "/tmp/x/.venv/bin/python3 /tmp/x/.venv/bin/supervisord -c /work/main/supervisord.conf ",
                       "pid": 7},
                      {"cmd": "nginx: master process /usr/sbin/nginx -c /var/tmp/kerasrv-bench-1/run/nginx.conf"}],
           "request": {"path": "/v2/models/digits/infer", "url": "http://127.0.0.1:8080/v2/models/digits/infer"},
           "model": "bench/work/mobilenet_v2.keras"}
    clean = report.without_machine_paths(raw)
    assert clean["env"]["MODEL_PATH"] == "digits.keras"
    assert clean["memory"][0] == {"cmd": "python3 supervisord -c supervisord.conf ", "pid": 7}
    assert clean["memory"][1]["cmd"] == "nginx: master process nginx -c nginx.conf"
    assert clean["request"] == raw["request"] and clean["model"] == raw["model"]  # routes, URLs and relative paths stay


def test_the_committed_results_hold_no_path_of_the_machine_they_ran_on():
    for path in sorted((PROJECT_ROOT / "bench" / "results").glob("*.json")):
        found = report._MACHINE_PATH.search(path.read_text())
        assert found is None, f"{path.name}: {found.group(0)}"
