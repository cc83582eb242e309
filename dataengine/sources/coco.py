"""COCO Captions: an images folder + captions_*.json (+ optional instances_*.json).

Defects of the file as a whole are one `ConfigError` (exit 2): a file that is not a JSON object,
`images` or `annotations` that are not lists, an annotation that is not an object or names no
`image_id` (it belongs to no image, so mining on would silently lose it). Defects of one image
record are a `source_error` row for that record and the rest is mined: a record that is not an
object, has no `id` or an id that is neither an integer nor a string, has no string `file_name`, a
`file_name` outside `--images` (unless `--allow-outside-images`), or a caption that is not a string.
Integer and string ids may be mixed: integers sort first, then strings, and an id 7 and an id "7"
are different images.
"""

from __future__ import annotations

import json
from collections import defaultdict

from ..config import ConfigError, short_repr
from ..keys import safe_key
from ..nouns import normalize_caption
from ..reasons import SOURCE_ERROR
from ..records import Caption, Sample
from . import Source, existing_path, image_under


class CocoSource(Source):
    name = "coco"

    def __init__(self, config):
        super().__init__(config)
        self.images_dir = existing_path(self.require("images", "--images"), "--images", "dir")
        captions_path = existing_path(self.require("captions", "--captions"), "--captions", "file")
        captions = read_coco_json(captions_path, "--captions")
        records = _list_of(captions, "images", captions_path, "--captions")
        # (file position, record), valid ids first in id order, then unusable records in file order
        self.images = sorted(enumerate(records), key=lambda item: _order(_image_id(item[1]), item[0]))
        if not self.images:
            raise ConfigError(f"--captions: {config.captions} lists no images")
        self.captions = _group_by_image(_list_of(captions, "annotations", captions_path, "--captions"), "--captions")
        self.instances = None
        if config.instances:
            path = existing_path(config.instances, "--instances", "file")
            self.instances = _group_by_image(_list_of(read_coco_json(path, "--instances"), "annotations", path,
                                                      "--instances"), "--instances")

    def __len__(self) -> int:
        return len(self.images)

    def key(self, index: int) -> str:
        position, image = self.images[index]
        image_id = _image_id(image)
        if image_id is None:
            return f"bad-image-record-{position}"
        return f"{image_id:012d}" if isinstance(image_id, int) else safe_key(str(image_id))

    def sample(self, index: int) -> Sample:
        position, image = self.images[index]
        image_id = _image_id(image)
        if image_id is None:
            return self._bad(index, f"images[{position}]: {_id_problem(image)}")
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            return self._bad(index, f"image id {image_id!r}: no file_name (got {short_repr(file_name)})", str(image_id))
        path, problem = image_under(self.images_dir, file_name, self.config.allow_outside_images)
        if problem:
            return self._bad(index, f"image id {image_id!r}: {problem}", str(image_id))
        captions = []
        for number, annotation in self.captions.get(image_id, []):
            text = annotation.get("caption")
            if text is not None and not isinstance(text, str):
                return self._bad(index, f"image id {image_id!r}: caption annotation {annotation.get('id', number)!r} "
                                        f"holds a {type(text).__name__}, not a string: {short_repr(text)}", str(image_id))
            captions.append(Caption(str(annotation.get("id", f"annotation-{number}")), normalize_caption(text or "")))
        annotations = None
        if self.instances is not None:
            annotations = [annotation for _, annotation in self.instances.get(image_id, [])]
        height, width = image.get("height"), image.get("width")
        size = (height, width) if all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                      for v in (height, width)) else None
        return Sample(key=self.key(index), image_id=str(image_id), source=str(path), captions=captions,
                      image_path=str(path), annotations=annotations, annotated_size=size,
                      annotation_frame=self.config.annotation_frame)

    def _bad(self, index: int, detail: str, image_id: str = "") -> Sample:
        sample = Sample(self.key(index), image_id, f"{self.config.captions}#images[{self.images[index][0]}]", [])
        sample.drop(SOURCE_ERROR, detail, "source")
        return sample

    def describe(self) -> dict:
        return {"type": self.name, "images": str(self.images_dir), "captions": self.config.captions,
                "instances": self.config.instances, "num_images": len(self.images)}


def read_coco_json(path, flag: str) -> dict:
    """A COCO captions or instances file as its top-level object; a broken file is a ConfigError
    naming `flag`. Every reader of COCO JSON in the project goes through here."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{flag}: {path} is not valid JSON ({error})") from error
    except RecursionError as error:
        raise ConfigError(f"{flag}: {path} is nested too deeply to read") from error
    if not isinstance(value, dict):
        raise ConfigError(f'{flag}: {path} holds a JSON {_json_type(value)}, expected a COCO object with "images" and '
                          '"annotations"')
    return value


def _list_of(data: dict, name: str, path, flag: str) -> list:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f'{flag}: {path}: "{name}" is a JSON {_json_type(value)}, expected a list')
    return value


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _valid_id(value) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _image_id(image) -> int | str | None:
    if isinstance(image, dict) and _valid_id(image.get("id")):
        return image["id"]
    return None


def _id_problem(image) -> str:
    if not isinstance(image, dict):
        return f"an image record must be an object, got a JSON {_json_type(image)}"
    if "id" not in image:
        return "the image record has no id"
    return f"image id must be an integer or a string, got {short_repr(image['id'])}"


def _order(value, position: int) -> tuple:
    """Integers first (by value), then strings, then anything else in file order."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (0, value, "", position)
    if isinstance(value, str):
        return (1, 0, value, position)
    return (2, 0, "", position)


def _group_by_image(annotations: list, flag: str) -> dict:
    """image id -> [(file position, annotation)], in annotation id order within an image."""
    grouped = defaultdict(list)
    for position, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise ConfigError(f"{flag}: annotations[{position}] is a JSON {_json_type(annotation)}, not an object")
        if not _valid_id(annotation.get("image_id")):
            what = "has no image_id" if "image_id" not in annotation else f"has image_id {short_repr(annotation['image_id'])}"
            raise ConfigError(f"{flag}: annotations[{position}] (id {short_repr(annotation.get('id'))}) {what}; every "
                              "annotation must name its image by an integer or string id")
        grouped[annotation["image_id"]].append((position, annotation))
    for items in grouped.values():
        items.sort(key=lambda item: _order(item[1].get("id"), item[0]))
    return grouped
