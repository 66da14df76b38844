"""Train the bundled demo model: a small CNN on scikit-learn's 8x8 handwritten digits.

Run from the repository root with `python -m training.train_demo`. Writes models/digits.keras
and models/digits.labels.txt. Every training image is a PNG rendered by training.digits and
decoded by the server's own decoder and normaliser, so the model sees exactly what it will be
served (32x32x1 float32 in [0, 1], PREPROCESS=unit). Augmentation covers both ink polarities
and small changes of scale and position, so a real upload of one drawn digit works too.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from training.digits import INPUT_SIZE, LABELS, heldout_split, render_png, to_model_input

SEED = 1234
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
AUGMENTED_COPIES = 3  # per digit and polarity, on top of the plain 64x64 rendering
EPOCHS = 10
BATCH_SIZE = 128


def augmented_png(digit: np.ndarray, rng: np.random.Generator, invert: bool) -> bytes:
    """Render at a random size, then pad the paper by a random margin at a random offset.

    The margin (up to a quarter of the size) shrinks and shifts the digit by a pixel or two
    after the server's resize to 32x32, which is what a real, hand-cropped upload looks like.
    """
    size = int(rng.integers(48, 97))
    digit_image = Image.open(io.BytesIO(render_png(digit, size=size, invert=invert)))
    canvas_size = size + int(rng.integers(0, size // 4 + 1))
    canvas = Image.new("L", (canvas_size, canvas_size), 0 if invert else 255)
    left, top = (int(v) for v in rng.integers(0, canvas_size - size + 1, size=2))
    canvas.paste(digit_image, (left, top))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def build_training_set(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Every digit in both polarities: once plainly rendered and AUGMENTED_COPIES times augmented."""
    inputs, targets = [], []
    for digit, label in zip(images, labels):
        for invert in (False, True):
            inputs.append(to_model_input(render_png(digit, size=64, invert=invert)))
            targets.append(label)
            for _ in range(AUGMENTED_COPIES):
                inputs.append(to_model_input(augmented_png(digit, rng, invert)))
                targets.append(label)
    return np.stack(inputs), np.asarray(targets, dtype=np.int64)


def heldout_inputs(images: np.ndarray, invert: bool) -> np.ndarray:
    """The held-out digits as the server would see them: plain 64x64 PNGs of one polarity."""
    return np.stack([to_model_input(render_png(digit, size=64, invert=invert)) for digit in images])


def build_model():  # -> keras.Model (keras is imported lazily, it is slow)
    """Conv 16 -> pool -> Conv 32 -> pool -> Dense 64 -> Dropout -> softmax 10; about 140 KB of weights."""
    import keras  # noqa: PLC0415

    height, width = INPUT_SIZE
    return keras.Sequential(
        [
            keras.Input(shape=(height, width, 1), dtype="float32", name="image"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(len(LABELS), activation="softmax", name="probabilities"),
        ],
        name="digits",
    )


def main() -> None:
    import keras  # noqa: PLC0415

    started = time.perf_counter()
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    train_x, train_y, test_x, test_y = heldout_split()

    inputs, targets = build_training_set(train_x, train_y, rng)
    elapsed = time.perf_counter() - started
    print(f"training set: {inputs.shape[0]} images of {inputs.shape[1:]} (built in {elapsed:.1f} s)")

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(inputs, targets, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=True, verbose=2)

    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    model_path = MODELS_DIR / "digits.keras"
    # Save an uncompiled copy: the server only predicts, and the Adam slots would triple the file.
    serving = build_model()
    serving.set_weights(model.get_weights())
    serving.save(model_path)
    (MODELS_DIR / "digits.labels.txt").write_text("\n".join(LABELS) + "\n")

    reloaded = keras.models.load_model(model_path)
    for invert, name in ((False, "dark ink on white"), (True, "light ink on black")):
        predicted = reloaded.predict(heldout_inputs(test_x, invert), verbose=0).argmax(axis=1)
        accuracy = float((predicted == test_y).mean())
        print(f"held-out accuracy, {name}: {accuracy:.4f} ({len(test_y)} digits)")
    size_kb = model_path.stat().st_size / 1024
    print(f"saved {model_path} ({size_kb:.0f} KB) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
