"""app.preprocess.normalize gives the same numbers as keras.applications' preprocess_input."""

from __future__ import annotations

import numpy as np
import pytest

from app.preprocess import normalize


@pytest.fixture(scope="module")
def keras_preprocess():
    from keras.applications import imagenet_utils  # noqa: PLC0415

    def reference(pixels: np.ndarray, mode: str) -> np.ndarray:
        return np.asarray(imagenet_utils.preprocess_input(pixels.astype(np.float32), mode=mode))

    return reference


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (3, 17, 13, 3), dtype=np.uint8)


@pytest.mark.parametrize(("ours", "theirs"), [("symmetric", "tf"), ("caffe", "caffe"), ("torch", "torch")])
def test_matches_keras_preprocess_input(images, keras_preprocess, ours, theirs):
    expected = keras_preprocess(images, theirs)
    got = normalize(images, ours, "float32")
    assert got.dtype == np.float32
    assert got.shape == images.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_matches_keras_for_a_single_image(images, keras_preprocess):
    image = images[0]
    for ours, theirs in (("symmetric", "tf"), ("caffe", "caffe"), ("torch", "torch")):
        np.testing.assert_allclose(normalize(image, ours, "float32"), keras_preprocess(image, theirs), atol=1e-4)


def test_unit(images):
    np.testing.assert_allclose(normalize(images, "unit", "float32"), images / 255.0, atol=1e-6)


def test_none_keeps_raw_values_in_the_model_dtype(images):
    got = normalize(images, "none", "float32")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, images.astype(np.float32))


def test_caffe_swaps_to_bgr():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)
    np.testing.assert_allclose(normalize(pixel, "caffe", "float32")[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68],
                               atol=1e-4)


@pytest.mark.parametrize("mode", ["unit", "symmetric", "caffe", "torch", "none"])
def test_out_is_written_in_place(images, mode):
    expected = normalize(images[1], mode, "float32")
    batch = np.full((3, 17, 13, 3), -7.0, dtype=np.float32)
    row = batch[1]
    assert normalize(images[1], mode, "float32", out=row) is row
    np.testing.assert_array_equal(batch[1], expected)
    assert (batch[0] == -7.0).all() and (batch[2] == -7.0).all()  # the other rows are untouched


@pytest.mark.parametrize("mode", ["unit", "symmetric", "caffe", "torch", "none"])
def test_uint8_model_gets_pixels_unchanged(images, mode):
    got = normalize(images, mode, "uint8")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)


def test_float16_model(images):
    got = normalize(images, "unit", "float16")
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, images / 255.0, atol=1e-3)


@pytest.mark.parametrize("mode", ["caffe", "torch"])
def test_grayscale_uses_the_mean_of_the_channel_constants(mode):
    gray = np.full((2, 2, 1), 128, dtype=np.uint8)
    got = normalize(gray, mode, "float32")
    rgb = normalize(np.full((2, 2, 3), 128, dtype=np.uint8), mode, "float32")
    assert got.shape == (2, 2, 1)
    assert np.isfinite(got).all()
    assert rgb.min() - 1e-4 <= got[0, 0, 0] <= rgb.max() + 1e-4


def test_unknown_mode():
    with pytest.raises(ValueError, match="PREPROCESS"):
        normalize(np.zeros((2, 2, 3), dtype=np.uint8), "imagenet", "float32")
