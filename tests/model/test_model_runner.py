"""Model loading (.keras, .h5, SavedModel), its spec, bucketed batches and the load errors users hit."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.inference.model_runner import ModelLoadError, ModelRunner, load_runner
from tests.models import text_classifier, token_tagger, two_in_two_out


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
    (got,) = runner.run([batch])  # 7 rows: chunks of 4 and 3 (padded to 4)
    expected = small_model(batch, training=False).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_warmup_measures_the_cost_of_every_bucket(small_model, tmp_path):
    path = tmp_path / "small.keras"
    small_model.save(path)
    runner = load_runner(settings_for(path))
    assert set(runner.batch_costs_ms) == {1, 2, 4}
    assert all(ms > 0 for ms in runner.batch_costs_ms.values())
    assert runner.warmup(repeats=0) == runner.batch_costs_ms  # warming again keeps the measurement


def test_a_respawned_mule_reuses_the_costs_of_unchanged_files_and_times_changed_ones(
    small_model, tmp_path, monkeypatch
):
    path, costs = tmp_path / "small.keras", tmp_path / "costs"
    small_model.save(path)
    first = load_runner(settings_for(path), costs)
    timed: list[int] = []
    warmup = ModelRunner.warmup
    monkeypatch.setattr(ModelRunner, "warmup", lambda self, repeats: timed.append(repeats) or warmup(self, repeats))
    again = load_runner(settings_for(path), costs)
    assert timed == [0] and again.batch_costs_ms == first.batch_costs_ms
    assert again.compiled_buckets == first.compiled_buckets  # where XLA won, recalled too
    assert load_runner(settings_for(path)).batch_costs_ms and timed == [0, 3]  # no costs_dir (the ceiling): timed
    small_model.save(path)  # a new file at the same path: its costs are measured, not recalled
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))  # saved a second later
    load_runner(settings_for(path), costs)
    assert timed == [0, 3, 3]
    assert load_runner(replace(settings_for(path), batch_buckets=(1, 2)), costs).batch_costs_ms.keys() == {1, 2}
    assert timed == [0, 3, 3, 3]  # other batch sizes: timed again
    (costs / next(costs.iterdir()).name).write_text("{not json")  # a torn or foreign file: timed again
    load_runner(settings_for(path), costs)
    assert timed == [0, 3, 3, 3, 3]


@pytest.mark.parametrize("overrides", [{"inference_mode": "worker"}, {"batch_autotune": False, "model_compile": "off"}])
def test_warmup_is_not_timed_when_nothing_uses_the_costs(small_model, tmp_path, overrides):
    path = tmp_path / "small.keras"
    small_model.save(path)
    assert load_runner(settings_for(path, **overrides)).batch_costs_ms == {}
    # the choice of where XLA runs uses them too
    assert load_runner(settings_for(path, batch_autotune=False)).batch_costs_ms.keys() == {1, 2, 4}


@pytest.mark.parametrize("kind", ["keras", "savedmodel"])
def test_compiled_with_xla_the_model_answers_as_keras_does_at_every_size(small_model, tmp_path, kind):
    """Which sizes win the warm-up race depends on the machine (tests/unit/test_xla_choice.py
    decides it on a fake clock); here every size is compiled, to check what XLA answers."""
    path = tmp_path / ("small_savedmodel" if kind == "savedmodel" else "small.keras")
    if kind == "savedmodel":
        small_model.export(path, verbose=False)
    else:
        small_model.save(path)
    runner = load_runner(settings_for(path))
    assert set(runner.compiled_buckets) <= set(runner.buckets)
    runner.use_compiled(runner.buckets)
    assert runner.compiled_buckets == (1, 2, 4)
    batch = np.random.default_rng(3).random((7, 6, 6, 3), dtype=np.float32)
    (got,) = runner.run([batch])  # chunks of 4 and 3 (padded to 4)
    np.testing.assert_allclose(got, small_model(batch, training=False).numpy(), atol=1e-5)
    (one,) = runner.run([batch[:1]])
    np.testing.assert_allclose(one, small_model(batch[:1], training=False).numpy(), atol=1e-5)


def test_xla_is_not_tried_where_it_cannot_serve_or_was_not_asked_for(small_model, tmp_path):
    path, text, tagger, counts = (tmp_path / name for name in ("small.keras", "text.keras", "tagger.keras",
                                                                "two.keras"))
    small_model.save(path)
    text_classifier(text)
    token_tagger(tagger)
    two_in_two_out(counts)
    runners = [
        load_runner(settings_for(path, model_compile="off")),
        load_runner(settings_for(path, inference_mode="worker")),  # one runtime per worker: no time to race
        load_runner(settings_for(text)),  # XLA has no string type
        load_runner(settings_for(tagger)),  # variable dimensions: XLA would compile every length anew
        load_runner(settings_for(counts)),  # an int32 input: XLA clamps an index the graph refuses
    ]
    for runner in runners:
        runner.use_compiled(runner.buckets)
        assert runner.compiled_buckets == ()


def test_padding_to_a_bucket_does_not_change_answers(small_model, tmp_path):
    path = tmp_path / "small.keras"
    small_model.save(path)
    runner = load_runner(settings_for(path))
    rows = np.random.default_rng(1).random((3, 6, 6, 3), dtype=np.float32)
    assert runner.bucket_for(3) == 4
    (buffer,) = runner.new_buffer()
    buffer[:3] = rows
    buffer[3:] = 123.0  # junk in the padding rows
    (out,) = runner.run_padded([buffer], 3)
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

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_runner(settings_for(tmp_path / "missing.keras"))
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_runner(settings_for(garbage))


def test_multi_output_models_describe_every_output(tmp_path):
    import keras  # noqa: PLC0415

    x = keras.Input((5,))
    model = keras.Model(x, [keras.layers.Dense(2, name="a")(x), keras.layers.Dense(3, name="b")(x)])
    model.save(tmp_path / "multi.keras")
    runner = load_runner(settings_for(tmp_path / "multi.keras"))
    assert [o.shape for o in runner.spec.outputs] == [(2,), (3,)]
    assert not runner.spec.is_image and not runner.spec.is_classifier
    outs = runner.run([np.ones((2, 5), dtype=np.float32)])
    assert [o.shape for o in outs] == [(2, 2), (2, 3)]


def test_named_inputs_and_outputs_of_a_functional_model(tmp_path):
    path = tmp_path / "two.keras"
    model = two_in_two_out(path)
    runner = load_runner(settings_for(path))
    spec = runner.spec
    assert [(t.name, t.shape, t.dtype) for t in spec.inputs] == [("features", (3,), "float32"),
                                                                   ("counts", (2,), "int32")]
    assert [(t.name, t.shape) for t in spec.outputs] == [("score", (1,)), ("embedding", (4,))]
    rng = np.random.default_rng(2)
    features = rng.random((5, 3), dtype=np.float32)
    counts = rng.integers(0, 9, (5, 2)).astype(np.int32)
    got = runner.run([features, counts])  # 5 rows: chunks of 4 and 1
    expected = model({"features": features, "counts": counts}, training=False)
    for out, want in zip(got, expected):
        np.testing.assert_allclose(out, np.asarray(want), atol=1e-5)

    exported = tmp_path / "two_savedmodel"
    model.export(exported, verbose=False)
    saved = load_runner(settings_for(exported))
    by_name = {t.name: i for i, t in enumerate(saved.spec.inputs)}
    assert set(by_name) == {"features", "counts"}
    arrays = [None, None]
    arrays[by_name["features"]], arrays[by_name["counts"]] = features, counts
    outputs = dict(zip((t.name for t in saved.spec.outputs), saved.run(arrays)))
    assert len(outputs) == 2
    matched = sorted(outputs.values(), key=lambda a: a.shape[1])
    for out, want in zip(matched, expected):
        np.testing.assert_allclose(out, np.asarray(want), atol=1e-5)


def test_a_text_classifier_takes_strings(tmp_path):
    path = tmp_path / "text.keras"
    model = text_classifier(path)
    runner = load_runner(settings_for(path))
    (text,) = runner.spec.inputs
    assert text.is_bytes and text.shape == (1,)
    rows = np.array([[b"a great film"], [b"awful, boring"], [b""]], dtype=object)
    (got,) = runner.run([rows])
    import tensorflow as tf  # noqa: PLC0415

    np.testing.assert_allclose(got, model(tf.constant(rows), training=False).numpy(), atol=1e-5)


def test_variable_dimensions_load_and_run_at_any_size(tmp_path):
    path = tmp_path / "tagger.keras"
    model = token_tagger(path)
    runner = load_runner(settings_for(path))
    (tokens,) = runner.spec.inputs
    (tags,) = runner.spec.outputs
    assert tokens.shape == (-1,) and tokens.dtype == "int32" and tags.shape == (-1, 3)
    assert runner.spec.is_variable and not runner.spec.is_image
    assert runner.batch_costs_ms == {}  # no single batch limit to choose when sizes vary
    for length in (1, 4, 9):
        rows = np.random.default_rng(length).integers(0, 20, (3, length)).astype(np.int32)
        (got,) = runner.run([rows])
        assert got.shape == (3, length, 3)
        np.testing.assert_allclose(got, model(rows, training=False).numpy(), atol=1e-5)


@pytest.mark.parametrize(("setting", "disabled"), [("", True), ("on", False)])
def test_thread_spinning_setting_reaches_tensorflow(setting, disabled):
    """MODEL_THREAD_SPINNING goes through a private attribute of TensorFlow's eager context: this
    fails if a TensorFlow upgrade stops honouring it. A fresh process, as the context is set once."""
    script = (
        "from app.config import Settings\n"
        "from app.inference.model_runner import load_runner\n"
        "runner = load_runner(Settings.from_env())\n"
        "runner.run([runner.spec.input.empty(1, runner.spec.input.shape)])\n"
        "from tensorflow.python.eager import context\n"
        "print('disabled', context.context().config.experimental.disable_thread_spinning)\n"
    )
    env = {**os.environ, "MODEL_THREAD_SPINNING": setting, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["disabled", str(disabled)]


@pytest.mark.parametrize("threads", [1, 3])
def test_model_threads_size_tensorflows_pools(threads):
    """MODEL_THREADS sets the pools through the same private context config: counted by thread
    name (TensorFlow's inter-op pool threads are "tf_Compute"), in a fresh process."""
    script = (
        "import os\n"
        "from app.config import Settings\n"
        "from app.inference.model_runner import load_runner\n"
        "runner = load_runner(Settings.from_env())\n"
        "runner.run([runner.spec.input.empty(1, runner.spec.input.shape)])\n"
        "names = [open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')]\n"
        "print('pool', names.count('tf_Compute'))\n"
    )
    env = {**os.environ, "MODEL_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["pool", str(threads)]
