"""Shared helpers for the bundled digits demo model: the data split and the PNG rendering.

Training (training/train_demo.py) and the tests use the same split and the same renderer, so
the accuracy the test checks is measured exactly the way the model was trained and served.
No TensorFlow import here: the tests and the server-side tooling import this module cheaply.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# load_digits stores ink intensity as integers 0..16 on an 8x8 grid.
DIGIT_MAX = 16.0
LABELS = tuple(str(d) for d in range(10))
# The model input (height, width); one grayscale channel.
INPUT_SIZE = (32, 32)


def heldout_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (train_images, train_labels, test_images, test_labels) from sklearn's load_digits.

    Deterministic (fixed random_state) and stratified, so training and the test always agree
    on which digits were never seen in training. Images are the raw (N, 8, 8) float arrays with
    values 0..16; labels are int arrays of 0..9.
    """
    from sklearn.datasets import load_digits  # noqa: PLC0415 - keep module import cheap
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        digits.images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    return train_x, train_y, test_x, test_y


def render_png(digit_8x8: np.ndarray, size: int = 64, invert: bool = False) -> bytes:
    """Render one 8x8 digit as a size x size grayscale PNG, as a user might upload it.

    Dark ink on white paper by default (pixel = 255 - value * 255 / 16), light ink on black
    with `invert=True`; upscaled with Pillow BILINEAR so the model learns from smooth strokes
    rather than blocky 8x8 cells. The bytes are then decoded by the server's own decoder.
    """
    values = np.clip(np.asarray(digit_8x8, dtype=np.float64), 0.0, DIGIT_MAX)
    ink = values * (255.0 / DIGIT_MAX)
    pixels = ink if invert else 255.0 - ink
    small = Image.fromarray(np.rint(pixels).astype(np.uint8), "L")
    image = small.resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_model_input(png_bytes: bytes) -> np.ndarray:
    """Decode and normalise one upload exactly as the server does: a (32, 32, 1) float32 in [0, 1].

    Uses the server's own app.images.decode_image and app.preprocess.normalize (PREPROCESS=unit),
    so training, the tests and serving cannot drift apart (no train/serve skew).
    """
    from app.images import decode_image  # noqa: PLC0415 - app is only needed on this path
    from app.preprocess import normalize  # noqa: PLC0415

    pixels = decode_image(png_bytes, size=INPUT_SIZE, channels=1, max_pixels=10**7, resize_mode="stretch")
    return normalize(pixels, "unit", "float32")
