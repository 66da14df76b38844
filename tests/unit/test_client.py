"""app.client without the server: retries after Retry-After, errors, the summary, finding images."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from app.client import Client, ServerError, find_images, main


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from a list of (status, headers, body); records what it got."""

    script: ClassVar[list[tuple[int, dict, dict]]] = []
    seen: ClassVar[list[tuple[str, bytes, str | None]]] = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.seen.append((self.path, self.rfile.read(length), self.headers.get("Authorization")))
        status, headers, body = self.script.pop(0) if self.script else (200, {}, {"predictions": []})
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Scripted.script, Scripted.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(10)


def test_a_503_is_retried_after_its_retry_after_then_answered(server):
    busy = (503, {"Retry-After": "0"}, {"error": "full", "code": "overloaded"})
    Scripted.script = [busy, busy, (200, {}, {"predictions": [{"label": "7", "index": 7, "score": 0.9}]})]
    assert Client(server, token="s3cret").predict(b"png", top_k=1)[0]["label"] == "7"
    assert len(Scripted.seen) == 3
    assert {seen[2] for seen in Scripted.seen} == {"Bearer s3cret"}
    assert Scripted.seen[0][0] == "/predict?top_k=1" and Scripted.seen[0][1] == b"png"


def test_retries_run_out_and_other_errors_are_not_retried(server):
    busy = (503, {"Retry-After": "0"}, {"error": "full", "code": "overloaded"})
    Scripted.script = [busy, busy, busy]
    with pytest.raises(ServerError, match="503 overloaded") as err:
        Client(server, retries=2).predict(b"x")
    assert err.value.code == "overloaded" and len(Scripted.seen) == 3
    Scripted.script = [(415, {}, {"error": "not an image", "code": "unsupported_image"})]
    with pytest.raises(ServerError) as err:
        Client(server).predict(b"x")
    assert err.value.status == 415 and len(Scripted.seen) == 4


def test_the_command_line_writes_a_line_per_image_and_a_summary(server, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for name in ("a.png", "b.JPG", "more/c.webp", "notes.txt"):
        (folder / name).write_bytes(name.encode())
    Scripted.script = [(200, {}, {"predictions": [{"label": "1", "index": 1, "score": 1.0}]})] * 2 + [
        (400, {}, {"error": "bad", "code": "invalid_image"})]
    out = tmp_path / "results.jsonl"
    code = main([server, str(folder), "--concurrency", "1", "--top-k", "2", "--out", str(out), "--quiet"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 1  # one image failed
    assert sorted(line["file"] for line in lines) == sorted(str(folder / n) for n in ("a.png", "b.JPG", "more/c.webp"))
    assert sum("error" in line for line in lines) == 1 and all(line["ms"] >= 0 for line in lines)
    assert "3 sent, 1 errors" in capsys.readouterr().err


def test_missing_sources_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        list(find_images([str(tmp_path / "nope")]))
