"""Model loading (.keras, .h5, SavedModel), its spec, bucketed batches and the load errors users hit."""

from __future__ import annotations

import numpy as np
import pytest

from app.config import Settings
from app.inference.model_runner import ModelLoadError, load_runner


@pytest.fixture(scope="module")
def small_model():
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6, 6, 3)), keras.layers.Conv2D(2, 3, name="conv"), keras.layers.Flatten(),
        keras.layers.Dense(4, activation="softmax", name="probs"),
    ])


def settings_for(path, **extra) -> Settings:
    return Settings(model_path=path, model_name="small", batch_buckets=(1, 2, 4), max_batch_size=4, **extra)


@pytest.mark.parametrize("kind", ["keras", "h5", "savedmodel"])
def test_every_model_format_loads_and_matches_keras(small_model, tmp_path, kind):
    if kind == "savedmodel":
        path = tmp_path / "small_savedmodel"
        small_model.export(path, verbose=False)
    else:
        path = tmp_path / f"small.{kind}"
        small_model.save(path)
    runner = load_runner(settings_for(path))
    spec = runner.spec
    assert spec.input.shape == (6, 6, 3) and spec.input.dtype == "float32"
    assert len(spec.outputs) == 1 and spec.outputs[0].shape == (4,)
    assert spec.is_image and spec.is_classifier
    batch = np.random.default_rng(0).random((7, 6, 6, 3), dtype=np.float32)
    (got,) = runner.run(batch)  # 7 rows: chunks of 4 and 3 (padded to 4)
    expected = small_model(batch, training=False).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_warmup_measures_the_cost_of_every_bucket(small_model, tmp_path):
    path = tmp_path / "small.keras"
    small_model.save(path)
    runner = load_runner(settings_for(path))
    assert set(runner.batch_costs_ms) == {1, 2, 4}
    assert all(ms > 0 for ms in runner.batch_costs_ms.values())
    assert runner.warmup(repeats=0) == runner.batch_costs_ms  # warming again keeps the measurement


@pytest.mark.parametrize("overrides", [{"inference_mode": "worker"}, {"batch_autotune": False}])
def test_warmup_is_not_timed_when_nothing_uses_the_costs(small_model, tmp_path, overrides):
    path = tmp_path / "small.keras"
    small_model.save(path)
    assert load_runner(settings_for(path, **overrides)).batch_costs_ms == {}


def test_padding_to_a_bucket_does_not_change_answers(small_model, tmp_path):
    path = tmp_path / "small.keras"
    small_model.save(path)
    runner = load_runner(settings_for(path))
    rows = np.random.default_rng(1).random((3, 6, 6, 3), dtype=np.float32)
    assert runner.bucket_for(3) == 4
    buffer = runner.new_buffer()
    buffer[:3] = rows
    buffer[3:] = 123.0  # junk in the padding rows
    (out,) = runner.run_padded(buffer, 3)
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out, small_model(rows, training=False).numpy(), atol=1e-5)


def test_labels_must_match_the_classes(small_model, tmp_path):
    path = tmp_path / "small.keras"
    small_model.save(path)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\n\n")
    assert load_runner(settings_for(path, labels_path=labels)).spec.labels == ("cat", "dog", "bird", "fish")
    labels.write_text("cat\ndog\n")
    with pytest.raises(ModelLoadError, match="2 labels but the model outputs 4 classes"):
        load_runner(settings_for(path, labels_path=labels))


def test_clear_errors_for_models_that_cannot_be_served(tmp_path):
    import keras  # noqa: PLC0415

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_runner(settings_for(tmp_path / "missing.keras"))
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_runner(settings_for(garbage))
    variable = keras.Sequential([keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D()])
    variable.save(tmp_path / "variable.keras")
    with pytest.raises(ModelLoadError, match="unknown dimensions"):
        load_runner(settings_for(tmp_path / "variable.keras"))
    a, b = keras.Input((2,)), keras.Input((3,))
    two = keras.Model([a, b], keras.layers.Concatenate()([a, b]))
    two.save(tmp_path / "two.keras")
    with pytest.raises(ModelLoadError, match="2 inputs"):
        load_runner(settings_for(tmp_path / "two.keras"))


def test_multi_output_models_describe_every_output(tmp_path):
    import keras  # noqa: PLC0415

    x = keras.Input((5,))
    model = keras.Model(x, [keras.layers.Dense(2, name="a")(x), keras.layers.Dense(3, name="b")(x)])
    model.save(tmp_path / "multi.keras")
    runner = load_runner(settings_for(tmp_path / "multi.keras"))
    assert [o.shape for o in runner.spec.outputs] == [(2,), (3,)]
    assert not runner.spec.is_image and not runner.spec.is_classifier
    outs = runner.run(np.ones((2, 5), dtype=np.float32))
    assert [o.shape for o in outs] == [(2, 2), (2, 3)]
