"""WebDataset tars as img2dataset writes them: KEY.jpg (or png/webp) + KEY.txt and/or KEY.json.

The tars' headers are scanned once (tarfile, random access), so that the source knows its length
and every key up front and any worker can read any range of samples by seeking to their members.
Members are grouped into samples by webdataset's own rule (`base_plus_ext`). Uncompressed tars
only, as img2dataset writes them.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from dataclasses import dataclass, field

from webdataset.tariterators import base_plus_ext

from ..config import ConfigError
from ..images import MISSING_FILE
from ..keys import safe_key
from ..records import Caption, Sample
from . import SOURCE_ERROR, Source

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class TarSample:
    url: str
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)  # extension -> (data offset, size)
    error: str | None = None  # set on the placeholder for an unreadable or truncated tar


class WebDatasetSource(Source):
    name = "webdataset"

    def __init__(self, config):
        super().__init__(config)
        self.urls = _expand(self.require("urls", "--urls"))
        self.entries = [entry for url in self.urls for entry in scan_tar(url)]

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, index: int) -> str:
        entry = self.entries[index]
        if entry.error:
            return safe_key(f"source-error-{os.path.basename(entry.url)}")
        return safe_key(entry.key)

    def sample(self, index: int) -> Sample:
        entry = self.entries[index]
        if entry.error:
            sample = Sample(self.key(index), "", entry.url, [])
            sample.drop(SOURCE_ERROR, entry.error, "source")
            return sample
        meta = _json_of(_read_member(entry, "json"))
        text = _read_member(entry, "txt")
        caption = text.decode("utf-8", "replace") if text is not None else str(meta.get("caption") or "")
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in entry.members), None)
        sample = Sample(
            key=self.key(index),
            image_id=str(meta.get("key", entry.key)),
            source=f"{entry.url}#{entry.key}.{image_ext or '?'}",
            captions=[Caption("0", caption)] if caption else [],
            image_path=entry.url,
            image_range=entry.members[image_ext] if image_ext else None,
        )
        if image_ext is None:
            sample.drop(MISSING_FILE, f"no image member ({'/'.join(IMAGE_EXTENSIONS)}) for key {entry.key}", "source")
        return sample

    def describe(self) -> dict:
        return {"type": self.name, "urls": self.config.urls, "num_tars": len(self.urls), "num_images": len(self)}


def scan_tar(url: str) -> list[TarSample]:
    """The samples of one tar, in member order, plus a placeholder error entry where the tar is
    unreadable or truncated (tarfile reads a cut at a member header as the end of the archive, so
    the missing samples would otherwise vanish silently)."""
    entries: dict[str, TarSample] = {}
    problem = _truncation(url)
    try:
        with tarfile.open(url, "r:") as tar:
            for info in tar:
                base, extension = base_plus_ext(info.name)
                if info.isfile() and base is not None:
                    entry = entries.setdefault(base, TarSample(url, base))
                    entry.members[extension.lower()] = (info.offset_data, info.size)
    except (tarfile.TarError, OSError) as error:
        problem = problem or f"{url}: unreadable tar ({type(error).__name__}: {error})"
    samples = list(entries.values())
    if problem:
        samples.append(TarSample(url, f"source-error-{os.path.basename(url)}", error=problem))
    return samples


def _truncation(url: str) -> str | None:
    """A complete tar is a whole number of 512-byte blocks ending in (at least) two zero blocks."""
    size = os.path.getsize(url)
    with open(url, "rb") as handle:
        handle.seek(max(0, size - 1024))
        tail = handle.read()
    if size % 512 or size < 1024 or tail.strip(b"\0"):
        return f"{url}: truncated tar ({size} bytes, no end-of-archive blocks); samples after the cut are missing"
    return None


def _read_member(entry: TarSample, extension: str) -> bytes | None:
    if extension not in entry.members:
        return None
    offset, size = entry.members[extension]
    with open(entry.url, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def _expand(pattern: str) -> list[str]:
    """Brace patterns (img2dataset style) and globs to a sorted list of existing local tar paths."""
    import braceexpand

    paths = sorted({path for part in braceexpand.braceexpand(pattern) for path in (glob.glob(part) or [part])})
    remote = [path for path in paths if "://" in path or path.startswith("pipe:")]
    if remote:
        raise ConfigError(f"--urls: {remote[0]}: only local tar files are supported (copy or mount remote shards)")
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise ConfigError(f"--urls: no such file: {missing[0]}")
    return paths


def _json_of(data: bytes | None) -> dict:
    if not data:
        return {}
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
