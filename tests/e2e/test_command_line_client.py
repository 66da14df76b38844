"""app.client against the real stack: the command line (a folder of digits, one bad file, stdin)
and the Python Client (images, JSON instances, errors)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from app.client import Client, ServerError
from app.config import PROJECT_ROOT
from training.digits import heldout_split, render_png, to_model_input


def test_a_folder_of_images_through_the_command_line(start_server, tmp_path):
    server = start_server(name="client")
    _, _, images, labels = heldout_split()
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(24):
        (folder / f"{i:02d}-{labels[i]}.png").write_bytes(render_png(images[i]))
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "app.client", server.url, str(folder), "--concurrency", "8", "--top-k", "3",
               "--out", str(out)]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 1, done.stderr  # the broken file
    results = {json.loads(line)["file"]: json.loads(line) for line in out.read_text().splitlines()}
    assert len(results) == 25
    assert "415 unsupported_image" in results[str(folder / "broken.png")]["error"]
    correct = sum(r["predictions"][0]["label"] == name.rsplit("-", 1)[1].removesuffix(".png")
                  for name, r in results.items() if "predictions" in r)
    assert correct >= 22 and all(len(r["predictions"]) == 3 for r in results.values() if "predictions" in r)
    assert "25 sent, 1 errors" in done.stderr and "req/s" in done.stderr and "p99" in done.stderr

    piped = subprocess.run([sys.executable, "-m", "app.client", server.url, "-", "--quiet"], cwd=PROJECT_ROOT,
                           input=render_png(images[0]), capture_output=True, timeout=60, check=False)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["predictions"][0]["label"] == str(labels[0])


def test_the_python_client(start_server):
    server = start_server(name="client-lib")
    _, _, images, labels = heldout_split()
    client = Client(server.url)
    pngs = [render_png(images[i]) for i in range(8)]
    best = [client.predict(png, top_k=2) for png in pngs]
    assert all(len(p) == 2 and p[0]["score"] >= p[1]["score"] for p in best)
    assert sum(p[0]["label"] == str(labels[i]) for i, p in enumerate(best)) >= 7

    # the same images as tensors: raw scores, one row each, the same best class as the image route
    rows = client.predict_instances([to_model_input(png).tolist() for png in pngs])
    assert np.asarray(rows).shape == (8, 10)
    assert [int(np.argmax(row)) for row in rows] == [p[0]["index"] for p in best]

    with pytest.raises(ServerError) as bad_image:
        client.predict(b"not an image")
    assert (bad_image.value.status, bad_image.value.code) == (415, "unsupported_image")
    with pytest.raises(ServerError) as bad_rows:
        client.predict_instances([[1.0, 2.0]])  # not the model's (32, 32, 1)
    assert (bad_rows.value.status, bad_rows.value.code) == (422, "invalid_shape")
