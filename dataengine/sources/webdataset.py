"""WebDataset tars as img2dataset writes them: KEY.jpg (or png/webp/...) + KEY.txt and/or KEY.json.

The tars' headers are scanned once (tarfile, random access), so that the source knows its length
and every key up front and any worker can read any range of samples by seeking to their members.
Members are grouped into samples by webdataset's own rule (`base_plus_ext`: the key runs up to the
first dot of the member's basename, so `a.b.jpg` is key `a` with the member `b.jpg`); a member is
the sample's image, caption or metadata by the last part of its extension, as webdataset's decoders
tell them apart (`b.jpg` is an image, `x.txt` a caption).

Compressed tars (`.tar.gz`, `.tgz`, `.tar.bz2`, `.tar.xz`, told by their first bytes, as
`finetune` reads them too) are read through their decompressed stream; their images travel as
bytes. A file that is empty, not a tar at all, or cut short is one `source_error` row that says
which. Multi-frame images (an animated GIF) give their first frame. A `KEY.json` that is not a
JSON object is a `bad_metadata` reject with the parser's message.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import os
import tarfile
import zlib
from dataclasses import dataclass, field

from webdataset.tariterators import base_plus_ext

from ..config import ConfigError
from ..keys import safe_key
from ..reasons import BAD_METADATA, MISSING_FILE, SOURCE_ERROR, TOO_LARGE
from ..records import Caption, Sample
from . import Source
from .tables import captions_of

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
COMPRESSIONS = {b"\x1f\x8b": ("gz", gzip.open), b"BZh": ("bz2", bz2.open), b"\xfd7zXZ\x00": ("xz", lzma.open)}
STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


@dataclass
class TarSample:
    url: str
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)  # extension -> (data offset, size)
    error: str | None = None  # set on the placeholder for an unreadable or truncated tar
    compression: str | None = None  # gz | bz2 | xz; offsets are then in the decompressed stream


class WebDatasetSource(Source):
    name = "webdataset"

    def __init__(self, config):
        super().__init__(config)
        self.urls = expand_tars(self.require("urls", "--urls"), "--urls")
        self.entries = [entry for url in self.urls for entry in scan_tar(url)]
        self._streams: dict[str, object] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_streams"] = {}  # open decompression streams stay with the process that opened them
        return state

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
        json_ext, text_ext = member_of(entry, ("json",)), member_of(entry, ("txt",))
        image_ext = member_of(entry, IMAGE_EXTENSIONS)
        # Every member's size is compared with max_file_bytes from its tar header, before it is read.
        oversized = {ext: self._oversized(entry, ext) for ext in (json_ext, text_ext, image_ext) if ext}
        problems: list[tuple[str, str]] = []  # (reason, detail), the first one is the sample's reject
        meta, meta_error = ({}, None) if oversized.get(json_ext) else _json_of(self._read_member(entry, json_ext))
        if json_ext and oversized[json_ext]:
            problems.append((TOO_LARGE, oversized[json_ext]))
        elif meta_error:
            problems.append((BAD_METADATA, f"{entry.key}.{json_ext}: {meta_error}"))
        texts: list[str] = []
        if text_ext and oversized[text_ext]:
            problems.append((TOO_LARGE, oversized[text_ext]))
        else:
            text = self._read_member(entry, text_ext)
            try:  # the one rule of every source (tables.captions_of): bytes that are not UTF-8 are refused
                texts = captions_of(text if text is not None else meta.get("caption"))
            except (TypeError, ValueError) as error:
                where = f"{entry.key}.{text_ext}" if text is not None else f"{entry.key}.{json_ext} caption"
                problems.append((SOURCE_ERROR, f"{where}: {error}"))
        texts = [text for text in texts if text]
        if image_ext is None:
            found = ", ".join(sorted(entry.members)) or "none"
            problems.append((MISSING_FILE, f"no image member ({'/'.join(IMAGE_EXTENSIONS)}) for key {entry.key} "
                                           f"(its members: {found})"))
        elif oversized[image_ext]:
            problems.append((TOO_LARGE, oversized[image_ext]))
        compressed = entry.compression is not None
        readable = image_ext is not None and not oversized[image_ext]
        sample = Sample(
            key=self.key(index),
            image_id=str(meta.get("key", entry.key)),
            source=f"{entry.url}#{entry.key}.{image_ext or '?'}",
            captions=[Caption(str(number) if len(texts) > 1 else "0", text) for number, text in enumerate(texts)],
            image_path=entry.url if not compressed else None,
            image_range=entry.members[image_ext] if readable and not compressed else None,
            image_bytes=self._read_member(entry, image_ext) if readable and compressed else None,
        )
        for reason, detail in problems[:1]:
            sample.drop(reason, detail, "source")
        return sample

    def _oversized(self, entry: TarSample, extension: str) -> str | None:
        """Why the member is too large to read (its header's size over max_file_bytes), or None."""
        size, limit = entry.members[extension][1], self.config.max_file_bytes
        if size <= limit:
            return None
        return f"{entry.url}#{entry.key}.{extension}: {size} bytes > max_file_bytes {limit}"

    def _read_member(self, entry: TarSample, extension: str | None) -> bytes | None:
        if extension is None:
            return None
        offset, size = entry.members[extension]
        if entry.compression is None:
            with open(entry.url, "rb") as handle:
                handle.seek(offset)
                return handle.read(size)
        stream = self._streams.get(entry.url)
        if stream is None or stream.tell() > offset:  # samples are read in order: seeking forward is cheap
            if stream is not None:
                stream.close()
            stream = self._streams[entry.url] = _opener(entry.compression)(entry.url, "rb")
        stream.seek(offset)
        return stream.read(size)

    def describe(self) -> dict:
        return {"type": self.name, "urls": self.config.urls, "num_tars": len(self.urls), "num_images": len(self)}


def member_of(entry: TarSample, kinds: tuple[str, ...]) -> str | None:
    """The sample's member of one kind: an exact extension first (in `kinds` order), else the first
    dotted extension whose last part is one of them (`b.jpg`), as webdataset's decoders match."""
    for kind in kinds:
        if kind in entry.members:
            return kind
    dotted = sorted(ext for ext in entry.members if "." in ext and ext.rsplit(".", 1)[1] in kinds)
    return dotted[0] if dotted else None


def scan_tar(url: str) -> list[TarSample]:
    """The samples of one tar, in member order, plus a placeholder error entry where the tar is
    empty, not a tar, unreadable or truncated (tarfile reads a cut at a member header as the end of
    the archive, so the missing samples would otherwise vanish silently)."""
    entries: dict[str, TarSample] = {}
    size = os.path.getsize(url)
    with open(url, "rb") as handle:
        head = handle.read(8)
    compression = next((name for magic, (name, _) in COMPRESSIONS.items() if head.startswith(magic)), None)
    if size == 0:
        return [_placeholder(url, f"{url}: empty file (0 bytes), not a tar archive")]
    if compression is None and not _is_tar(url):
        return [_placeholder(url, f"{url}: not a tar archive ({size} bytes starting {head!r})")]
    problem = _truncation(url, size) if compression is None else None
    try:
        with tarfile.open(url, f"r:{compression or ''}") as tar:
            for info in tar:
                base, extension = base_plus_ext(info.name)
                if info.isfile() and base is not None:
                    entry = entries.setdefault(base, TarSample(url, base, compression=compression))
                    entry.members[extension.lower()] = (info.offset_data, info.size)
    except STREAM_ERRORS as error:
        kind = f"{compression}-compressed tar" if compression else "tar"
        problem = problem or f"{url}: unreadable or truncated {kind} ({type(error).__name__}: {error}); samples after it are missing"
    samples = list(entries.values())
    if problem:
        samples.append(_placeholder(url, problem))
    return samples


def _placeholder(url: str, problem: str) -> TarSample:
    return TarSample(url, f"source-error-{os.path.basename(url)}", error=problem)


def _is_tar(url: str) -> bool:
    try:
        return tarfile.is_tarfile(url)
    except OSError:
        return False


def _opener(compression: str):
    return next(opener for name, opener in COMPRESSIONS.values() if name == compression)


def _truncation(url: str, size: int) -> str | None:
    """A complete tar is a whole number of 512-byte blocks ending in (at least) two zero blocks."""
    with open(url, "rb") as handle:
        handle.seek(max(0, size - 1024))
        tail = handle.read()
    if size % 512 or size < 1024 or tail.strip(b"\0"):
        return f"{url}: truncated tar ({size} bytes, no end-of-archive blocks); samples after the cut are missing"
    return None


def expand_tars(pattern: str | list[str], flag: str, error: type[ConfigError] = ConfigError) -> list[str]:
    """Tar paths, brace patterns (img2dataset style), globs and folders of tars -> the sorted local
    tar files they name, each once. The one expansion of shard patterns in the project: --urls
    here, --shards in finetune."""
    import braceexpand

    paths: list[str] = []
    for item in [pattern] if isinstance(pattern, str) else pattern:
        for part in braceexpand.braceexpand(item):
            if "://" in part or part.startswith("pipe:"):
                raise error(f"{flag}: {part}: only local tar files are supported (copy or mount remote shards)")
            path = os.path.normpath(os.path.expanduser(part))
            if os.path.isdir(path):
                paths += glob.glob(os.path.join(glob.escape(path), "*.tar"))
            elif os.path.isfile(path):  # before globbing: a real file may have [ or * in its name
                paths.append(path)
            elif glob.has_magic(path):
                matches = [match for match in glob.glob(path) if os.path.isfile(match)]
                if not matches:
                    raise error(f"{flag}: no tar files match {part}")
                paths += matches
            else:
                raise error(f"{flag}: no such file: {part}")
    if not paths:
        raise error(f"{flag}: no tar files in {pattern}")
    return sorted(set(paths))


def _json_of(data: bytes | None) -> tuple[dict, str | None]:
    """(the metadata object, None), or ({}, the parser's message) when it is not a JSON object."""
    if data is None:
        return {}, None
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        return {}, f"not valid JSON ({type(error).__name__}: {error})"
    if not isinstance(value, dict):
        return {}, f"a JSON {type(value).__name__}, not an object"
    return value, None
