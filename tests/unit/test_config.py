"""Settings.from_env: defaults, validation and the values derived from other settings."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from app.config import DEMO_MODEL, PROJECT_ROOT, ConfigError, Settings


def test_defaults():
    settings = Settings.from_env({})
    assert settings.model_path == DEMO_MODEL
    assert settings.model_name == "digits"
    assert settings.labels_path == DEMO_MODEL.parent / "digits.labels.txt"
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.preprocess == "unit"
    assert settings.resize_mode == "stretch"
    assert settings.inference_mode == "mule"
    assert (settings.workers, settings.threads) == (4, 4)
    assert settings.n_slots == 16
    assert settings.model_compile == "auto"
    assert settings.max_upload_mb == 10
    assert settings.max_image_pixels == 50_000_000
    assert settings.max_inputs_per_request == 64
    assert settings.default_top_k == 5
    assert settings.max_batch_size == 16
    assert settings.batch_timeout_ms == 0
    assert settings.batch_buckets == (1, 2, 3, 4, 6, 8, 12, 16)
    assert settings.max_queue_rows == 256
    assert settings.model_threads == 0  # TensorFlow's default
    assert settings.request_timeout_ms == 30_000
    assert settings.slot_bytes == 8 * 1024 * 1024
    assert settings.runtime_dir == PROJECT_ROOT / ".run"
    assert settings.mule_socket == PROJECT_ROOT / ".run" / "mule.sock"
    assert settings.log_level == "info"


def test_dataclass_defaults_agree_with_from_env():
    from_env = Settings.from_env({})
    plain = Settings(labels_path=from_env.labels_path)
    assert plain == from_env


def test_blank_values_mean_the_default():
    assert Settings.from_env({"WORKERS": "  ", "PREPROCESS": "", "PORT": ""}) == Settings.from_env({})


def test_values_are_read():
    settings = Settings.from_env({
        "HOST": "127.0.0.1", "PORT": "9000", "WORKERS": "2", "THREADS": "8", "PREPROCESS": " Caffe ",
        "RESIZE_MODE": "crop", "INFERENCE_MODE": "worker", "MAX_UPLOAD_MB": "3", "LOG_LEVEL": "DEBUG",
        "MODEL_COMPILE": "Off",
    })
    assert (settings.host, settings.port, settings.workers, settings.threads) == ("127.0.0.1", 9000, 2, 8)
    assert (settings.preprocess, settings.resize_mode, settings.inference_mode) == ("caffe", "crop", "worker")
    assert settings.max_upload_mb == 3
    assert settings.log_level == "debug"
    assert settings.n_slots == 16
    assert settings.model_compile == "off"


@pytest.mark.parametrize("name", ["PREPROCESS", "RESIZE_MODE", "INFERENCE_MODE", "LOG_LEVEL", "MODEL_COMPILE"])
def test_invalid_choice_names_the_variable(name):
    with pytest.raises(ConfigError, match=name) as info:
        Settings.from_env({name: "bogus"})
    assert "bogus" in str(info.value)


@pytest.mark.parametrize("value", ["four", "4.5", "0x10", "1e3"])
def test_non_integer_workers(value):
    with pytest.raises(ConfigError, match="WORKERS must be an integer"):
        Settings.from_env({"WORKERS": value})


@pytest.mark.parametrize("name", ["WORKERS", "THREADS", "PORT", "MAX_BATCH_SIZE", "REQUEST_TIMEOUT_MS"])
def test_below_minimum(name):
    with pytest.raises(ConfigError, match=f"{name} must be >= 1"):
        Settings.from_env({name: "0"})


@pytest.mark.parametrize(("raw", "value"), [("", True), ("on", True), ("1", True), ("TRUE", True),
                                           ("off", False), ("0", False), ("no", False)])
def test_batch_autotune_flag(raw, value):
    assert Settings.from_env({"BATCH_AUTOTUNE": raw}).batch_autotune is value


def test_batch_autotune_rejects_other_words():
    with pytest.raises(ConfigError, match="BATCH_AUTOTUNE must be on or off"):
        Settings.from_env({"BATCH_AUTOTUNE": "maybe"})


def test_model_threads_may_be_zero_but_not_negative():
    assert Settings.from_env({"MODEL_THREADS": "1"}).model_threads == 1
    with pytest.raises(ConfigError, match="MODEL_THREADS must be >= 0"):
        Settings.from_env({"MODEL_THREADS": "-1"})


@pytest.mark.parametrize(("raw", "count"), [("", 0), ("auto", 0), (" Auto ", 0), ("1", 1), ("3", 3)])
def test_model_concurrency_is_auto_unless_a_count_is_given(raw, count):
    assert Settings.from_env({"MODEL_CONCURRENCY": raw}).model_concurrency == count


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_model_concurrency_refuses_what_is_not_a_count(raw):
    with pytest.raises(ConfigError, match="MODEL_CONCURRENCY must be auto or an integer >= 1"):
        Settings.from_env({"MODEL_CONCURRENCY": raw})


def test_batch_timeout_may_be_zero_but_not_negative():
    assert Settings.from_env({"BATCH_TIMEOUT_MS": "0"}).batch_timeout_ms == 0
    with pytest.raises(ConfigError, match="BATCH_TIMEOUT_MS"):
        Settings.from_env({"BATCH_TIMEOUT_MS": "-5"})


@pytest.mark.parametrize(
    ("max_batch", "buckets"),
    [
        (16, (1, 2, 3, 4, 6, 8, 12, 16)),
        (1, (1,)),
        (2, (1, 2)),
        (3, (1, 2, 3)),
        (10, (1, 2, 3, 4, 6, 8, 10)),
        (12, (1, 2, 3, 4, 6, 8, 12)),
        (32, (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)),
        (100, (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 100)),
    ],
)
def test_default_buckets(max_batch, buckets):
    assert Settings.from_env({"MAX_BATCH_SIZE": str(max_batch)}).batch_buckets == buckets


@pytest.mark.parametrize("max_batch", range(1, 70))
def test_default_buckets_are_increasing_and_end_at_max_batch(max_batch):
    buckets = Settings.from_env({"MAX_BATCH_SIZE": str(max_batch)}).batch_buckets
    assert buckets[0] == 1
    assert buckets[-1] == max_batch
    assert list(buckets) == sorted(set(buckets))
    # padding up to the next bucket never more than doubles a batch
    assert all(b <= 2 * a for a, b in itertools.pairwise(buckets))


@pytest.mark.parametrize(
    ("raw", "max_batch", "buckets"),
    [
        ("1,4,8", 16, (1, 4, 8, 16)),
        ("8, 4 ,1,", 16, (1, 4, 8, 16)),
        ("4,16", 16, (4, 16)),
        ("4,8,32,64", 16, (4, 8, 16)),  # sizes past MAX_BATCH_SIZE are dropped
        ("2,2,2", 8, (2, 8)),
        ("16", 16, (16,)),
    ],
)
def test_custom_buckets(raw, max_batch, buckets):
    settings = Settings.from_env({"BATCH_BUCKETS": raw, "MAX_BATCH_SIZE": str(max_batch)})
    assert settings.batch_buckets == buckets


@pytest.mark.parametrize("raw", ["1,two,4", "0,4", "-1,4", ",,"])
def test_invalid_buckets(raw):
    with pytest.raises(ConfigError, match="BATCH_BUCKETS"):
        Settings.from_env({"BATCH_BUCKETS": raw})


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    return path


@pytest.mark.parametrize(
    ("file_name", "stem"),
    [
        ("resnet.keras", "resnet"),
        ("classifier.h5", "classifier"),
        ("resnet50-v1.5.keras", "resnet50-v1.5"),  # only the extension goes, not everything after a dot
        ("saved_model_dir", "saved_model_dir"),
    ],
)
def test_model_name_defaults_to_the_file_stem(tmp_path, file_name, stem):
    settings = Settings.from_env({"MODEL_PATH": str(tmp_path / file_name)})
    assert settings.model_path == tmp_path / file_name
    assert settings.model_name == stem


def test_model_name_can_be_set(tmp_path):
    settings = Settings.from_env({"MODEL_PATH": str(tmp_path / "resnet.keras"), "MODEL_NAME": "imagenet"})
    assert settings.model_name == "imagenet"


def test_relative_model_path_is_resolved_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"MODEL_PATH": "models/net.keras"})
    assert settings.model_path == tmp_path.resolve() / "models" / "net.keras"
    assert settings.model_path.is_absolute()


def test_labels_beside_the_model(tmp_path):
    model = touch(tmp_path / "net.keras")
    assert Settings.from_env({"MODEL_PATH": str(model)}).labels_path is None
    labels = touch(tmp_path / "net.labels.txt")
    assert Settings.from_env({"MODEL_PATH": str(model)}).labels_path == labels


def test_labels_beside_a_dotted_model_name(tmp_path):
    model = touch(tmp_path / "resnet50-v1.5.keras")
    labels = touch(tmp_path / "resnet50-v1.5.labels.txt")
    assert Settings.from_env({"MODEL_PATH": str(model)}).labels_path == labels


@pytest.mark.parametrize("directory", ["export", "resnet_v1.5"])
def test_saved_model_directory_keeps_its_whole_name(tmp_path, directory):
    model = tmp_path / directory
    model.mkdir()
    labels = touch(tmp_path / f"{directory}.labels.txt")
    settings = Settings.from_env({"MODEL_PATH": str(model)})
    assert settings.model_name == directory
    assert settings.labels_path == labels


def test_labels_path_given(tmp_path):
    model = touch(tmp_path / "net.keras")
    touch(tmp_path / "net.labels.txt")
    other = touch(tmp_path / "classes.txt")
    settings = Settings.from_env({"MODEL_PATH": str(model), "LABELS_PATH": str(other)})
    assert settings.labels_path == other


def test_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"RUNTIME_DIR": "run"})
    assert settings.runtime_dir == tmp_path.resolve() / "run"
    assert settings.mule_socket == tmp_path.resolve() / "run" / "mule.sock"


@pytest.mark.parametrize("timeout_ms", ["1", "999", "1500", "30000", "59999", "600000"])
def test_timeouts_are_nested(timeout_ms):
    settings = Settings.from_env({"REQUEST_TIMEOUT_MS": timeout_ms})
    assert settings.harakiri_s > settings.request_timeout_ms / 1000
    assert settings.proxy_timeout_s > settings.harakiri_s
    assert isinstance(settings.harakiri_s, int) and isinstance(settings.proxy_timeout_s, int)


def test_slots():
    settings = Settings.from_env({"WORKERS": "3", "THREADS": "5", "SLOT_MB": "2"})
    assert settings.n_slots == 15
    assert settings.slot_bytes == 2 * 1024 * 1024
