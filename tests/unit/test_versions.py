"""Choosing the model version to serve from TF Serving's directory layout (no TensorFlow)."""

from __future__ import annotations

import os
import time

import pytest

from app.inference.versions import NotSettled, changed_at, choose, complete_versions, is_versioned

SETTLE_S = 2


def version(root, number: int, name: str = "model.keras", age_s: float = 60) -> None:
    directory = root / str(number)
    directory.mkdir(parents=True)
    (directory / name).write_bytes(b"weights")
    past = time.time() - age_s
    for path in (directory / name, directory):
        os.utime(path, (past, past))


def test_a_plain_model_is_version_1(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    assert choose(model, 0, SETTLE_S).number == 1 and choose(model, 0, SETTLE_S).path == model
    saved = tmp_path / "saved"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"x")
    (saved / "1").mkdir()  # a SavedModel is a model, whatever else its directory holds
    assert not is_versioned(saved) and choose(saved, 0, SETTLE_S).path == saved
    with pytest.raises(FileNotFoundError, match="single model"):
        choose(model, 2, SETTLE_S)


def test_the_highest_complete_version_is_served(tmp_path):
    version(tmp_path, 1)
    version(tmp_path, 2, "model.h5")
    version(tmp_path, 10)
    (tmp_path / "11").mkdir()  # nothing in it yet
    (tmp_path / "not-a-version").mkdir()
    chosen = choose(tmp_path, 0, SETTLE_S)
    assert chosen.number == 10 and chosen.path == tmp_path / "10" / "model.keras"
    assert [v.number for v in complete_versions(tmp_path, SETTLE_S)] == [1, 2, 10]


def test_a_version_still_being_copied_is_not_complete(tmp_path):
    version(tmp_path, 1)
    version(tmp_path, 2, age_s=0)  # written just now: the copy may not be over
    assert choose(tmp_path, 0, SETTLE_S).number == 1
    assert choose(tmp_path, 0, 0).number == 2  # with no settling time it counts at once
    version(tmp_path, 3)
    (tmp_path / "3" / "other.keras").write_bytes(b"?")  # two models: which one is meant?
    assert [v.number for v in complete_versions(tmp_path, SETTLE_S)] == [1]


def test_a_pinned_version_is_served_or_the_error_says_which(tmp_path):
    version(tmp_path, 1)
    version(tmp_path, 2)
    assert choose(tmp_path, 1, SETTLE_S).number == 1
    with pytest.raises(FileNotFoundError, match="no version 7"):
        choose(tmp_path, 7, SETTLE_S)


def test_only_versions_still_being_copied_say_so_and_when_they_changed(tmp_path):
    version(tmp_path, 1, age_s=0)
    with pytest.raises(NotSettled, match=r"version 1 .* changed less than"):
        choose(tmp_path, 0, SETTLE_S)
    with pytest.raises(NotSettled):
        choose(tmp_path, 1, SETTLE_S)
    with pytest.raises(FileNotFoundError, match="no version 2") as missing:
        choose(tmp_path, 2, SETTLE_S)  # pinned to a version that is not there at all: no waiting
    assert not isinstance(missing.value, NotSettled)
    assert abs(changed_at(tmp_path, 1) - time.time()) < 60
    assert changed_at(tmp_path, 5) == 0.0 and changed_at(tmp_path / "1" / "model.keras", 1) == 0.0


def test_a_directory_holding_one_model_file_serves_it(tmp_path):
    (tmp_path / "resnet.keras").write_bytes(b"weights")  # as KServe's storage initializer leaves /mnt/models
    assert choose(tmp_path, 0, SETTLE_S).path == tmp_path / "resnet.keras"
    (tmp_path / "other.h5").write_bytes(b"weights")
    with pytest.raises(FileNotFoundError, match="holds no model"):  # two: which one is meant?
        choose(tmp_path, 0, SETTLE_S)
