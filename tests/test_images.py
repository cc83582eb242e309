"""Image decoding: every PIL mode to (H, W, 3) uint8 RGB, EXIF orientation, and the reject reasons."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from conftest import write_image
from PIL import Image

from dataengine.images import (
    DECODE_ERROR,
    EMPTY_FILE,
    MISSING_FILE,
    TOO_LARGE,
    ImageRejected,
    decode_rgb,
    load_sample_image,
    read_image_bytes,
    to_rgb_array,
)

MAX = 10**7
WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def assert_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert isinstance(array, np.ndarray)
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.flags.writeable
    array[0, 0, 0] = array[0, 0, 0]  # writing must not raise


def reject_reason(call, *args) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        call(*args)
    return info.value


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height greyscale pixels, with no pixel data: a tiny file
    that claims to be a huge image (what a decompression bomb looks like before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- modes


def test_rgb_png_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    out = decode_rgb(encode(Image.fromarray(pixels, "RGB"), "PNG"), MAX)
    assert_rgb(out, 5, 7)
    np.testing.assert_array_equal(out, pixels)


def test_greyscale_l_is_repeated_on_three_channels():
    grey = np.array([[0, 77], [200, 255]], dtype=np.uint8)
    out = decode_rgb(encode(Image.fromarray(grey, "L"), "PNG"), MAX)
    assert_rgb(out, 2, 2)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


def test_bilevel_mode_1_is_black_and_white():
    image = Image.new("1", (4, 3), 0)
    image.putpixel((1, 2), 1)
    for fmt in ("PNG", "BMP"):
        data = encode(image, fmt)
        assert Image.open(io.BytesIO(data)).mode == "1"
        out = decode_rgb(data, MAX)
        assert_rgb(out, 3, 4)
        expected = np.zeros((3, 4), np.uint8)
        expected[2, 1] = 255
        for channel in range(3):
            np.testing.assert_array_equal(out[..., channel], expected)


def _palette_image() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putpixel((1, 1), 1)
    image.putpixel((2, 3), 2)
    return image


def test_palette_without_transparency_uses_palette_colours():
    data = encode(_palette_image(), "PNG")
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" not in reopened.info
    out = decode_rgb(data, MAX)
    assert_rgb(out, 4, 4)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[1, 1]) == (0, 255, 0)
    assert tuple(out[3, 2]) == (0, 0, 255)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_goes_onto_white(fmt):
    data = encode(_palette_image(), fmt, transparency=0)  # index 0 (red) is transparent
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and reopened.info.get("transparency") == 0
    out = decode_rgb(data, MAX)
    assert_rgb(out, 4, 4)
    assert tuple(out[0, 0]) == WHITE  # transparent red -> white, not red
    assert tuple(out[1, 1]) == (0, 255, 0)
    assert tuple(out[3, 2]) == (0, 0, 255)


def test_rgba_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent, dark colour underneath
    rgba[0, 1] = (10, 20, 30, 255)  # opaque
    rgba[0, 2] = (0, 0, 0, 128)  # half transparent black -> mid grey
    rgba[1, :] = (200, 0, 0, 255)
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    out = decode_rgb(data, MAX)
    assert_rgb(out, 2, 3)
    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[0, 1]) == (10, 20, 30)
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)
    assert np.all(out[1] == (200, 0, 0))


def test_la_transparent_pixels_are_composited_on_white():
    image = Image.new("LA", (2, 2), (40, 0))
    image.putpixel((1, 1), (40, 255))
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    out = decode_rgb(data, MAX)
    assert_rgb(out, 2, 2)
    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[1, 1]) == (40, 40, 40)


def test_pa_mode_is_composited_on_white():
    image = _palette_image().convert("PA")
    alpha = np.full((4, 4), 255, np.uint8)
    alpha[0, 0] = 0
    image.putalpha(Image.fromarray(alpha, "L"))
    assert image.mode == "PA"
    out = to_rgb_array(image)
    assert_rgb(out, 4, 4)
    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[0, 1]) == (255, 0, 0)
    assert tuple(out[1, 1]) == (0, 255, 0)


def test_cmyk_jpeg_is_converted_to_rgb():
    rgb = Image.new("RGB", (16, 8), (255, 0, 0))
    rgb.paste((0, 0, 255), (8, 0, 16, 8))
    data = encode(rgb.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_rgb(data, MAX)
    assert_rgb(out, 8, 16)
    np.testing.assert_allclose(out[4, 2], (255, 0, 0), atol=12)
    np.testing.assert_allclose(out[4, 13], (0, 0, 255), atol=12)


def test_cmyk_tiff_is_converted_to_rgb():
    data = encode(Image.new("RGB", (3, 2), (0, 255, 0)).convert("CMYK"), "TIFF")
    out = decode_rgb(data, MAX)
    assert_rgb(out, 2, 3)
    assert np.all(out == (0, 255, 0))


def test_16bit_png_is_scaled_to_8bit():
    k = np.arange(256, dtype=np.uint16).reshape(16, 16)
    data = encode(Image.fromarray(k * 257), "PNG")  # 257 * k is exactly k in 8 bits
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_rgb(data, MAX)
    assert_rgb(out, 16, 16)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], k.astype(np.uint8))
    assert out[15, 15, 0] == 255  # 65535 -> 255


def test_16bit_white_is_255_and_black_is_0():
    values = np.array([[0, 65535], [65535, 0]], dtype=np.uint16)
    out = decode_rgb(encode(Image.fromarray(values), "PNG"), MAX)
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [255, 0]])


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_16bit_byte_orders_scale_the_same(mode):
    values = np.array([[0, 65535], [257 * 3, 257 * 100]])
    dtype = ">u2" if mode == "I;16B" else "<u2"
    image = Image.frombytes(mode, (2, 2), values.astype(dtype).tobytes())
    out = to_rgb_array(image)
    assert_rgb(out, 2, 2)
    np.testing.assert_array_equal(out[..., 1], [[0, 255], [3, 100]])


def test_16bit_scaling_does_not_depend_on_the_other_pixels():
    dark = np.array([[0, 255], [255, 0]], dtype=np.uint16)  # 16-bit 255 is almost black
    out = decode_rgb(encode(Image.fromarray(dark), "PNG"), MAX)
    assert out.max() <= 1


def test_32bit_int_mode_i_tiff():
    values = np.array([[0, 100_000], [50_000, 200_000]], dtype=np.int32)  # beyond 16 bits: by range
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = decode_rgb(data, MAX)
    assert_rgb(out, 2, 2)
    np.testing.assert_array_equal(out[..., 2], [[0, 128], [64, 255]])


def test_mode_i_holding_16_bit_values_is_scaled_as_16_bit_whatever_its_maximum():
    """PIL loads 16-bit PNG/TIFF as mode I: values 0..65535 are 16-bit, even in a dark image."""
    dark = Image.fromarray(np.array([[0, 257], [257 * 3, 255]], dtype=np.int32))
    assert dark.mode == "I"
    np.testing.assert_array_equal(to_rgb_array(dark)[..., 0], [[0, 1], [3, 1]])
    wide = Image.fromarray(np.array([[0, 257 * 9], [257 * 200, 65535]], dtype=np.int32))
    np.testing.assert_array_equal(to_rgb_array(wide)[..., 0], [[0, 9], [200, 255]])


def test_float_mode_f_tiff_is_scaled_by_its_range():
    values = np.array([[-1.0, 0.0], [1.0, 3.0]], dtype=np.float32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = decode_rgb(data, MAX)
    assert_rgb(out, 2, 2)
    np.testing.assert_array_equal(out[..., 0], [[0, 64], [128, 255]])


def test_float_mode_f_constant_image_does_not_divide_by_zero():
    out = to_rgb_array(Image.fromarray(np.full((3, 2), -5.0, np.float32)))
    assert_rgb(out, 3, 2)
    assert np.all(out == 0)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "RGB", "YCbCr", "HSV"])
def test_to_rgb_array_every_mode_gives_writeable_rgb(mode):
    image = Image.new(mode, (5, 3))
    out = to_rgb_array(image)
    assert_rgb(out, 3, 5)


# ---------------------------------------------------------------- EXIF orientation


def _oriented_jpeg(orientation: int) -> bytes:
    image = Image.new("RGB", (40, 20), (0, 0, 255))  # W=40, H=20
    image.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_is_applied():
    data = _oriented_jpeg(6)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    out = decode_rgb(data, MAX)
    assert_rgb(out, 40, 20)  # rotated: height and width swap
    # orientation 6 = rotate 90 degrees clockwise for display: stored top-left ends up top-right
    assert out[2, 17, 0] > 200 and out[2, 17, 2] < 60
    assert out[2, 2, 2] > 200 and out[2, 2, 0] < 60


def test_exif_orientation_1_is_left_as_stored():
    out = decode_rgb(_oriented_jpeg(1), MAX)
    assert_rgb(out, 20, 40)
    assert out[2, 2, 0] > 200 and out[2, 2, 2] < 60


# ---------------------------------------------------------------- rejects


def test_image_over_max_pixels_is_too_large():
    data = encode(Image.new("RGB", (64, 48)), "PNG")
    error = reject_reason(decode_rgb, data, 64 * 48 - 1)
    assert error.reason == TOO_LARGE
    assert "3072" in error.detail
    assert_rgb(decode_rgb(data, 64 * 48), 48, 64)  # exactly max_pixels is accepted


def test_too_large_is_decided_from_the_header_before_decoding():
    # 10000 x 10000 claimed, no pixel data: rejected for its size, not as a broken file
    error = reject_reason(decode_rgb, png_header_only(10_000, 10_000), 89_478_485)
    assert error.reason == TOO_LARGE


def test_decompression_bomb_beyond_pil_limit_is_too_large():
    error = reject_reason(decode_rgb, png_header_only(20_000, 20_000), 89_478_485)
    assert error.reason == TOO_LARGE


def test_corrupt_bytes_are_decode_error():
    assert reject_reason(decode_rgb, b"this is not an image at all", MAX).reason == DECODE_ERROR
    jpeg = encode(Image.new("RGB", (8, 8)), "JPEG")
    assert reject_reason(decode_rgb, jpeg[:4] + b"\x00" * 200, MAX).reason == DECODE_ERROR


def test_truncated_jpeg_file_is_decode_error(tmp_path):
    path = tmp_path / "noise.jpg"
    Image.effect_noise((96, 64), 60).convert("RGB").save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error = reject_reason(load_sample_image, str(path), None, MAX)
    assert error.reason == DECODE_ERROR
    assert "truncated" in error.detail


def test_truncated_png_is_decode_error():
    data = encode(Image.effect_noise((96, 64), 60).convert("RGB"), "PNG")
    assert reject_reason(decode_rgb, data[: len(data) // 2], MAX).reason == DECODE_ERROR


def test_zero_bytes_are_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert reject_reason(load_sample_image, str(path), None, MAX).reason == EMPTY_FILE
    assert reject_reason(read_image_bytes, str(path)).reason == EMPTY_FILE
    assert reject_reason(decode_rgb, b"", MAX).reason == EMPTY_FILE


def test_missing_path_is_missing_file(tmp_path):
    error = reject_reason(load_sample_image, str(tmp_path / "nope.jpg"), None, MAX)
    assert error.reason == MISSING_FILE
    assert "nope.jpg" in error.detail


def test_no_path_and_no_bytes_is_missing_file():
    assert reject_reason(load_sample_image, None, None, MAX).reason == MISSING_FILE


def test_directory_instead_of_file_is_missing_file_not_a_regular_file(tmp_path):
    error = reject_reason(load_sample_image, str(tmp_path), None, MAX)
    assert error.reason == MISSING_FILE and "not a regular file" in error.detail


def test_reject_message_carries_reason_and_detail():
    error = reject_reason(decode_rgb, b"", MAX)
    assert str(error).startswith(f"{EMPTY_FILE}: ")
    assert error.detail


# ---------------------------------------------------------------- load_sample_image


def test_load_sample_image_from_path(tmp_path):
    path = write_image(tmp_path / "a.png", size=(64, 48), color=(200, 30, 30))
    out = load_sample_image(str(path), None, MAX)
    assert_rgb(out, 48, 64)
    assert tuple(out[20, 20]) == (200, 30, 30)  # inside the square
    assert tuple(out[2, 2]) == (20, 120, 200)  # background


def test_load_sample_image_accepts_pathlike(tmp_path):
    path = write_image(tmp_path / "a.png", size=(10, 6))
    assert_rgb(load_sample_image(path, None, MAX), 6, 10)


def test_load_sample_image_prefers_bytes_over_path(tmp_path):
    path = write_image(tmp_path / "a.png", size=(10, 6))
    data = encode(Image.new("RGB", (3, 5), (1, 2, 3)), "PNG")
    out = load_sample_image(str(path), data, MAX)
    assert_rgb(out, 5, 3)
    assert np.all(out == (1, 2, 3))
    # bytes alone are enough, even when the path does not exist
    assert_rgb(load_sample_image(str(tmp_path / "missing.png"), data, MAX), 5, 3)


def test_load_sample_image_respects_max_pixels(tmp_path):
    path = write_image(tmp_path / "a.png", size=(64, 48))
    assert reject_reason(load_sample_image, str(path), None, 100).reason == TOO_LARGE


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"),
                                      ("CMYK", "JPEG"), ("RGB", "JPEG"), ("RGB", "WEBP"), ("RGB", "BMP")])
def test_load_sample_image_files_of_every_mode(tmp_path, mode, fmt):
    path = write_image(tmp_path / f"img.{fmt.lower()}", size=(30, 20), mode=mode, fmt=fmt)
    assert_rgb(load_sample_image(str(path), None, MAX), 20, 30)
