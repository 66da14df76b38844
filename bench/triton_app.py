"""The same model and JPEG decode behind NVIDIA Triton's dynamic batcher, via PyTriton, as the issue
measured it (max batch 16, 2 ms queue delay): the peer that kerasrv's mule is compared with.

Triton takes KServe v2 requests whose input `image` holds the JPEG bytes; its dynamic batcher
gathers them and calls `infer` once per batch, which decodes and preprocesses each photo with
kerasrv's own functions and makes one call to the model through kerasrv's own ModelRunner. So the
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
from pathlib import Path

import numpy as np

from app.config import Settings
from app.images import decode_image
from app.inference.model_runner import load_runner
from app.preprocess import normalize

MODEL_NAME = "mobilenet"
MAX_BATCH = 16
QUEUE_DELAY_US = 2000


def main(model_path: Path, http_port: int, grpc_port: int, metrics_port: int) -> None:
    from pytriton.decorators import batch  # noqa: PLC0415 - only in the Triton venv
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # noqa: PLC0415
    from pytriton.triton import Triton, TritonConfig  # noqa: PLC0415

    settings = Settings.from_env({"MODEL_PATH": str(model_path), "PREPROCESS": "symmetric"})
    runner = load_runner(settings)
    spec = runner.spec
    height, width, channels = spec.input.shape
    (rows,) = runner.new_buffer()

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        for i, data in enumerate(image[:, 0]):
            pixels = decode_image(bytes(data), (height, width), channels, settings.max_image_pixels,
                                  settings.resize_mode)
            normalize(pixels, spec.preprocess, spec.input.dtype, out=rows[i])
        (scores,) = runner.run_padded([rows], len(image))
        return {"scores": scores}

    config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          http_address="127.0.0.1", grpc_address="127.0.0.1")
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="scores", dtype=np.float32, shape=spec.outputs[0].shape)],
            config=ModelConfig(max_batch_size=MAX_BATCH,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US)),
            strict=False,
        )
        triton.serve()


def v2_request_body(photo: bytes) -> tuple[bytes, int]:
    """A KServe v2 binary-tensor request for one photo, and the length of its JSON header: the
    JPEG travels as raw bytes (no base64), and the scores come back as raw float32s."""
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(photo)}}],
        "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
    }).encode()
    return header + struct.pack("<I", len(photo)) + photo, len(header)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper())
    main(Path(sys.argv[1]), *map(int, sys.argv[2:5]))
