"""Image decoding: lazy, EXIF-rotated, any PIL mode to 8-bit RGB, decompression bombs refused.

Each failure raises `ImageRejected` with the reject reason a user will see in the rejects table.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .reasons import DECODE_ERROR, EMPTY_FILE, MISSING_FILE, TOO_LARGE


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_image_bytes(path: str, byte_range: tuple[int, int] | None = None) -> bytes:
    """The file's bytes, or `byte_range` = (offset, size) of them (an image member inside a tar)."""
    try:
        with open(path, "rb") as handle:
            if byte_range is None:
                data = handle.read()
            else:
                handle.seek(byte_range[0])
                data = handle.read(byte_range[1])
    except FileNotFoundError as error:
        raise ImageRejected(MISSING_FILE, f"no such file: {path}") from error
    except OSError as error:
        raise ImageRejected(DECODE_ERROR, f"{type(error).__name__}: {error}") from error
    if not data:
        raise ImageRejected(EMPTY_FILE, f"zero-byte file: {path}")
    return data


def decode_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB array, upright per its EXIF orientation."""
    if not data:
        raise ImageRejected(EMPTY_FILE, "zero bytes")
    try:
        with warnings.catch_warnings():
            # The size check below replaces PIL's own bomb warning/error with a reject reason.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(TOO_LARGE, f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb_array(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as error:  # PIL refuses at open, beyond twice its own limit
        raise ImageRejected(TOO_LARGE, str(error)) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageRejected(DECODE_ERROR, f"{type(error).__name__}: {error}") from error


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to 8-bit RGB: high bit depths are scaled, transparency goes onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _scale_to_uint8(np.asarray(image), image.mode)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Single-channel high-depth pixels to 8-bit grey, by the mode's nominal range, not the image's:
    16-bit (I;16*, and I holding 0..65535 as PIL loads 16-bit PNG/TIFF) by 257, float in [0, 1] by
    255; anything else (negative or out-of-range values) by its own min-max range."""
    values = values.astype(np.float64)
    low, high = values.min(initial=0.0), values.max(initial=0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        grey = values / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        grey = values * 255.0
    else:
        grey = (values - low) * (255.0 / max(high - low, 1e-12))
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def load_sample_image(image_path: str | None, image_bytes: bytes | None, max_pixels: int,
                      image_range: tuple[int, int] | None = None) -> np.ndarray:
    if image_bytes is None:
        if image_path is None:
            raise ImageRejected(MISSING_FILE, "the sample has neither an image path nor image bytes")
        image_bytes = read_image_bytes(os.fspath(image_path), image_range)
    return decode_rgb(image_bytes, max_pixels)
