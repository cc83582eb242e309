"""A folder of images + a JSONL, CSV or parquet table of (image path, caption or captions)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..config import ConfigError
from ..keys import safe_key
from ..reasons import MISSING_FILE, SOURCE_ERROR
from ..records import Caption, Sample
from . import Source, existing_path, image_under
from .tables import BadRow, captions_of, check_column, pick_column, read_table, table_columns, text_cell


class FolderSource(Source):
    """One bad row (a broken JSONL line, a CSV row with a missing field, a caption that is a number)
    is a `source_error` reject row of its own (key `row-N`) and the other rows are mined; so is a
    row whose image path is absolute or leads outside --images (unless --allow-outside-images)."""

    name = "folder"
    IMAGE_COLUMNS = ("image", "image_path", "path", "file_name", "filename", "file")
    CAPTION_COLUMNS = ("caption", "captions", "text")

    def __init__(self, config):
        super().__init__(config)
        self.images_dir = existing_path(self.require("images", "--images"), "--images", "dir")
        table_path = existing_path(self.require("captions", "--captions"), "--captions", "file")
        rows = read_table(table_path)
        if not rows:
            raise ConfigError(f"--captions: {table_path} has no rows")
        columns = table_columns(rows)
        if not columns:
            raise ConfigError(f"--captions: cannot read {table_path}: no readable row ({rows[0].message})")
        image_column = pick_column(columns, config.image_column, self.IMAGE_COLUMNS, "--image-column")
        caption_column = pick_column(columns, config.caption_column, self.CAPTION_COLUMNS, "--caption-column")
        check_column(columns, config.id_column, "--id-column")
        self.entries = _group_rows(rows, image_column, caption_column, config.id_column)
        self.entry_keys = _image_keys(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, index: int) -> str:
        return self.entry_keys[index]

    def sample(self, index: int) -> Sample:
        entry = self.entries[index]
        path, problem = image_under(self.images_dir, entry.relative, self.config.allow_outside_images)
        if entry.error:
            path, problem = self.images_dir, None
        sample = Sample(key=self.entry_keys[index], image_id=entry.sample_id or entry.relative,
                        source=str(path) if not entry.error else f"{self.config.captions}#row-{entry.row}",
                        captions=list(entry.captions), image_path=str(path))
        if entry.error:
            sample.drop(SOURCE_ERROR, f"table row {entry.row}: {entry.error}", "source")
        elif not entry.relative:
            sample.drop(MISSING_FILE, f"table row {entry.row} names no image", "source")
        elif problem:
            sample.drop(SOURCE_ERROR, f"table row {entry.row}: {problem}", "source")
        return sample

    def describe(self) -> dict:
        return {"type": self.name, "images": str(self.images_dir), "captions": self.config.captions,
                "num_images": len(self.entries)}


@dataclass
class Entry:
    relative: str  # image path relative to the images folder ("" when the row names none)
    sample_id: str | None
    row: int  # first table row of the image
    captions: list[Caption] = field(default_factory=list)
    error: str | None = None  # a row the source cannot read: a source_error reject of its own


def _group_rows(rows: list, image_column: str, caption_column: str, id_column: str | None) -> list[Entry]:
    """Rows that name the same image are one entry with all of their captions, in table order.
    A row with an empty image cell is an entry of its own, rejected later rather than merged;
    so is a bad row (unreadable, or a cell of the wrong type), which merges with nothing."""
    entries: list[Entry] = []
    by_path: dict[str, Entry] = {}
    for row_number, row in enumerate(rows):
        if isinstance(row, BadRow):
            entries.append(Entry("", None, row_number, error=row.message))
            continue
        try:
            relative = (text_cell(row.get(image_column), image_column) or "").strip()
            sample_id = text_cell(row.get(id_column), id_column) if id_column else None
            texts = captions_of(row.get(caption_column))
        except (TypeError, ValueError) as error:
            entries.append(Entry("", None, row_number, error=str(error)))
            continue
        entry = by_path.get(relative) if relative else None
        if entry is None:
            entry = Entry(relative, sample_id, row_number)
            entries.append(entry)
            if relative:
                by_path[relative] = entry
        entry.captions.extend(Caption(f"{row_number}" if len(texts) == 1 else f"{row_number}-{i}", text)
                              for i, text in enumerate(texts))
    return entries


def _image_keys(entries: list[Entry]) -> list[str]:
    """Keys from the sample id, else the path without its extension; paths whose stems collide
    (a.jpg and a.png) keep their extension so that keys stay distinct."""
    stems = [str(PurePosixPath(e.relative).with_suffix("")) if e.relative else None for e in entries]
    repeated = Counter(stems)
    keys = []
    for entry, stem in zip(entries, stems, strict=True):
        if entry.sample_id and not entry.error:
            keys.append(safe_key(entry.sample_id))
        elif stem is None or entry.error:
            keys.append(f"row-{entry.row}")
        else:
            keys.append(safe_key(stem if repeated[stem] == 1 else entry.relative))
    return keys
