"""The same model and decode behind NVIDIA Triton's dynamic batcher, via PyTriton, as the issue
measured it (max batch 16, 2 ms queue delay): the peer that kerasrv's mule is compared with.

Triton takes KServe v2 requests whose input `image` holds the encoded image (or, for the tabular
workload, `features` as JSON); its dynamic batcher gathers them and calls `infer` once per batch,
which prepares each row as the benchmark's ceiling does (bench/workloads.py: kerasrv's own
decode, or the naive one for the 12 MP photo) and makes one call to the model through kerasrv's
own ModelRunner. So the
two servers differ only in what surrounds the model: HTTP front end, batching and scheduling.

It runs from its own virtual environment (see bench/requirements-triton.txt); `make bench-triton`
makes it and runs `python -m bench.run --kinds mule,triton` with TRITON_PYTHON pointing at it.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys

import numpy as np

from app.config import Settings
from app.inference.model_runner import load_runner
from bench.workloads import WORKLOADS, Workload

MODEL_NAME = "model"
MAX_BATCH = 16
QUEUE_DELAY_US = 2000


def main(workload: Workload, http_port: int, grpc_port: int, metrics_port: int) -> None:
    from pytriton.decorators import batch  # noqa: PLC0415 - only in the Triton venv
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: PLC0415
    from pytriton.triton import Triton, TritonConfig  # noqa: PLC0415

    # TensorFlow's own thread spinning (kerasrv turns it off), as a Triton Python model would run it
    settings = Settings.from_env({"MODEL_PATH": str(workload.model_path()), "PREPROCESS": workload.preprocess,
                                  "MODEL_THREAD_SPINNING": "on"})
    runner = load_runner(settings)
    spec = runner.spec
    (rows,) = runner.new_buffer()

    @batch
    def infer_images(image: np.ndarray) -> dict[str, np.ndarray]:
        for i, data in enumerate(image[:, 0]):
            workload.fill_row(bytes(data), spec, settings, rows[i])
        (scores,) = runner.run_padded([rows], len(image))
        return {"scores": scores}

    @batch
    def infer_features(features: np.ndarray) -> dict[str, np.ndarray]:
        rows[: len(features)] = features
        (scores,) = runner.run_padded([rows], len(features))
        return {"scores": scores}

    if workload.is_tabular:
        infer, inputs = infer_features, [Tensor(name="features", dtype=np.float32, shape=spec.input.shape)]
    else:
        infer, inputs = infer_images, [Tensor(name="image", dtype=bytes, shape=(1,))]
    config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          http_address="127.0.0.1", grpc_address="127.0.0.1")
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer,
            inputs=inputs,
            outputs=[Tensor(name="scores", dtype=np.float32, shape=spec.outputs[0].shape)],
            config=ModelConfig(max_batch_size=MAX_BATCH,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US)),
            strict=False,
        )
        triton.serve()


def v2_request(body: bytes, tabular: bool) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """A KServe v2 request for one kerasrv body, and its headers. An image travels as raw bytes in
    a binary-tensor request (no base64) and the scores come back as raw float32s; a tabular row
    travels as JSON, as kerasrv's `instances` do."""
    if tabular:
        (row,) = json.loads(body)["instances"]
        data = json.dumps({"inputs": [{"name": "features", "shape": [1, len(row)], "datatype": "FP32", "data": row}]})
        return data.encode(), (("Content-Type", "application/json"),)
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(body)}}],
        "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
    }).encode()
    headers = (("Content-Type", "application/octet-stream"), ("Inference-Header-Content-Length", str(len(header))))
    return header + struct.pack("<I", len(body)) + body, headers


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper())
    main(WORKLOADS[sys.argv[1]], *map(int, sys.argv[2:5]))
