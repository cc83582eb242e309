"""A Hugging Face `datasets` dataset on disk: a save_to_disk folder, or parquet file(s)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ..config import ConfigError
from ..keys import safe_key
from ..records import Caption, Sample
from . import Source, existing_path
from .tables import captions_of, check_column, pick_column


class HFSource(Source):
    name = "hf"
    IMAGE_COLUMNS = ("image", "img", "jpg", "png")
    CAPTION_COLUMNS = ("caption", "captions", "text", "sentences")

    def __init__(self, config):
        super().__init__(config)
        self.path = existing_path(self.require("dataset", "--dataset"), "--dataset")
        self.dataset = self._load()
        columns = list(self.dataset.column_names)
        self.image_column = pick_column(columns, config.image_column, self.IMAGE_COLUMNS, "--image-column")
        self.caption_column = pick_column(columns, config.caption_column, self.CAPTION_COLUMNS, "--caption-column")
        check_column(columns, config.id_column, "--id-column")
        self._lazy_images()

    def _load(self):
        import datasets

        if self.path.is_dir() and any(self.path.glob("*.json")) and not any(self.path.glob("*.parquet")):
            loaded = datasets.load_from_disk(str(self.path))
        else:
            files = sorted(str(p) for p in self.path.glob("*.parquet")) if self.path.is_dir() else [str(self.path)]
            if not files:
                raise ConfigError(f"--dataset: {self.path} holds neither a save_to_disk dataset nor parquet files")
            loaded = datasets.load_dataset("parquet", data_files=files, split="train")
        if isinstance(loaded, datasets.DatasetDict):
            split = self.config.split or ("train" if "train" in loaded else None)
            if split not in loaded:
                raise ConfigError(f"--split: choose one of {', '.join(loaded)}")
            loaded = loaded[split]
        return loaded

    def _lazy_images(self) -> None:
        """Keep images encoded ({bytes, path}) so that decoding happens in the decode stage."""
        import datasets

        feature = self.dataset.features[self.image_column]
        if isinstance(feature, datasets.Image):
            self.dataset = self.dataset.cast_column(self.image_column, datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self.dataset)

    @cached_property
    def ids(self) -> list[str] | None:
        if not self.config.id_column:
            return None
        return [str(value) for value in self.dataset[self.config.id_column]]

    def key(self, index: int) -> str:
        return safe_key(self.ids[index] if self.ids is not None else f"{index:09d}")

    def sample(self, index: int) -> Sample:
        row = self.dataset[index]
        sample_id = self.ids[index] if self.ids is not None else f"{index:09d}"
        image_bytes, image_path = _image_ref(row[self.image_column])
        texts = captions_of(row[self.caption_column])
        return Sample(
            key=self.key(index),
            image_id=sample_id,
            source=image_path or f"{self.path}#{index}",
            captions=[Caption(str(i), text) for i, text in enumerate(texts)],
            image_path=image_path if image_bytes is None else None,
            image_bytes=image_bytes,
        )

    def describe(self) -> dict:
        return {"type": self.name, "dataset": str(self.path), "split": self.config.split, "num_images": len(self.dataset)}


def _image_ref(value) -> tuple[bytes | None, str | None]:
    """An image cell ({bytes, path} dict, a path string, or raw bytes) to (bytes, path)."""
    if isinstance(value, dict):
        path = value.get("path")
        return value.get("bytes"), str(Path(path)) if path else None
    if isinstance(value, bytes | bytearray):
        return bytes(value), None
    if isinstance(value, str):
        return None, value
    return None, None
