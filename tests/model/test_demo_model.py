"""The bundled demo model (models/digits.keras) still reads held-out digits the way the server feeds it.

Each held-out digit goes through the same path as an upload: a PNG from training.digits.render_png,
then the server's decode_image and normalize (PREPROCESS=unit). Both ink polarities must work.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.config import PROJECT_ROOT
from training.digits import LABELS, heldout_split, render_png, to_model_input

MODELS_DIR = PROJECT_ROOT / "models"
MIN_ACCURACY = 0.95


@pytest.fixture(scope="module")
def model():
    import keras  # noqa: PLC0415 - slow import, only for this test

    return keras.models.load_model(MODELS_DIR / "digits.keras", compile=False)


def test_labels_file_lists_the_ten_digits() -> None:
    lines = (MODELS_DIR / "digits.labels.txt").read_text().splitlines()
    assert tuple(lines) == LABELS


def test_model_takes_32x32_grayscale_and_gives_10_probabilities(model) -> None:
    assert tuple(model.input_shape) == (None, 32, 32, 1)
    assert tuple(model.output_shape) == (None, 10)


@pytest.mark.parametrize("invert", [False, True], ids=["dark-on-white", "light-on-black"])
def test_heldout_accuracy_through_the_server_path(model, invert: bool) -> None:
    _, _, test_images, test_labels = heldout_split()
    inputs = np.stack([to_model_input(render_png(digit, size=64, invert=invert)) for digit in test_images])
    assert inputs.shape == (len(test_images), 32, 32, 1)
    assert inputs.dtype == np.float32

    probabilities = model.predict(inputs, batch_size=256, verbose=0)
    accuracy = float((probabilities.argmax(axis=1) == test_labels).mean())

    assert accuracy >= MIN_ACCURACY, f"held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}"
