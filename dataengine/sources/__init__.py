"""Input formats, as random-access sequences of `Sample` records in a deterministic order.

A source knows its length and each sample's key from its metadata alone (caption files, tables,
tar headers); `read(start, stop)` builds those samples with lazy image references, so that an
executor can hand out index ranges and let each worker read its own. `create_source(config)`
checks paths up front: a bad path is one clear error, not a failure halfway through.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

from ..config import ConfigError, SourceConfig
from ..reasons import DUPLICATE_KEY, SOURCE_ERROR
from ..records import Sample
from ..registry import Registry

READ_CHUNK = 1024


class Source:
    name = "source"

    def __init__(self, config: SourceConfig):
        self.config = config

    def __len__(self) -> int:
        raise NotImplementedError

    def key(self, index: int) -> str:
        """The key of sample `index`, from metadata only."""
        raise NotImplementedError

    def sample(self, index: int) -> Sample:
        """Sample `index`, its image not yet read."""
        raise NotImplementedError

    @cached_property
    def first_use_of_key(self) -> dict[str, int]:
        first: dict[str, int] = {}
        for index in range(len(self)):
            first.setdefault(self.key(index), index)
        return first

    def with_key_index(self) -> Source:
        """The source with its key index built, ready to be shipped to workers (who then need not
        scan every key again)."""
        self.first_use_of_key  # noqa: B018 (a cached property, computed here once)
        return self

    def read(self, start: int, stop: int) -> list[Sample]:
        """Samples start..stop-1; a key already used by an earlier sample is rejected, never merged."""
        samples = []
        for index in range(start, min(stop, len(self))):
            sample = self._sample_or_reject(index)
            sample.index = index
            first = self.first_use_of_key[sample.key]
            if first != index:
                sample.drop(DUPLICATE_KEY, f"key {sample.key} already used by input {first}", "source")
                sample.key = f"{sample.key}-duplicate-{index}"  # its reject row needs a key of its own
            samples.append(sample)
        return samples

    def _sample_or_reject(self, index: int) -> Sample:
        """An unreadable entry (a caption member that cannot be read, say) is a reject row, not a crash."""
        try:
            return self.sample(index)
        except Exception as error:
            sample = Sample(self.key(index), "", f"{self.name} input {index}", [])
            sample.drop(SOURCE_ERROR, f"{type(error).__name__}: {error}", "source")
            return sample

    def __iter__(self) -> Iterator[Sample]:
        for start in range(0, len(self), READ_CHUNK):
            yield from self.read(start, start + READ_CHUNK)

    def describe(self) -> dict:
        return {"type": self.name}

    def require(self, setting: str, flag: str) -> str:
        value = getattr(self.config, setting)
        if not value:
            raise ConfigError(f"{flag}: required for --source {self.name}")
        return value


SOURCES = Registry("source", "--source", {
    "coco": "dataengine.sources.coco:CocoSource",
    "folder": "dataengine.sources.folder:FolderSource",
    "webdataset": "dataengine.sources.webdataset:WebDatasetSource",
    "hf": "dataengine.sources.hf:HFSource",
})


def create_source(config: SourceConfig) -> Source:
    return SOURCES.get(config.type)(config)


def image_under(images_dir, relative: str, allow_outside: bool = False):
    """(path, problem): the image `relative` names inside `images_dir`, and why it may not be read.

    An absolute path, or one whose `..` parts lead outside the folder, is refused unless
    `source.allow_outside_images` (`--allow-outside-images`) is set; the check is on the path as
    written, so a symlink inside the folder is followed as usual."""
    import posixpath
    from pathlib import Path

    if "\0" in relative:
        return Path(images_dir), f"image path {relative!r} holds a NUL byte"
    path = Path(images_dir) / relative
    if allow_outside:
        return path, None
    normal = posixpath.normpath(relative.replace("\\", "/"))
    if posixpath.isabs(normal) or normal == ".." or normal.startswith("../") or Path(relative).is_absolute():
        return path, (f"image path {relative!r} is outside --images {images_dir} "
                      "(allow with --allow-outside-images / source.allow_outside_images)")
    return path, None


def existing_path(value: str, flag: str, kind: str = "any"):
    from pathlib import Path

    path = Path(value).expanduser()
    if kind == "dir" and not path.is_dir():
        raise ConfigError(f"{flag}: no such folder: {value}")
    if kind == "file" and not path.is_file():
        raise ConfigError(f"{flag}: no such file: {value}")
    if kind == "any" and not path.exists():
        raise ConfigError(f"{flag}: no such file or folder: {value}")
    return path
