"""The four things `make bench` measures, each as one model, its request bodies and its ceiling.

- mobilenet: MobileNetV2 on 224x224 photos (the standard case; the model costs most of the time)
- small: the bundled digits CNN on 64x64 PNGs (per-request and per-call overhead dominate)
- tabular: a small MLP fed JSON `instances` (no image decode at all)
- photo12mp: MobileNetV2 on a 12 MP JPEG (decode dominates; the ceiling decodes naively at full size)

The orchestrator never imports TensorFlow: models are built in a subprocess (bench.model).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.config import PROJECT_ROOT, Settings
from app.images import decode_image
from app.inference.spec import ModelSpec
from app.preprocess import normalize
from bench.load import Request
from bench.model import TABULAR_FEATURES, WORK_DIR, ensure_model, photos


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    model: str  # bench.model's name for it, or a path under the project for a bundled one
    preprocess: str  # PREPROCESS, for the server and the ceiling alike
    content_type: str
    concurrency: str  # the default client counts
    ceiling_batch: int  # the batch the in-process ceiling runs at (the reference)
    bodies: Callable[[], list[bytes]]  # the request bodies the clients send in turn
    ceiling_decode: str = "server"  # "server": the server's decode_image; "naive": full decode, then resize
    # the mule-mode server's WORKERS, THREADS and MAX_BATCH_SIZE: a cheap model wants more slots
    # (requests in flight) and larger batches, fewer processes sharing the cores (docs/performance.md)
    mule_settings: tuple[int, int, int] = (4, 4, 16)
    # and its MODEL_THREADS: one thread per TensorFlow pool where ops are too small to split (0: TF's default)
    model_threads: int = 0

    def model_path(self) -> Path:
        bundled = PROJECT_ROOT / self.model
        return bundled if bundled.is_file() else ensure_model(self.model)

    @property
    def is_tabular(self) -> bool:
        return self.content_type == "application/json"

    def kerasrv_requests(self, bodies: list[bytes]) -> list[Request]:
        return [Request("/predict", (("Content-Type", self.content_type),), body) for body in bodies]

    def fill_row(self, body: bytes, spec: ModelSpec, settings: Settings, out: np.ndarray) -> None:
        """What the ceiling (and Triton's infer function) does to one body: parse or decode it,
        preprocess, and write the model's input row."""
        if self.is_tabular:
            out[...] = json.loads(body)["instances"][0]
            return
        height, width, channels = spec.input.shape
        if self.ceiling_decode == "naive":
            from PIL import Image  # noqa: PLC0415

            with Image.open(io.BytesIO(body)) as image:
                pixels = np.asarray(image.convert("RGB" if channels == 3 else "L").resize((width, height)))
            pixels = pixels.reshape(height, width, channels)
        else:
            pixels = decode_image(body, (height, width), channels, settings.max_image_pixels, settings.resize_mode)
        normalize(pixels, spec.preprocess, spec.input.dtype, out=out)


def _digits_png() -> list[bytes]:
    """Two held-out digits as 64x64 PNGs, drawn as the demo model's tests draw them (the model
    takes 32x32: the server resizes)."""
    from training.digits import heldout_split, render_png  # noqa: PLC0415

    return [render_png(digit) for digit in heldout_split()[2][:2]]


def _tabular_json() -> list[bytes]:
    rng = np.random.default_rng(0)
    return [json.dumps({"instances": [rng.random(TABULAR_FEATURES).round(4).tolist()]}).encode() for _ in range(4)]


def _photo_12mp() -> list[bytes]:
    """A 4000x3000 JPEG made once from a real photo: upscaled, with a sensor's grain added (an
    upscale alone compresses to 1.5 MB; a phone's photo of that size is 3-4 MB at quality 92)."""
    path = WORK_DIR / "photo-12mp.jpg"
    if not path.is_file():
        from PIL import Image  # noqa: PLC0415

        WORK_DIR.mkdir(parents=True, exist_ok=True)
        with Image.open(io.BytesIO(photos()[0])) as image:
            big = np.asarray(image.convert("RGB").resize((4000, 3000), Image.Resampling.LANCZOS), dtype=np.float32)
        grain = np.random.default_rng(0).normal(0, 4, big.shape[:2])[..., None]
        Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=92)
    return [path.read_bytes()]


WORKLOADS = {
    w.name: w
    for w in (
        Workload("mobilenet", "MobileNetV2 (224x224 input), two JPEG photos of 640x427", "mobilenet_v2",
                 "symmetric", "image/jpeg", "1,4,16,32,64", 16, photos),
        Workload("small", "digits CNN (32x32x1), 64x64 PNG", "models/digits.keras", "unit", "image/png",
                 "1,16,64", 64, _digits_png, mule_settings=(2, 16, 32), model_threads=1),
        Workload("tabular", f"MLP ({TABULAR_FEATURES} features), JSON instances", "tabular_mlp", "none",
                 "application/json", "1,16,64", 64, _tabular_json, mule_settings=(2, 16, 32),
                 model_threads=1),
        Workload("photo12mp", "MobileNetV2, 12 MP phone JPEG (3-4 MB)", "mobilenet_v2", "symmetric", "image/jpeg",
                 "1,16", 16, _photo_12mp, ceiling_decode="naive"),
    )
}
