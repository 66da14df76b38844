"""Pixel normalisation (PREPROCESS) from uint8 images to the model's input dtype.

The modes match keras.applications' `preprocess_input` conventions, so an ImageNet model
trained with one of them is served with the same numbers it was trained on.
"""

from __future__ import annotations

import numpy as np

_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize(pixels: np.ndarray, mode: str, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """Map uint8 pixels (..., H, W, C) to the model's input; write into `out` when given.

    unit: [0, 1]; symmetric: [-1, 1]; caffe: BGR minus the ImageNet mean; torch: [0, 1] minus
    mean over std per channel; none: the raw 0-255 values in the model's dtype.
    """
    target = np.dtype(dtype)
    if out is None:
        out = np.empty(pixels.shape, dtype=target)
    if mode == "none" or not np.issubdtype(target, np.floating):
        out[...] = pixels
        return out
    np.multiply(pixels, np.float32(1.0), out=out, casting="unsafe")
    channels = pixels.shape[-1]
    if mode == "unit":
        out *= 1.0 / 255.0
    elif mode == "symmetric":
        out *= 1.0 / 127.5
        out -= 1.0
    elif mode == "caffe":
        if channels == 3:
            out[...] = out[..., ::-1].copy()
            out -= _CAFFE_BGR_MEAN
        else:
            out -= _CAFFE_BGR_MEAN.mean()
    elif mode == "torch":
        out *= 1.0 / 255.0
        mean, std = (_TORCH_MEAN, _TORCH_STD) if channels == 3 else (_TORCH_MEAN.mean(), _TORCH_STD.mean())
        out -= mean
        out /= std
    else:
        raise ValueError(f"unknown PREPROCESS mode {mode!r}")
    return out
