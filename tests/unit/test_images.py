"""app.images.decode_image: every kind of upload becomes the uint8 HxWxC array the model takes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from app.errors import ApiError
from app.images import READABLE_FORMATS, decode_image

BIG = 10**9  # a max_pixels no test image reaches
RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def halves(width: int, height: int, left=RED, right=BLUE) -> np.ndarray:
    """An RGB image whose left half is `left` and right half `right`."""
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = left
    array[:, width // 2 :] = right
    return array


def close(pixel: np.ndarray, expected, tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.asarray(expected)) <= tol))


def jpeg_with_orientation(array: np.ndarray, orientation: int, quality: int = 95) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    return encode(Image.fromarray(array), "JPEG", quality=quality, exif=exif.tobytes())


# --- orientation ---------------------------------------------------------------------------


def test_exif_orientation_is_applied():
    # Stored 64 wide x 32 high, red left / blue right. Orientation 6 = "turn 90 degrees clockwise
    # to display": shown 32 wide x 64 high, the stored left edge at the top.
    data = jpeg_with_orientation(halves(64, 32), 6)
    assert Image.open(io.BytesIO(data)).size == (64, 32)
    out = decode_image(data, (64, 32), 3, BIG)
    assert out.shape == (64, 32, 3)
    assert close(out[:24].mean(axis=(0, 1)), RED)
    assert close(out[40:].mean(axis=(0, 1)), BLUE)
    # and left/right are the same colour at every height (no longer split by columns)
    assert close(out[5, 2], RED) and close(out[5, 29], RED)


def test_exif_orientation_8_turns_the_other_way():
    data = jpeg_with_orientation(halves(64, 32), 8)  # 90 degrees counter-clockwise: left edge at the bottom
    out = decode_image(data, (64, 32), 3, BIG)
    assert close(out[:24].mean(axis=(0, 1)), BLUE)
    assert close(out[40:].mean(axis=(0, 1)), RED)


def test_exif_rotated_jpeg_keeps_full_detail_when_downscaled():
    # Stored 1600x400 with horizontal stripes 2 px high; displayed (orientation 6) as 400x1600 with
    # vertical stripes along a width of 400. A target 400 wide must keep them: a JPEG draft sized in
    # the wrong (unrotated) axes would decode the stored height at 1/4 and blur them to flat grey.
    rows = np.where((np.arange(400) // 2) % 2 == 0, 255, 0).astype(np.uint8)
    stored = np.repeat(np.broadcast_to(rows[:, None], (400, 1600))[:, :, None], 3, axis=2)
    data = jpeg_with_orientation(np.ascontiguousarray(stored), 6)
    out = decode_image(data, (50, 400), 3, BIG)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB").resize((400, 50))
    assert out.shape == (50, 400, 3)
    assert np.abs(out.astype(int) - np.asarray(reference, dtype=int)).mean() < 10
    assert out[:, :, 0].std() > 100  # stripes, not grey


# --- colour modes --------------------------------------------------------------------------


def test_palette_png_without_transparency():
    rgb = Image.fromarray(halves(16, 8, RED, GREEN))
    palette = rgb.quantize(colors=4)
    assert palette.mode == "P" and "transparency" not in palette.info
    out = decode_image(encode(palette), (8, 16), 3, BIG)
    assert out.shape == (8, 16, 3)
    assert tuple(out[4, 2]) == RED
    assert tuple(out[4, 13]) == GREEN


def test_palette_png_with_transparency_is_white_where_transparent():
    palette = Image.new("P", (16, 8), 0)
    palette.putpalette([0, 0, 0, *BLUE] + [0] * (254 * 3))
    palette.paste(1, (8, 0, 16, 8))  # right half: index 1 (blue); left half: index 0, declared transparent
    data = encode(palette, transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    out = decode_image(data, (8, 16), 3, BIG)
    assert tuple(out[4, 2]) == WHITE  # black under full transparency shows as white
    assert tuple(out[4, 13]) == BLUE


def test_rgba_is_composited_on_white():
    array = np.zeros((4, 3, 4), dtype=np.uint8)
    array[:, 0] = (255, 0, 0, 0)  # fully transparent red
    array[:, 1] = (0, 0, 255, 255)  # opaque blue
    array[:, 2] = (0, 0, 0, 128)  # half-transparent black
    out = decode_image(encode(Image.fromarray(array, "RGBA")), (4, 3), 3, BIG)
    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[0, 1]) == BLUE
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])


def test_rgba_kept_for_a_four_channel_model():
    array = np.zeros((2, 2, 4), dtype=np.uint8)
    array[..., 3] = 7
    out = decode_image(encode(Image.fromarray(array, "RGBA")), (2, 2), 4, BIG)
    assert out.shape == (2, 2, 4)
    assert (out[..., 3] == 7).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_la_is_composited_on_white(channels):
    array = np.zeros((2, 2, 2), dtype=np.uint8)
    array[0] = (0, 0)  # transparent black
    array[1] = (0, 255)  # opaque black
    out = decode_image(encode(Image.fromarray(array, "LA")), (2, 2), channels, BIG)
    assert out.shape == (2, 2, channels)
    assert (out[0] == 255).all()
    assert (out[1] == 0).all()


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan ink
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, (16, 16), 3, BIG)
    assert out.shape == (16, 16, 3)
    assert close(out[8, 8], (0, 255, 255))


def sixteen_bit_png(values: np.ndarray) -> bytes:
    data = encode(Image.fromarray(values.astype(np.uint16)))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    return data


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    data = sixteen_bit_png(np.array([[0, 256, 32768, 65535]]))
    out = decode_image(data, (1, 4), 1, BIG)
    assert out.shape == (1, 4, 1)
    low, mid_low, mid, top = (int(v) for v in out[0, :, 0])
    assert low == 0
    assert mid_low <= 1  # 256/65535 of full scale, not clipped up to 255
    assert abs(mid - 128) <= 1
    assert top == 255


def test_dark_sixteen_bit_image_stays_dark():
    # Every value <= 255 of 65535: a nearly black 16-bit picture, not an 8-bit one.
    data = sixteen_bit_png(np.array([[0, 100, 255]]))
    out = decode_image(data, (1, 3), 1, BIG)
    assert (out <= 1).all()


def test_sixteen_bit_to_three_channels():
    out = decode_image(sixteen_bit_png(np.full((2, 2), 65535)), (2, 2), 3, BIG)
    assert out.shape == (2, 2, 3) and (out == 255).all()


def test_grayscale_to_three_channels():
    gray = Image.fromarray(np.full((5, 6), 100, dtype=np.uint8), "L")
    out = decode_image(encode(gray), (5, 6), 3, BIG)
    assert out.shape == (5, 6, 3)
    assert (out == 100).all()


def test_rgb_to_one_channel():
    red = Image.fromarray(np.full((5, 6, 3), RED, dtype=np.uint8))
    out = decode_image(encode(red), (5, 6), 1, BIG)
    assert out.shape == (5, 6, 1)
    assert abs(int(out[0, 0, 0]) - 76) <= 1  # ITU-R 601 luma: 0.299 * 255


def test_output_is_uint8():
    out = decode_image(encode(Image.fromarray(halves(8, 8))), (4, 4), 3, BIG)
    assert out.dtype == np.uint8


# --- resize modes --------------------------------------------------------------------------


def three_bands(width: int = 120, height: int = 40) -> np.ndarray:
    """Red | green | blue vertical bands, the green band the central square."""
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:, : width // 3] = RED
    array[:, width // 3 : 2 * width // 3] = GREEN
    array[:, 2 * width // 3 :] = BLUE
    return array


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("size", [(16, 16), (20, 40), (30, 10)])
def test_resize_modes_give_the_target_size(mode, size):
    out = decode_image(encode(Image.fromarray(three_bands())), size, 3, BIG, resize_mode=mode)
    assert out.shape == (*size, 3)


def test_stretch_keeps_everything():
    out = decode_image(encode(Image.fromarray(three_bands())), (16, 15), 3, BIG, resize_mode="stretch")
    assert close(out[8, 1], RED) and close(out[8, 7], GREEN) and close(out[8, 13], BLUE)


def test_crop_keeps_the_center():
    # 120x40 cropped to a square keeps the central 40x40: the green band only.
    out = decode_image(encode(Image.fromarray(three_bands())), (16, 16), 3, BIG, resize_mode="crop")
    assert close(out[:, 1:-1].reshape(-1, 3).min(axis=0), GREEN, tol=30)
    assert close(out[:, 1:-1].reshape(-1, 3).max(axis=0), GREEN, tol=30)


def test_pad_letterboxes_with_black():
    white = Image.fromarray(np.full((40, 120, 3), 255, dtype=np.uint8))
    out = decode_image(encode(white), (30, 30), 3, BIG, resize_mode="pad")
    # 120x40 scaled into 30x30 is 30x10, centred: 10 black rows above and below
    assert (out[:9] == 0).all() and (out[-9:] == 0).all()
    assert (out[11:19] == 255).all()


# --- errors --------------------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: a few tens of KB on disk, 400 MP decoded."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    data = bomb_png()
    assert len(data) < 200_000
    assert Image.open(io.BytesIO(data)).size == (20000, 20000)

    def no_decoding(self):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ApiError) as info:
        decode_image(data, (224, 224), 3, 50_000_000)
    assert info.value.status == 413
    assert info.value.code == "image_too_large"
    assert "20000x20000" in info.value.message


def test_pixel_limit_is_inclusive():
    data = encode(Image.new("RGB", (10, 10)))
    assert decode_image(data, (4, 4), 3, 100).shape == (4, 4, 3)
    with pytest.raises(ApiError) as info:
        decode_image(data, (4, 4), 3, 99)
    assert info.value.status == 413


def test_text_file_is_unsupported():
    with pytest.raises(ApiError) as info:
        decode_image(b"hello, this is not an image\n" * 10, (8, 8), 3, BIG)
    assert (info.value.status, info.value.code) == (415, "unsupported_image")


def test_eps_is_refused_without_running_ghostscript():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"
    with pytest.raises(ApiError) as info:
        decode_image(eps, (8, 8), 3, BIG)
    assert (info.value.status, info.value.code) == (415, "unsupported_image")


def test_every_other_format_is_read_common_ones_first():
    Image.init()
    assert set(READABLE_FORMATS) == set(Image.OPEN) - {"EPS"}
    assert READABLE_FORMATS[:2] == ("JPEG", "PNG")  # tried first: no other parser runs on them


def test_truncated_jpeg_is_invalid():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=95)
    with pytest.raises(ApiError) as info:
        decode_image(data[: len(data) // 2], (8, 8), 3, BIG)
    assert (info.value.status, info.value.code) == (400, "invalid_image")


def test_empty_bytes():
    with pytest.raises(ApiError) as info:
        decode_image(b"", (8, 8), 3, BIG)
    assert info.value.status == 400
    assert info.value.code == "empty_image"
