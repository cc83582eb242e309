"""Reading `.pt` files that anyone could have written (a downloaded checkpoint, a file planted in
an output folder): tensors and plain containers only, never objects whose unpickling runs code.
Whatever is wrong with such a file is a one-line `ConfigError` that names it."""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from pathlib import Path

from .config import ConfigError

REFUSED = ("it holds objects other than tensors and plain containers, and unpickling them could run code: "
           "refused (only load files you trust, saved with torch.save of tensors)")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tensors(path: str | Path, what: str, map_location="cpu", mmap: bool = False):
    """`torch.load(path, weights_only=True)`. `mmap` maps a zip-format file instead of reading it
    (a cheap check of a large checkpoint); `what` starts the error message (e.g. '--clip')."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: {path} is not a regular file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error says what matters
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
    except Exception as error:  # hostile bytes can make the unpickler raise nearly anything
        raise ConfigError(f"{what}: cannot read {path}: {describe_load_error(error)}") from None


def describe_load_error(error: BaseException) -> str:
    text = str(error)
    if "Unsupported global" in text:
        return REFUSED
    if "Weights only load failed" in text:  # torch's reason is on a line of its own further down
        reason = re.search(r"Unsupported [^\n]*", text)
        return ("not a PyTorch checkpoint of tensors and plain containers (the weights-only unpickler stopped: "
                f"{reason.group(0)[:120] if reason else 'unknown content'})")
    first = re.sub(r"\x1b\[[0-9;]*m", "", text.strip().splitlines()[0] if text.strip() else "")
    return f"not a PyTorch checkpoint, or a damaged one ({type(error).__name__}: {first[:160]})"


def load_state_dict(path: str | Path, what: str, map_location="cpu", mmap: bool = False) -> dict:
    """A file holding a mapping of names to tensors (open_clip's own wrapping in 'state_dict' too)."""
    import torch

    saved = load_tensors(path, what, map_location, mmap)
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        saved = saved["state_dict"]
    if not isinstance(saved, dict) or not saved or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in saved.items()):
        raise ConfigError(f"{what}: {path} is not a state dict (a mapping of parameter names to tensors)")
    return saved
