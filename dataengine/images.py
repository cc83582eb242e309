"""Image decoding: lazy, EXIF-rotated, any PIL mode to 8-bit RGB, decompression bombs refused.

Each failure raises `ImageRejected` with the reject reason a user will see in the rejects table.
Files are untrusted: only regular files are read (a FIFO or a device named like an image is a
`missing_file` reject, never an endless read), at most `max_file_bytes` of them, and an image whose
header promises far more pixels than its bytes can plausibly hold (a decompression bomb) is a
`too_large` reject before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .reasons import DECODE_ERROR, EMPTY_FILE, MISSING_FILE, TOO_LARGE

DEFAULT_MAX_FILE_BYTES = 512 * 2**20  # source.max_file_bytes
DEFAULT_MAX_PIXELS_PER_BYTE = 1000.0  # source.max_pixels_per_byte
BOMB_CHECK_PIXELS = 4 * 2**20  # the pixels-per-byte limit applies to images above this many pixels
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")

# PIL's ImageOps.exif_transpose, as numpy operations on (H, W, ...) arrays: stored -> upright.
ORIENTATION_TRANSFORMS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_image_bytes(path: str, byte_range: tuple[int, int] | None = None,
                     max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The file's bytes, or `byte_range` = (offset, size) of them (an image member inside a tar).

    Only a regular file is read (symlinks to one are fine): the file is opened without blocking
    (a FIFO would wait for a writer forever) and checked before a byte is read; more than
    `max_bytes` is a `too_large` reject, so /dev/zero or a huge file never fills the memory."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as error:
        raise ImageRejected(MISSING_FILE, f"no such file: {path}") from error
    except IsADirectoryError as error:
        raise ImageRejected(MISSING_FILE, f"not a regular file (a directory): {path}") from error
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise ImageRejected(MISSING_FILE, f"cannot open {path}: {type(error).__name__}: {error}") from error
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected(MISSING_FILE, f"not a regular file ({_file_kind(info.st_mode)}): {path}")
        os.set_blocking(descriptor, True)
        with os.fdopen(descriptor, "rb") as handle:
            descriptor = None
            if byte_range is None:
                if info.st_size > max_bytes:
                    raise ImageRejected(TOO_LARGE, f"{path}: {info.st_size} bytes > max_file_bytes {max_bytes}")
                data = handle.read(max_bytes + 1)
            else:
                offset, size = byte_range
                if size > max_bytes:
                    raise ImageRejected(TOO_LARGE, f"{path} member at {offset}: {size} bytes > max_file_bytes {max_bytes}")
                handle.seek(offset)
                data = handle.read(size)
    except OSError as error:
        raise ImageRejected(DECODE_ERROR, f"{path}: {type(error).__name__}: {error}") from error
    finally:
        if descriptor is not None:
            os.close(descriptor)
    if len(data) > max_bytes:  # the file grew while it was read
        raise ImageRejected(TOO_LARGE, f"{path}: more than max_file_bytes {max_bytes} bytes")
    if not data:
        raise ImageRejected(EMPTY_FILE, f"zero-byte file: {path}")
    return data


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def decode_rgb(data: bytes, max_pixels: int, name: str = "image",
               max_pixels_per_byte: float = DEFAULT_MAX_PIXELS_PER_BYTE) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB array, upright per its EXIF orientation.

    `name` (the file or tar member) is what reject details name, so that they read the same on
    every run. Multi-frame images (animated GIF, WebP, multi-page TIFF) give their first frame."""
    return decode_image(data, max_pixels, name, max_pixels_per_byte)[0]


def decode_image(data: bytes, max_pixels: int, name: str = "image",
                 max_pixels_per_byte: float = DEFAULT_MAX_PIXELS_PER_BYTE) -> tuple[np.ndarray, int]:
    """(upright RGB array, the EXIF orientation 1..8 that was applied to the stored pixels)."""
    if not data:
        raise ImageRejected(EMPTY_FILE, f"zero bytes: {name}")
    try:
        with warnings.catch_warnings():
            # The size checks below replace PIL's own bomb warning/error with a reject reason.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            pixels = width * height
            if pixels > max_pixels:
                raise ImageRejected(TOO_LARGE, f"{name}: {width}x{height} = {pixels} pixels > max_pixels {max_pixels}")
            if pixels > BOMB_CHECK_PIXELS and pixels > max_pixels_per_byte * len(data):
                raise ImageRejected(TOO_LARGE, f"{name}: {width}x{height} = {pixels} pixels from {len(data)} bytes, more than "
                                               f"max_pixels_per_byte {max_pixels_per_byte:g} (a decompression bomb)")
            orientation = exif_orientation(image)
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb_array(image), orientation
    except ImageRejected:
        raise
    except Image.DecompressionBombError as error:  # PIL refuses at open, beyond twice its own limit
        raise ImageRejected(TOO_LARGE, f"{name}: {_clean(error, name)}") from error
    except UnidentifiedImageError as error:
        raise ImageRejected(DECODE_ERROR, f"{name}: not an image format PIL can identify "
                                          f"({len(data)} bytes starting {data[:8]!r})") from error
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as error:
        raise ImageRejected(DECODE_ERROR, f"{name}: {type(error).__name__}: {_clean(error, name)}") from error


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1..8) that exif_transpose applies; 1 when absent or invalid."""
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: exif_transpose ignores it as well
        return 1
    return value if isinstance(value, int) and value in ORIENTATION_TRANSFORMS else 1


def _clean(error: Exception, name: str) -> str:
    """The error's message with object reprs (`<_io.BytesIO object at 0x...>`) replaced by the name."""
    return _OBJECT_REPR.sub(name, str(error))


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
                      image_range: tuple[int, int] | None = None, name: str | None = None,
                      max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                      max_pixels_per_byte: float = DEFAULT_MAX_PIXELS_PER_BYTE) -> np.ndarray:
    return _load(image_path, image_bytes, max_pixels, image_range, name, max_file_bytes, max_pixels_per_byte)[0]


def _load(image_path, image_bytes, max_pixels, image_range, name, max_file_bytes, max_pixels_per_byte):
    if image_bytes is None:
        if image_path is None:
            raise ImageRejected(MISSING_FILE, "the sample has neither an image path nor image bytes")
        image_bytes = read_image_bytes(os.fspath(image_path), image_range, max_file_bytes)
    elif len(image_bytes) > max_file_bytes:
        raise ImageRejected(TOO_LARGE, f"{name or 'image'}: {len(image_bytes)} bytes > max_file_bytes {max_file_bytes}")
    return decode_image(image_bytes, max_pixels, name or str(image_path or "image"), max_pixels_per_byte)


def decode_sample(sample, source_config) -> None:
    """The decode stage's work: the sample's pixels (upright), their size, and the EXIF orientation
    the stored pixels had (annotation masks drawn on the stored pixels follow it)."""
    sample.image, sample.orientation = _load(
        sample.image_path, sample.image_bytes, source_config.max_pixels, sample.image_range, sample.source,
        source_config.max_file_bytes, source_config.max_pixels_per_byte)
    sample.height, sample.width = sample.image.shape[:2]
    sample.image_bytes = None  # the decoded array replaces the encoded bytes from here on
