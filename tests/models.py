"""Small Keras models of the kinds a user brings besides an image classifier, built and saved by
the tests that serve them: a functional model with two named inputs and two heads, a text
classifier that starts with TextVectorization (strings in), and a token tagger whose input and
output lengths each request chooses. Imports TensorFlow when called.
"""

from __future__ import annotations

from pathlib import Path

REVIEWS = ["a great film", "great acting and a great story", "awful, boring", "boring and awful plot",
           "a film I loved", "I hated it"]


def two_in_two_out(path: Path):
    """inputs features (3,) float32 and counts (2,) int32; outputs score (1,) and embedding (4,)."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(1)
    features = keras.Input((3,), name="features")
    counts = keras.Input((2,), dtype="int32", name="counts")
    joined = keras.layers.Concatenate()([features, keras.layers.Rescaling(0.1)(counts)])
    hidden = keras.layers.Dense(8, activation="relu")(joined)
    model = keras.Model(
        inputs=[features, counts],
        outputs=[keras.layers.Dense(1, activation="sigmoid", name="score")(hidden),
                 keras.layers.Dense(4, name="embedding")(hidden)],
    )
    model.save(path)
    return model


def text_classifier(path: Path):
    """One string per row (shape (1,)) -> 2 class probabilities, through TextVectorization."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(2)
    vectorize = keras.layers.TextVectorization(max_tokens=50, output_sequence_length=8)
    vectorize.adapt(REVIEWS)
    model = keras.Sequential([
        keras.Input((1,), dtype="string", name="text"), vectorize, keras.layers.Embedding(50, 4),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2, activation="softmax", name="sentiment"),
    ])
    model.save(path)
    return model


def token_tagger(path: Path):
    """Token ids of any length (int32, shape (None,)) -> 3 tag scores per token, shape (None, 3)."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((None,), dtype="int32", name="tokens"), keras.layers.Embedding(20, 4),
        keras.layers.Dense(3, name="tags"),
    ])
    model.save(path)
    return model


def adder(path: Path, version: int, saved_model: bool = False):
    """x (4,) -> y = sum(x) + version: an answer shows which version computed it. As a .keras file,
    or with `saved_model` as a SavedModel directory (several files, which a slow copy brings in
    one by one)."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    layer = keras.layers.Dense(1, name="y")
    model = keras.Sequential([keras.Input((4,), name="x"), layer])
    layer.set_weights([np.ones((4, 1), dtype="float32"), np.array([version], dtype="float32")])
    if saved_model:
        model.export(path, verbose=False)
    else:
        model.save(path)
    return model
