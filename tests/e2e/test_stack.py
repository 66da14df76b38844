"""End to end through real nginx + uWSGI + supervisord on a loopback port: the demo model and user models."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.doubles import jpeg_bytes, png_bytes
from tools.local_server import LocalServer, mappings, wait_for
from training.digits import heldout_split, render_png

MADE_ID = re.compile(r"[0-9a-f]{32}")  # nginx's $request_id
LOAD_SECONDS = float(os.environ.get("KERASRV_TEST_LOAD_SECONDS", "30"))


@pytest.fixture(scope="module")
def digits():
    server = LocalServer(name="digits").start()
    yield server
    assert server.stop() == 0, server.log()


def test_demo_model_reads_heldout_digits(digits):
    """The bundled demo model, through HTTP, on digits it never saw in training."""
    _, _, images, labels = heldout_split()
    correct = 0
    with requests.Session() as session:
        for image, label in zip(images, labels):
            response = session.post(f"{digits.url}/predict", files={"image": ("d.png", render_png(image))})
            assert response.status_code == 200, response.text
            best = response.json()["predictions"][0]
            correct += best["label"] == str(label)
    accuracy = correct / len(labels)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f} on {len(labels)} held-out digits"


def test_answer_shape_and_every_input_form(digits):
    _, _, images, labels = heldout_split()
    png = render_png(images[0])
    url = f"{digits.url}/predict"
    multipart = requests.post(url, files={"image": ("d.png", png)}, params={"top_k": 3}).json()
    assert multipart["model"] == "digits"
    assert [set(p) for p in multipart["predictions"]] == [{"label", "index", "score"}] * 3
    scores = [p["score"] for p in multipart["predictions"]]
    assert scores == sorted(scores, reverse=True)
    raw = requests.post(url, data=png, headers={"Content-Type": "image/png"}).json()
    as_json = requests.post(url, json={"image": base64.b64encode(png).decode()}).json()
    assert raw["predictions"][0]["label"] == as_json["predictions"][0]["label"] == str(labels[0])
    assert len(raw["predictions"]) == 5  # default top_k
    several = requests.post(url, files=[("image", ("a.png", png)), ("image", ("b.png", render_png(images[1])))])
    body = several.json()["predictions"]
    assert len(body) == 2 and body[1][0]["label"] == str(labels[1])
    listed = requests.post(url, json={"images": [base64.b64encode(png).decode()]}).json()["predictions"]
    assert isinstance(listed[0], list)


def test_bad_uploads_get_json_errors_and_the_server_keeps_serving(digits):
    url = f"{digits.url}/predict"
    good = render_png(heldout_split()[2][0])
    truncated = jpeg_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))[:300]
    cases = [
        (dict(files={"image": ("notes.txt", b"just some text, not a picture")}), 415, "unsupported_image"),
        (dict(files={"image": ("cut.jpg", truncated)}), 400, "invalid_image"),
        (dict(data=b"", headers={"Content-Type": "image/png"}), 400, "empty_body"),
        (dict(), 400, "missing_input"),
        (dict(files={"file": ("d.png", good)}), 400, "missing_input"),
        (dict(data=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        (dict(data=b"{not json", headers={"Content-Type": "application/json"}), 400, "invalid_json"),
        (dict(json={"instances": [[1, 2, 3]]}), 422, "invalid_shape"),
        (dict(files={"image": ("d.png", good)}, params={"top_k": "x"}), 400, "invalid_parameter"),
        (dict(data=os.urandom(30 * 1024 * 1024), headers={"Content-Type": "image/jpeg"}), 413, "payload_too_large"),
    ]
    for kwargs, status, code in cases:
        response = requests.post(url, timeout=60, **kwargs)
        assert response.status_code == status, (code, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["code"] == code
        assert set(response.json()) == {"error", "code"}
        assert MADE_ID.fullmatch(response.headers["X-Request-ID"]), code  # nginx's own 413 too
    assert requests.post(url, files={"image": ("d.png", good)}).status_code == 200


def test_request_id_comes_back_once_and_is_in_the_access_log(digits):
    png = render_png(heldout_split()[2][0])
    response = requests.post(f"{digits.url}/predict", files={"image": ("d.png", png)},
                             headers={"X-Request-ID": "client-id-42"})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "client-id-42"  # once: no ", "

    def access_log_line() -> str | None:
        return next((line for line in digits.log(200_000).splitlines() if "rid=client-id-42" in line), None)

    assert '"POST /predict HTTP/1.1" 200' in wait_for(access_log_line, 30, "the access-log line of the request")
    for given in (None, "not a token", "x" * 129):
        headers = {} if given is None else {"X-Request-ID": given}
        for path in ("/health/live", "/static/upload.js", "/nope"):
            made = requests.get(f"{digits.url}{path}", headers=headers).headers["X-Request-ID"]
            assert MADE_ID.fullmatch(made), (given, path, made)


def test_json_logs_from_nginx_the_workers_and_the_mule(start_server):
    server = start_server({"LOG_FORMAT": "json", "WORKERS": "1", "THREADS": "2"}, name="jsonlogs")
    png = render_png(heldout_split()[2][0])
    response = requests.post(f"{server.url}/predict", files={"image": ("d.png", png)}, headers={"X-Request-ID": "j-1"})
    assert response.status_code == 200

    def entries() -> list[dict]:
        return [json.loads(line) for line in server.log(200_000).splitlines() if line.startswith("{")]

    access = wait_for(lambda: next((e for e in entries() if e.get("request_id") == "j-1"), None), 30,
                      "the JSON access-log line of the request")
    assert (access["method"], access["path"], access["status"], access["batch_size"]) == ("POST", "/predict", 200, "1")
    # nginx reads both from its cached millisecond clock at different moments, so the app's share
    # can come out a millisecond or two above the total (seen: 0.015 against 0.014)
    assert access["bytes"] > 0 and access["request_time"] + 0.005 >= float(access["upstream_time"]) >= 0
    ours = [e for e in entries() if "logger" in e]
    assert {"app.inference.mule_server", "app.inference.model_runner"} <= {e["logger"] for e in ours}, ours
    assert all(set(e) >= {"time", "level", "pid", "request_id", "message"} for e in ours)


HARDENING = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
             "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'"}


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], str]:
    """Send bytes no HTTP library would send; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.decode(errors="replace").partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 400, "header_too_large"),
    (b"GET /static/nope.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
    (b"POST /static/style.css HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 405,
     "method_not_allowed"),
    (b"GET /_errors/400 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),  # internal only
], ids=["bad-request-line", "uri-too-long", "header-too-large", "static-missing", "static-post", "internal-page"])
def test_nginx_own_errors_are_json_with_every_header(digits, request_bytes, status, code):
    got_status, headers, body = raw_http(digits.port, request_bytes)
    assert (got_status, json.loads(body)["code"]) == (status, code), body
    assert headers["Content-Type"] == "application/json"
    assert {name: headers.get(name) for name in HARDENING} == HARDENING
    assert MADE_ID.fullmatch(headers["X-Request-ID"]) and headers["Server"] == "nginx"  # no version


