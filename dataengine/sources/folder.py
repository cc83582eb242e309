"""A folder of images + a JSONL, CSV or parquet table of (image path, caption or captions)."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from ..keys import safe_key
from ..records import Caption, Sample
from . import Source, existing_path
from .tables import captions_of, pick_column, read_table


class FolderSource(Source):
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
        columns = list(rows[0])
        image_column = pick_column(columns, config.image_column, self.IMAGE_COLUMNS, "--image-column")
        caption_column = pick_column(columns, config.caption_column, self.CAPTION_COLUMNS, "--caption-column")
        self.entries = _group_rows(rows, image_column, caption_column, config.id_column)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        for relative, (sample_id, captions) in self.entries.items():
            path = self.images_dir / relative
            yield Sample(
                key=safe_key(sample_id or str(Path(relative).with_suffix(""))),
                image_id=sample_id or relative,
                source=str(path),
                captions=captions,
                image_path=str(path),
            )

    def describe(self) -> dict:
        return {"type": self.name, "images": str(self.images_dir), "captions": self.config.captions,
                "num_images": len(self.entries)}


def _group_rows(rows: list[dict], image_column: str, caption_column: str, id_column: str | None) -> dict:
    """Rows that name the same image are one sample with all of their captions, in table order."""
    entries: dict[str, tuple[str | None, list[Caption]]] = {}
    for row_number, row in enumerate(rows):
        relative = str(row.get(image_column) or "")
        sample_id = str(row[id_column]) if id_column and row.get(id_column) is not None else None
        texts = captions_of(row.get(caption_column))
        _, captions = entries.setdefault(relative, (sample_id, []))
        captions.extend(Caption(f"{row_number}" if len(texts) == 1 else f"{row_number}-{i}", text)
                        for i, text in enumerate(texts))
    return entries
