"""v2 binary with BYTES images keeps up with /predict: 16 closed-loop clients, same server, same
digits, alternating windows (ABBA, so a slow spell hits both), median of the paired ratios.

wrk drives the load where it can be had (`make install-dev` installs it as root): a Python client
takes about a third of the 2-core machine, and its GIL scheduling swung single windows by 25%.
"""

from __future__ import annotations

import json
import statistics
import struct

from bench.load import Load, Request
from training.digits import heldout_split, render_png

PAIRS, SECONDS, CLIENTS = 8, 2.0, 16


def v2_binary(png: bytes) -> Request:
    """What tritonclient sends for one BYTES image with a binary output."""
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 + len(png)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    headers = (("Content-Type", "application/octet-stream"), ("Inference-Header-Content-Length", str(len(header))))
    return Request("/v2/models/digits/infer", headers, header + struct.pack("<I", len(png)) + png)


def test_v2_binary_images_within_10_percent_of_predict(start_server):
    server = start_server(name="throughput")
    pngs = [render_png(image) for image in heldout_split()[2][:32]]
    predict = [Request("/predict", (("Content-Type", "image/png"),), png) for png in pngs]
    infer = [v2_binary(png) for png in pngs]
    load = Load()
    try:
        load.window(server.url, CLIENTS, SECONDS, predict)  # warm-up
        ratios, seen = [], []
        for pair in range(PAIRS):
            order = (("predict", predict), ("v2", infer)) if pair % 2 == 0 else (("v2", infer), ("predict", predict))
            windows = {name: load.window(server.url, CLIENTS, SECONDS, requests) for name, requests in order}
            assert all(w.errors == 0 for w in windows.values()), windows
            ratios.append(windows["v2"].rps / windows["predict"].rps)
            seen.append({name: round(w.rps, 1) for name, w in windows.items()})
    finally:
        load.close()
    assert statistics.median(ratios) >= 0.9, seen
