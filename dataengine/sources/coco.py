"""COCO Captions: an images folder + captions_*.json (+ optional instances_*.json)."""

from __future__ import annotations

import json
from collections import defaultdict

from ..config import ConfigError
from ..keys import safe_key
from ..records import Caption, Sample
from . import Source, existing_path


class CocoSource(Source):
    name = "coco"

    def __init__(self, config):
        super().__init__(config)
        self.images_dir = existing_path(self.require("images", "--images"), "--images", "dir")
        captions = _load_json(existing_path(self.require("captions", "--captions"), "--captions", "file"), "--captions")
        self.images = sorted(captions.get("images", []), key=lambda image: image["id"])
        if not self.images:
            raise ConfigError(f"--captions: {config.captions} lists no images")
        self.captions = _group_by_image(captions.get("annotations", []))
        self.instances = None
        if config.instances:
            path = existing_path(config.instances, "--instances", "file")
            self.instances = _group_by_image(_load_json(path, "--instances").get("annotations", []))

    def __len__(self) -> int:
        return len(self.images)

    def key(self, index: int) -> str:
        image_id = self.images[index]["id"]
        return f"{image_id:012d}" if isinstance(image_id, int) else safe_key(str(image_id))

    def sample(self, index: int) -> Sample:
        image = self.images[index]
        image_id = image["id"]
        captions = [Caption(str(a["id"]), a.get("caption") or "") for a in self.captions.get(image_id, [])]
        annotations = None if self.instances is None else self.instances.get(image_id, [])
        path = self.images_dir / image["file_name"]
        size = (image["height"], image["width"]) if "height" in image and "width" in image else None
        return Sample(key=self.key(index), image_id=str(image_id), source=str(path), captions=captions,
                      image_path=str(path), annotations=annotations, annotated_size=size)

    def describe(self) -> dict:
        return {"type": self.name, "images": str(self.images_dir), "captions": self.config.captions,
                "instances": self.config.instances, "num_images": len(self.images)}


def _load_json(path, flag: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{flag}: {path} is not valid JSON ({error})") from error


def _group_by_image(annotations: list[dict]) -> dict:
    grouped = defaultdict(list)
    for annotation in sorted(annotations, key=lambda a: (a["image_id"], a["id"])):
        grouped[annotation["image_id"]].append(annotation)
    return grouped
