"""Input formats. Each source yields `Sample` records in a deterministic order.

Registry: `SOURCES[name]` is a class taking a `SourceConfig`; `create_source(config)` builds it and
checks its paths up front so that a bad path is one clear error, not a failure halfway through.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..config import ConfigError, SourceConfig
from ..records import Sample


class Source:
    name = "source"

    def __init__(self, config: SourceConfig):
        self.config = config

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of samples, where it is known without reading the data (else TypeError)."""
        raise TypeError(f"the {self.name} source does not know its length up front")

    def describe(self) -> dict:
        return {"type": self.name}

    def require(self, setting: str, flag: str) -> str:
        value = getattr(self.config, setting)
        if not value:
            raise ConfigError(f"{flag}: required for --source {self.name}")
        return value


def create_source(config: SourceConfig) -> Source:
    from .coco import CocoSource
    from .folder import FolderSource
    from .hf import HFSource
    from .webdataset import WebDatasetSource

    registry = {cls.name: cls for cls in (CocoSource, FolderSource, WebDatasetSource, HFSource)}
    if config.type not in registry:
        raise ConfigError(f"--source: unknown source {config.type!r} (available: {', '.join(registry)})")
    return registry[config.type](config)


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