def test_app_answers_carry_the_hardening_headers_and_one_retry_after(digits):
    for response in (requests.get(digits.url), requests.get(f"{digits.url}/nope"),
                     requests.get(f"{digits.url}/static/style.css")):
        assert {name: response.headers.get(name) for name in HARDENING} == HARDENING, response.url
        assert "Retry-After" not in response.headers


def test_health_landing_page_and_static_files(digits):
    assert requests.get(f"{digits.url}/health/live").json() == {"status": "alive"}
    ready = requests.get(f"{digits.url}/health/ready")
    assert ready.status_code == 200 and ready.json()["state"] == "ready"
    page = requests.get(digits.url)
    assert page.status_code == 200
    assert "digits" in page.text and 'type="file"' in page.text and "curl" in page.text
    js = requests.get(f"{digits.url}/static/upload.js")
    assert js.status_code == 200 and "fetch" in js.text
    missing = requests.get(f"{digits.url}/nope")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_sixteen_clients_for_a_while_get_no_error(digits):
    """16 concurrent keep-alive clients for LOAD_SECONDS (30 by default): every answer is right."""
    _, _, images, labels = heldout_split()
    payloads = [(render_png(img), str(lab)) for img, lab in zip(images[:64], labels[:64])]
    stop_at = time.monotonic() + LOAD_SECONDS
    failures: list[str] = []
    counts: list[tuple[int, int]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        done = correct = 0
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                png, label = payloads[(index + done) % len(payloads)]
                response = session.post(f"{digits.url}/predict", files={"image": ("d.png", png)}, timeout=30)
                if response.status_code != 200:
                    with lock:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    correct += response.json()["predictions"][0]["label"] == label
                done += 1
        counts.append((done, correct))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    assert not failures, failures[:5]
    total, correct = map(sum, zip(*counts))
    assert total > 16
    assert correct / total >= 0.95  # answers under load are the right answers, not just 200s


def test_user_imagenet_model_with_symmetric_preprocessing(start_server, mobilenet_path):
    """`PORT=... MODEL_PATH=mobilenet.keras PREPROCESS=symmetric make run`: 224x224 RGB, 1000 classes."""
    server = start_server({"MODEL_PATH": str(mobilenet_path), "PREPROCESS": "symmetric"}, name="mobilenet")
    rng = np.random.default_rng(1)
    photo = jpeg_bytes(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    response = requests.post(f"{server.url}/predict", files={"image": ("p.jpg", photo)}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "mobilenet"
    assert len(body["predictions"]) == 5
    assert all(0 <= p["index"] < 1000 for p in body["predictions"])
    # the same numbers as the model run in-process on the same preprocessing
    import keras  # noqa: PLC0415

    from app.images import decode_image  # noqa: PLC0415
    from app.preprocess import normalize  # noqa: PLC0415

    model = keras.models.load_model(mobilenet_path)
    pixels = decode_image(photo, (224, 224), 3, 10**8)
    expected = model(normalize(pixels, "symmetric", "float32")[None], training=False).numpy()[0]
    for p in body["predictions"]:
        assert p["score"] == pytest.approx(float(expected[p["index"]]), abs=1e-4)
    assert body["predictions"][0]["index"] == int(np.argmax(expected))
    info = requests.get(server.url).text
    assert "224" in info and "symmetric" in info


def test_tabular_model_takes_instances_in_worker_mode(start_server, tabular_path):
    """A non-image model, served with the per-worker backend (INFERENCE_MODE=worker)."""
    server = start_server({"MODEL_PATH": str(tabular_path), "INFERENCE_MODE": "worker"}, name="tabular")
    rows = np.random.default_rng(2).normal(size=(3, 8)).round(3).tolist()
    response = requests.post(f"{server.url}/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert np.asarray(predictions).shape == (3, 3)
    np.testing.assert_allclose(np.sum(predictions, axis=1), 1.0, atol=1e-5)
    bad = requests.post(f"{server.url}/predict", json={"instances": [[1.0] * 7]})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_shape"
    image = requests.post(f"{server.url}/predict", files={"image": ("x.png", png_bytes(np.zeros((8, 8), np.uint8)))})
    assert image.status_code == 422 and image.json()["code"] == "not_an_image_model"
    assert requests.get(f"{server.url}/health/ready").json()["mode"] == "worker"


def test_model_that_fails_to_load_is_not_ready_and_does_not_crash_loop(start_server, model_dir):
    broken = model_dir / "broken.keras"
    broken.write_bytes(b"this is not a keras file")
    server = start_server({"MODEL_PATH": str(broken)}, wait_ready=False, name="broken")
    ready = server.wait_state("failed", 60)
    assert ready["http_status"] == 503 and "broken.keras" in ready["error"], ready
    first_mule = server.mule_pid()
    response = requests.post(f"{server.url}/predict", files={"image": ("x.png", png_bytes(np.zeros((8, 8), np.uint8)))})
    assert response.status_code == 503 and response.json()["code"] == "not_ready"
    assert response.headers["Retry-After"] == "1"  # the app's, once: nginx adds its own only to its own 503s
    assert "model failed to load" in server.log(100_000)
    # alive and waiting, not respawning: no other mule answers within 2 s (a window, since an
    # absence cannot be awaited; a crash loop respawns at once)
    with pytest.raises(TimeoutError):
        wait_for(lambda: server.mule_pid() != first_mule, 2, "a respawned mule", interval=0.1)


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(start_server):
    server = start_server({"WORKERS": "1", "THREADS": "2"}, name="drain")
    png = render_png(heldout_split()[2][0])
    server.connect_every_thread()
    with ThreadPoolExecutor(1) as pool:
        with server.mule_stopped() as mule:  # the request waits at the mule when SIGTERM arrives
            answer = pool.submit(requests.post, f"{server.url}/predict", files={"image": ("d.png", png)}, timeout=60)
            wait_for(lambda: server.requests_waiting(mule) == 1, 60, "the request waiting at the mule")
            server.process.send_signal(signal.SIGTERM)
        assert answer.result(60).status_code == 200
    assert server.stop() == 0, server.log()


def test_sigterm_while_workers_load_their_model_exits_cleanly_at_once(start_server):
    """uWSGI ignores SIGHUP in a worker that is loading its app, then waits for it without limit;
    app/wsgi.py makes such a worker exit instead of hanging the stop until it is killed."""
    server = start_server({"INFERENCE_MODE": "worker", "WORKERS": "2"}, wait_ready=False, name="loading")
    wait_for(lambda: server.log(100_000).count("spawned uWSGI worker") == 2, 60, "both workers forked")
    server.process.send_signal(signal.SIGTERM)
    loaded_at_sigterm = server.log(100_000).count("loaded from")
    code = server.process.wait(30)  # supervisord would wait 60 s, then SIGKILL
    assert loaded_at_sigterm < 2, "both workers had loaded already: this test saw no worker mid-load"
    assert code == 0, server.log()


def test_a_process_that_fails_for_good_stops_the_whole_server(start_server):
    """nginx cannot bind (the port is taken): supervisord gives up, and app.launch exits 1."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalServer({"PORT": str(taken.getsockname()[1])}, name="fatal")
        server.start(wait_ready=False)
        try:
            code = server.process.wait(90)
        finally:
            server.stop()
    assert code == 1, server.log()
    assert "failed for good" in server.log()
    shutil.rmtree(server.runtime)  # kept by stop() for a failed exit's logs: this one was expected


def test_streamed_uploads_are_read_whole(digits):
    """Transfer-Encoding: chunked (requests sends a generator so): nginx reads the body, uWSGI and
    the app get all of it, and the upload limit still holds."""
    _, _, images, labels = heldout_split()
    png = render_png(images[0])

    def pieces(data: bytes, size: int = 100):
        yield from (data[i : i + size] for i in range(0, len(data), size))

    raw = requests.post(f"{digits.url}/predict", data=pieces(png), headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"][0]["label"] == str(labels[0])
    body = json.dumps({"instances": [[[[0.0]] * 32] * 32]}).encode()
    streamed_json = requests.post(f"{digits.url}/v1/models/digits:predict", data=pieces(body))
    assert streamed_json.status_code == 200 and len(streamed_json.json()["predictions"][0]) == 10
    huge = requests.post(f"{digits.url}/predict", data=pieces(b"\0" * (11 << 20), 1 << 20),
                         headers={"Content-Type": "image/png"})
    assert huge.status_code == 413 and huge.json()["code"] == "payload_too_large"


def _worker_page_faults(server: LocalServer) -> int:
    """Minor page faults of the uWSGI workers so far (/proc/PID/stat, field 10)."""
    return sum(int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[7]) for pid in server.worker_pids())


def _faults_per_request(server: LocalServer, photo: bytes, warm: int = 40, measured: int = 20) -> float:
    """The median page faults one request costs the workers, once every thread has served a few."""
    with requests.Session() as session:
        def post() -> None:
            response = session.post(f"{server.url}/predict", data=photo, headers={"Content-Type": "image/png"})
            assert response.status_code == 200, response.text

        for _ in range(warm):
            post()
        faults = []
        for _ in range(measured):
            before = _worker_page_faults(server)
            post()
            faults.append(_worker_page_faults(server) - before)
    return float(np.median(faults))


def test_request_buffers_are_reused_not_faulted_in_afresh(digits, start_server):
    """The launcher's malloc thresholds (app.launch.MALLOC_DEFAULTS) keep a request's freed body,
    pixels and tensors in the heap: glibc's defaults hand every block over 128 KB back to the
    kernel, and the next request faults each page in again (CPU the model needs). The same server
    with glibc's defaults put back through the environment shows the difference."""
    photo = png_bytes(np.random.default_rng(3).integers(0, 255, (800, 800), dtype=np.uint8))  # ~640 KB
    assert len(photo) > 512 * 1024
    kept = _faults_per_request(digits, photo)
    glibc = start_server({"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}, name="glibc-malloc")
    returned = _faults_per_request(glibc, photo)
    assert kept < 20, (kept, returned)
    assert returned > 100, (kept, returned)


def _shared_area_kb(master: int) -> tuple[int, int]:
    """Size and Rss in kB of the largest shared anonymous mapping of uWSGI's master (its sharedarea)."""
    return max((m["Size"], m["Rss"]) for m in mappings(master)
               if m["perms"].endswith("s") and m["path"] == "/dev/zero (deleted)")


def test_the_shared_memory_holds_only_what_requests_wrote(digits):
    """uWSGI's master zeroes its sharedarea (WORKERS x THREADS x SLOT_MB) as it creates it, which
    leaves all of it resident; each worker hands its own slots' pages back when it starts
    (wire.release_slots), so only what requests write stays."""
    rng = np.random.default_rng(4)
    for _ in range(10):
        image = png_bytes(rng.integers(0, 255, (64, 64), dtype=np.uint8))
        response = requests.post(f"{digits.url}/predict", data=image, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
    size, _ = _shared_area_kb(digits.master_pid())
    assert size >= 2 * 4 * 8 * 1024  # WORKERS=2 x THREADS=4 x SLOT_MB=8
    wait_for(lambda: _shared_area_kb(digits.master_pid())[1] < size // 10, LOAD_SECONDS,
             "the workers to release their slots")
