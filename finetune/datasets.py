"""Semantic segmentation benchmarks, read from their standard on-disk layouts.

Every dataset yields `SegSample`s: an RGB image and a label map of class indices 0..C-1 with
IGNORE (-1) where the dataset says "no label". Class names are package data files.

| name        | --root                  | images / labels                                              |
| ----------- | ----------------------- | ------------------------------------------------------------ |
| ade20k-150  | ADEChallengeData2016    | images/validation/*.jpg, annotations/validation/*.png (0 = ignore, 1..150) |
| ade20k-847  | ADE20K_2021_17_01       | images_detectron2/validation/*.jpg, annotations_detectron2/validation/*.tif (uint16, 65535 = ignore) |
| pc-59       | VOCdevkit/VOC2010       | JPEGImages/*.jpg, annotations_detectron2/pc59_val/*.png (255 = ignore) |
| pc-459      | VOCdevkit/VOC2010       | JPEGImages/*.jpg, annotations_detectron2/pc459_val/*.tif (uint16, 65535 = ignore) |
| voc         | VOCdevkit/VOC2012       | ImageSets/Segmentation/val.txt, JPEGImages, SegmentationClass (palette PNG; background and 255 ignored: the method's VOC-20) |
| coco-object | a COCO folder           | instances JSON (annotations/instances_val2017.json or instances.json) + images (val2017/ or images/); instances painted largest first, crowds and unlabelled pixels ignored |

The Pascal Context layouts are what detectron2's `prepare_pascal_context.py` writes, the ADE-847
layout what `prepare_ade20k_full_sem_seg.py` writes (as used by the method's code).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from dataengine.config import ConfigError
from dataengine.images import decode_rgb
from dataengine.registry import Registry

IGNORE = -1


class DatasetError(ConfigError):
    pass


@dataclass
class SegSample:
    key: str
    image: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray  # (H, W) int64, IGNORE where unlabelled


def class_names(filename: str) -> list[str]:
    text = resources.files("finetune").joinpath("data", "classes", filename).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_labels(path: Path, ignore_values: tuple[int, ...], offset: int) -> np.ndarray:
    """Label file -> int64 classes: `ignore_values` become IGNORE, the rest shift by `offset`."""
    with Image.open(path) as image:
        raw = np.asarray(image).astype(np.int64)
    labels = raw + offset
    labels[np.isin(raw, ignore_values)] = IGNORE
    return labels


def _read_image(path: Path) -> np.ndarray:
    return decode_rgb(path.read_bytes(), max_pixels=Image.MAX_IMAGE_PIXELS)  # PIL's bomb limit


class SegDataset:
    """Pairs of (image file, label file) under a root, in sorted order."""

    name = ""
    classes_file = ""
    images_dir = ""
    labels_dir = ""
    label_ext = ".png"
    ignore_values: tuple[int, ...] = (255,)
    label_offset = 0

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.classes = self._class_list()
        self.items = self._items()
        if not self.items:
            raise DatasetError(f"--root: no {self.name} images with labels under {self.root} "
                               f"(expected {self.images_dir}/*.jpg and {self.labels_dir}/*{self.label_ext})")

    def _class_list(self) -> list[str]:
        return class_names(self.classes_file)

    def _items(self) -> list[tuple[str, Path, Path]]:
        labels = self.root / self.labels_dir
        if not labels.is_dir():
            raise DatasetError(f"--root: {labels} not found: is {self.root} a {self.name} root?")
        items = []
        for label in sorted(labels.glob(f"*{self.label_ext}")):
            image = self.root / self.images_dir / f"{label.stem}.jpg"
            if image.exists():
                items.append((label.stem, image, label))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SegSample]:
        for key, image, label in self.items:
            yield SegSample(key, _read_image(image), _read_labels(label, self.ignore_values, self.label_offset))


class ADE150(SegDataset):
    name, classes_file = "ade20k-150", "ade20k_150.txt"
    images_dir, labels_dir = "images/validation", "annotations/validation"
    ignore_values, label_offset = (0,), -1


class ADE847(SegDataset):
    name, classes_file = "ade20k-847", "ade20k_847.txt"
    images_dir, labels_dir, label_ext = "images_detectron2/validation", "annotations_detectron2/validation", ".tif"
    ignore_values = (65535,)


class PascalContext59(SegDataset):
    name, classes_file = "pc-59", "pascal_context_59.txt"
    images_dir, labels_dir = "JPEGImages", "annotations_detectron2/pc59_val"


class PascalContext459(SegDataset):
    name, classes_file = "pc-459", "pascal_context_459.txt"
    images_dir, labels_dir, label_ext = "JPEGImages", "annotations_detectron2/pc459_val", ".tif"
    ignore_values = (65535,)


class PascalVOC(SegDataset):
    name, classes_file = "voc", "voc_20.txt"
    images_dir, labels_dir = "JPEGImages", "SegmentationClass"
    ignore_values, label_offset = (0, 255), -1

    def _items(self):
        split = self.root / "ImageSets" / "Segmentation" / "val.txt"
        if not split.exists():
            raise DatasetError(f"--root: {split} not found: is {self.root} a VOCdevkit/VOC2012 folder?")
        items = []
        for stem in split.read_text().split():
            image, label = self.root / self.images_dir / f"{stem}.jpg", self.root / self.labels_dir / f"{stem}.png"
            if not (image.exists() and label.exists()):
                raise DatasetError(f"voc: {stem} is listed in val.txt but {image.name} or {label.name} is missing")
            items.append((stem, image, label))
        return items


class COCOObject(SegDataset):
    name, classes_file = "coco-object", "coco_object_80.txt"

    def _items(self):
        from pycocotools.coco import COCO

        from dataengine.sources.coco import read_coco_json

        instances, images_folder = self._locate()
        self.coco = COCO()  # pycocotools' index over the project's one reader of COCO JSON
        self.coco.dataset = read_coco_json(instances, "--root")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.category_index = self._category_index(instances)
        return [(str(image_id), images_folder / self.coco.imgs[image_id]["file_name"], image_id)
                for image_id in sorted(self.coco.getImgIds())]

    def _locate(self) -> tuple[Path, Path]:
        """(instances JSON, images folder)."""
        return (_first_existing(self.root, ("annotations/instances_val2017.json", "instances.json")),
                _first_existing(self.root, ("val2017", "images")))

    def _category_index(self, instances: Path) -> dict[int, int]:
        """COCO category id -> class index."""
        index = {cat: i for i, cat in enumerate(sorted(self.coco.getCatIds()))}
        if len(index) != len(self.classes):
            raise DatasetError(f"coco-object: {instances} has {len(index)} categories, expected 80")
        return index

    def __iter__(self):
        for key, image, image_id in self.items:
            yield SegSample(key, _read_image(image), self._paint(image_id))

    def _paint(self, image_id: int) -> np.ndarray:
        info = self.coco.imgs[image_id]
        labels = np.full((info["height"], info["width"]), IGNORE, dtype=np.int64)
        annotations = sorted(self.coco.imgToAnns.get(image_id, []), key=lambda a: -a["area"])
        for annotation in annotations:  # largest first, so smaller objects stay visible on top
            mask = self.coco.annToMask(annotation).astype(bool)
            labels[mask] = IGNORE if annotation.get("iscrowd") else self.category_index[annotation["category_id"]]
        return labels


class WorldScenes(COCOObject):
    """A split of dataengine's controlled world (`finetune.world.scenes`): things and stuff, 29 classes."""

    name = "world"

    def _class_list(self) -> list[str]:
        from .world.scenes import STUFF, THINGS

        return list(THINGS + STUFF)

    def _locate(self) -> tuple[Path, Path]:
        instances = self.root / "instances.json"
        if not instances.exists():
            raise DatasetError(f"--root: {instances} not found: is {self.root} a world split (train/ or heldout/)?")
        return instances, self.root / "images"

    def _category_index(self, instances: Path) -> dict[int, int]:
        return {c["id"]: self.classes.index(c["name"]) for c in self.coco.loadCats(self.coco.getCatIds())}


def _first_existing(root: Path, candidates: tuple[str, ...]) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise DatasetError(f"--root: none of {', '.join(candidates)} found under {root}")


DATASETS = Registry("dataset", "--dataset", {cls.name: f"{__name__}:{cls.__name__}" for cls in
                    (ADE150, ADE847, PascalContext59, PascalContext459, PascalVOC, COCOObject, WorldScenes)},
                    error=DatasetError)


def open_dataset(name: str, root: str | Path) -> SegDataset:
    dataset = DATASETS.get(name)
    if not Path(root).expanduser().is_dir():
        raise DatasetError(f"--root: {root} is not a folder")
    return dataset(root)
