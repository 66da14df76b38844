"""Turn uploaded bytes into a uint8 HxWxC array of the size and channels the model takes.

Runs in the workers (Pillow and numpy only). Every way an upload can be wrong ends in an
ApiError with its own code, never in an exception the client sees as a 500.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.errors import ApiError

# Pillow's own bomb check is a safety net; our explicit check below gives the clear error.
Image.MAX_IMAGE_PIXELS = None

# Every format Pillow reads but EPS, whose decoder runs Ghostscript (an interpreter of untrusted
# PostScript, with a history of code-execution bugs): an EPS upload is answered 415. Pillow tries
# them in this order, and a format without a magic-number check is tried by parsing a header, so
# the formats clients send come first: in alphabetical order a PNG waited on 20 others (~90 us).
Image.init()
_COMMON_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
READABLE_FORMATS = (*(name for name in _COMMON_FORMATS if name in Image.OPEN),
                    *sorted(name for name in Image.OPEN if name not in _COMMON_FORMATS and name != "EPS"))

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(
    data: bytes,
    size: tuple[int, int],
    channels: int,
    max_pixels: int,
    resize_mode: str = "stretch",
) -> np.ndarray:
    """Decode, EXIF-rotate, convert and resize one image to a (height, width, channels) uint8 array.

    `size` is (height, width). `resize_mode`: stretch to size, crop the center to the aspect
    ratio first, or pad (letterbox) with black.
    """
    if not data:
        raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=READABLE_FORMATS)
    except UnidentifiedImageError:
        raise ApiError(
            415, "unsupported_image", "the upload is not an image format this server can read"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # a known format, but its header is cut or corrupt
        raise ApiError(400, "invalid_image", f"the image could not be decoded: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
            " (MAX_IMAGE_PIXELS)",
        )
    target_h, target_w = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # JPEG can decode at 1/2, 1/4, 1/8 scale for free when the target is much smaller.
            # The draft size is in stored (pre-rotation) pixels: swap it when EXIF turns the image by 90 degrees.
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            turned = orientation in (5, 6, 7, 8)
            image.draft("RGB" if channels >= 3 else "L", (target_h, target_w) if turned else (target_w, target_h))
            if orientation in range(2, 9):  # exif_transpose copies even an upright image
                image = ImageOps.exif_transpose(image)
            image = _to_mode(image, "L" if channels == 1 else ("RGBA" if channels == 4 else "RGB"))
            image = _resize(image, (target_w, target_h), resize_mode)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt files fail here, when the pixels are actually read.
        raise ApiError(400, "invalid_image", f"the image could not be decoded: {exc}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert palette, alpha, CMYK, 16-bit and grayscale images to `mode` the way a person expects."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert("L") clips 16-bit values at 255; scale to 8 bits instead.
        wide = np.asarray(image, dtype=np.int64)
        # I;16 modes are 16-bit by definition (a dark one must stay dark); only 32-bit "I" has to be guessed.
        peak = 65535 if image.mode != "I" or wide.max(initial=0) > 255 else 255
        image = Image.fromarray((wide * 255 // peak).clip(0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") and mode != "RGBA":
        # Transparent areas become white, as they look in a browser.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != mode:
        image = image.convert(mode)
    return image


def _resize(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    if image.size == size:
        return image
    if mode == "crop":
        return ImageOps.fit(image, size, Image.Resampling.BILINEAR)
    if mode == "pad":
        return ImageOps.pad(image, size, Image.Resampling.BILINEAR, color=0)
    return image.resize(size, Image.Resampling.BILINEAR)
