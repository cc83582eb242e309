"""WebDataset tars as img2dataset writes them: KEY.jpg (or png/webp) + KEY.txt and/or KEY.json."""

from __future__ import annotations

import json
import os

import webdataset as wds

from ..config import ConfigError
from ..keys import safe_key
from ..records import Caption, Sample
from . import Source

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SOURCE_ERROR = "source_error"


class WebDatasetSource(Source):
    name = "webdataset"

    def __init__(self, config):
        super().__init__(config)
        self.urls = _expand(self.require("urls", "--urls"))

    def __iter__(self):
        errors: list[Exception] = []

        def keep_going(error: Exception) -> bool:
            errors.append(error)
            return True

        yield from _truncated_tars(self.urls)
        dataset = wds.WebDataset(self.urls, shardshuffle=False, handler=keep_going, empty_check=False)
        for position, raw in enumerate(dataset):
            yield from _flush_errors(errors, position)
            yield _to_sample(raw)
        yield from _flush_errors(errors, "end")

    def describe(self) -> dict:
        return {"type": self.name, "urls": self.config.urls, "num_tars": len(self.urls)}


def _truncated_tars(urls: list[str]) -> list[Sample]:
    """A reject row per local tar that does not end as a complete archive does (a whole number of
    512-byte blocks, the last two all zero): tarfile reads a cut at a member header as the end of
    the archive, so without this check the samples after the cut would vanish silently."""
    samples = []
    for url in urls:
        if "://" in url or not os.path.isfile(url):
            continue
        size = os.path.getsize(url)
        with open(url, "rb") as handle:
            handle.seek(max(0, size - 1024))
            tail = handle.read()
        if size % 512 or size < 1024 or tail.strip(b"\0"):
            sample = Sample(key=safe_key(f"source-error-{os.path.basename(url)}"), image_id="", source=url, captions=[])
            sample.drop(SOURCE_ERROR, f"{url}: truncated tar ({size} bytes, no end-of-archive blocks); "
                        "samples after the cut are missing", "source")
            samples.append(sample)
    return samples


def _expand(pattern: str) -> list[str]:
    """Brace patterns (img2dataset style) and globs to a sorted list of existing tar paths."""
    import glob

    import braceexpand

    paths = sorted({path for part in braceexpand.braceexpand(pattern) for path in (glob.glob(part) or [part])})
    missing = [path for path in paths if "://" not in path and not os.path.isfile(path)]
    if missing:
        raise ConfigError(f"--urls: no such file: {missing[0]}")
    return paths


def _to_sample(raw: dict) -> Sample:
    key = raw["__key__"]
    url = raw.get("__url__", "")
    meta = _json_of(raw.get("json"))
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in raw), None)
    caption = raw["txt"].decode("utf-8", "replace") if "txt" in raw else str(meta.get("caption") or "")
    sample = Sample(
        key=safe_key(key),
        image_id=str(meta.get("key", key)),
        source=f"{url}#{key}.{image_ext or '?'}",
        captions=[Caption("0", caption)] if caption else [],
        image_bytes=raw[image_ext] if image_ext else b"",
    )
    if image_ext is None:
        sample.drop("missing_file", f"no image member ({'/'.join(IMAGE_EXTENSIONS)}) for key {key}", "source")
    return sample


def _json_of(data: bytes | None) -> dict:
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _flush_errors(errors: list[Exception], where) -> list[Sample]:
    """Unreadable tar members become reject rows (keyed by where they occurred) instead of silent loss."""
    samples = []
    for number, error in enumerate(errors):
        sample = Sample(key=safe_key(f"source-error-{where}-{number}"), image_id="", source=str(error)[:200], captions=[])
        sample.drop(SOURCE_ERROR, f"{type(error).__name__}: {error}", "source")
        samples.append(sample)
    errors.clear()
    return samples
