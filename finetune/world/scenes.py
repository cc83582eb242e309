"""A controlled world: procedurally drawn scenes with exact ground truth, in COCO format.

Each scene has one or two "stuff" regions (textured backgrounds: grass, sand, water, wall, sky)
and 1 to 4 "thing" icons from a vocabulary of 24 object nouns, with varied colour, size, position,
rotation and partial occlusion (later objects cover earlier ones); a quarter of the scenes are
close-ups of one object filling much of the frame. Captions come from varied
templates: they mention some objects and the stuff, sometimes with counts and colours, sometimes
with non-visual nouns ("a picture of", "on top of") and sometimes with objects that are not in
the scene, like real captions. Every caption records which of its words refer to which instance.

`generate_world(out, scenes, seed)` writes, for each split (`train`, `heldout`):

    OUT/<split>/images/<id>.jpg
    OUT/<split>/captions.json    COCO captions format
    OUT/<split>/instances.json   COCO instances format (RLE masks; things and stuff, isthing 1/0)
    OUT/<split>/references.json  per caption: [start, end, noun, instance ids or [] if absent]
    OUT/world.json               vocabulary, unseen nouns, seed, counts

The engine reads a split unchanged (`--source coco`). A fixed subset of nouns is "unseen": the
world's captions mention it like any other (the small CLIP learns it from captions), but
ground-truth-label training sets built from the world leave it out (see `world.json`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

THINGS = ("ball", "box", "star", "ring", "cross", "heart", "moon", "arrow", "tree", "house", "car", "cup",
          "kite", "umbrella", "flag", "hat", "fish", "bottle", "leaf", "mushroom", "bell", "lamp", "key", "chair")
STUFF = ("grass", "sand", "water", "wall", "sky")
UNSEEN = ("kite", "bell", "mushroom", "key", "lamp", "fish")  # excluded from ground-truth-label training
COLOURS = {"red": (205, 40, 40), "green": (40, 160, 60), "blue": (45, 70, 210), "yellow": (235, 210, 40),
           "orange": (240, 140, 30), "purple": (140, 60, 180), "white": (245, 245, 245), "black": (25, 25, 25)}
PLURALS = {"box": "boxes", "cross": "crosses", "fish": "fish", "leaf": "leaves"}
NUMBERS = {2: "two", 3: "three", 4: "four"}
CANVAS = 64  # icons are drawn at this size, then rotated and scaled into the scene
CLOSE_UP_SHARE = 0.25


# ---------------------------------------------------------------- icons


def _star_points(points: int = 5, inner: float = 0.4) -> list[tuple[float, float]]:
    corners = []
    for i in range(points * 2):
        radius = 0.48 if i % 2 == 0 else 0.48 * inner
        angle = math.pi * i / points - math.pi / 2
        corners.append((0.5 + radius * math.cos(angle), 0.5 + radius * math.sin(angle)))
    return corners


# Each icon is a list of primitives in drawing order, coordinates as fractions of the canvas:
# (shape, geometry, ink) with ink 255 to draw and 0 to cut a hole; pieslice and chord take angles.
ICONS: dict[str, list[tuple]] = {
    "ball": [("ellipse", (0.05, 0.05, 0.95, 0.95), 255)],
    "box": [("rectangle", (0.1, 0.25, 0.9, 0.9), 255), ("polygon", [(0.1, 0.25), (0.3, 0.08), (0.95, 0.08), (0.9, 0.25)], 255)],
    "star": [("polygon", _star_points(), 255)],
    "ring": [("ellipse", (0.05, 0.05, 0.95, 0.95), 255), ("ellipse", (0.3, 0.3, 0.7, 0.7), 0)],
    "cross": [("rectangle", (0.38, 0.05, 0.62, 0.95), 255), ("rectangle", (0.05, 0.38, 0.95, 0.62), 255)],
    "heart": [("ellipse", (0.05, 0.1, 0.52, 0.55), 255), ("ellipse", (0.48, 0.1, 0.95, 0.55), 255),
              ("polygon", [(0.07, 0.42), (0.93, 0.42), (0.5, 0.95)], 255)],
    "moon": [("ellipse", (0.05, 0.05, 0.95, 0.95), 255), ("ellipse", (0.3, 0.0, 1.1, 0.8), 0)],
    "arrow": [("rectangle", (0.05, 0.4, 0.6, 0.6), 255), ("polygon", [(0.55, 0.15), (0.95, 0.5), (0.55, 0.85)], 255)],
    "tree": [("polygon", [(0.5, 0.02), (0.9, 0.72), (0.1, 0.72)], 255), ("rectangle", (0.42, 0.7, 0.58, 0.98), 255)],
    "house": [("rectangle", (0.15, 0.45, 0.85, 0.95), 255), ("polygon", [(0.05, 0.48), (0.5, 0.08), (0.95, 0.48)], 255),
              ("rectangle", (0.42, 0.7, 0.58, 0.95), 0)],
    "car": [("rectangle", (0.05, 0.45, 0.95, 0.75), 255),
            ("polygon", [(0.25, 0.45), (0.35, 0.22), (0.68, 0.22), (0.78, 0.45)], 255),
            ("ellipse", (0.15, 0.65, 0.37, 0.87), 255), ("ellipse", (0.63, 0.65, 0.85, 0.87), 255)],
    "cup": [("polygon", [(0.15, 0.15), (0.7, 0.15), (0.62, 0.92), (0.23, 0.92)], 255),
            ("ellipse", (0.58, 0.3, 0.95, 0.7), 255), ("ellipse", (0.68, 0.4, 0.85, 0.6), 0)],
    "kite": [("polygon", [(0.5, 0.02), (0.85, 0.4), (0.5, 0.98), (0.15, 0.4)], 255)],
    "umbrella": [("pieslice", (0.05, 0.1, 0.95, 0.9, 180, 360), 255), ("rectangle", (0.47, 0.48, 0.53, 0.92), 255),
                 ("rectangle", (0.3, 0.86, 0.53, 0.92), 255)],
    "flag": [("rectangle", (0.1, 0.05, 0.18, 0.95), 255), ("polygon", [(0.18, 0.07), (0.92, 0.27), (0.18, 0.5)], 255)],
    "hat": [("rectangle", (0.05, 0.68, 0.95, 0.8), 255), ("rectangle", (0.25, 0.2, 0.75, 0.7), 255)],
    "fish": [("ellipse", (0.05, 0.25, 0.7, 0.75), 255), ("polygon", [(0.62, 0.5), (0.95, 0.2), (0.95, 0.8)], 255)],
    "bottle": [("rectangle", (0.3, 0.38, 0.7, 0.95), 255), ("polygon", [(0.3, 0.4), (0.42, 0.22), (0.58, 0.22), (0.7, 0.4)], 255),
               ("rectangle", (0.42, 0.05, 0.58, 0.25), 255)],
    "leaf": [("chord", (0.05, 0.05, 0.95, 1.25, 225, 315), 255), ("chord", (0.05, -0.25, 0.95, 0.95, 45, 135), 255)],
    "mushroom": [("pieslice", (0.05, 0.1, 0.95, 0.9, 180, 360), 255), ("rectangle", (0.38, 0.48, 0.62, 0.95), 255)],
    "bell": [("pieslice", (0.2, 0.05, 0.8, 0.65, 180, 360), 255),
             ("polygon", [(0.2, 0.35), (0.8, 0.35), (0.95, 0.8), (0.05, 0.8)], 255),
             ("ellipse", (0.42, 0.75, 0.58, 0.95), 255)],
    "lamp": [("polygon", [(0.3, 0.05), (0.7, 0.05), (0.9, 0.4), (0.1, 0.4)], 255), ("rectangle", (0.46, 0.4, 0.54, 0.85), 255),
             ("rectangle", (0.25, 0.85, 0.75, 0.95), 255)],
    "key": [("ellipse", (0.05, 0.3, 0.45, 0.7), 255), ("ellipse", (0.17, 0.42, 0.33, 0.58), 0),
            ("rectangle", (0.4, 0.45, 0.95, 0.55), 255), ("rectangle", (0.75, 0.55, 0.82, 0.7), 255),
            ("rectangle", (0.87, 0.55, 0.94, 0.66), 255)],
    "chair": [("rectangle", (0.2, 0.05, 0.32, 0.95), 255), ("rectangle", (0.2, 0.5, 0.8, 0.6), 255),
              ("rectangle", (0.68, 0.5, 0.8, 0.95), 255)],
}


def _draw_icon(draw: ImageDraw.ImageDraw, noun: str) -> None:
    """Draws the noun's silhouette (255 on 0) on a CANVAS x CANVAS mask."""
    for shape, geometry, ink in ICONS[noun]:
        if shape == "polygon":
            draw.polygon([(x * CANVAS, y * CANVAS) for x, y in geometry], fill=ink)
        elif shape in ("pieslice", "chord"):
            *box, start, end = geometry
            getattr(draw, shape)([v * CANVAS for v in box], start, end, fill=ink)
        else:
            getattr(draw, shape)([v * CANVAS for v in geometry], fill=ink)


def icon_mask(noun: str, size: int, angle: float) -> np.ndarray:
    """The noun's silhouette, rotated by `angle` degrees, in a size x size bool array."""
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    _draw_icon(ImageDraw.Draw(canvas), noun)
    rotated = canvas.rotate(angle, resample=Image.BILINEAR, expand=False)
    return np.asarray(rotated.resize((size, size), Image.BILINEAR)) > 127


# ---------------------------------------------------------------- stuff textures


def stuff_texture(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 texture with the stuff's own colour and texture statistics."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = rng.normal(0, 1, (height, width)).astype(np.float32)
    if kind == "grass":
        streaks = np.sin(xx * 1.7 + rng.uniform(0, 6)) * 0.5 + rng.normal(0, 1, (1, width))
        base, amp = np.array([60, 150, 50]), 18 * (0.6 * noise + 0.8 * streaks)[..., None]
    elif kind == "sand":
        base, amp = np.array([215, 190, 135]), 10 * noise[..., None]
    elif kind == "water":
        waves = np.sin(yy * 0.6 + np.sin(xx * 0.15) * 2 + rng.uniform(0, 6))
        base, amp = np.array([40, 100, 185]), (22 * waves + 6 * noise)[..., None]
    elif kind == "wall":
        row = (yy // 10).astype(int)
        mortar = (yy % 10 < 2) | (((xx + (row % 2) * 10) % 20) < 2)
        brick = np.where(mortar[..., None], np.array([190, 185, 175]), np.array([160, 60, 45]))
        return np.clip(brick + 8 * noise[..., None], 0, 255).astype(np.uint8)
    elif kind == "sky":
        gradient = (yy / max(1, height - 1))[..., None]
        return np.clip(np.array([110, 170, 235]) * (1 - 0.3 * gradient) + 60 * gradient + 3 * noise[..., None],
                       0, 255).astype(np.uint8)
    else:
        raise ValueError(f"no texture for {kind!r}")
    return np.clip(base + amp, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- scenes


@dataclass
class Instance:
    id: int
    noun: str
    colour: str | None  # None for stuff
    mask: np.ndarray  # visible part, (H, W) bool

    @property
    def is_thing(self) -> bool:
        return self.colour is not None


@dataclass
class Scene:
    image: np.ndarray
    instances: list[Instance]
    captions: list[str] = field(default_factory=list)
    references: list[list] = field(default_factory=list)  # per caption: [start, end, noun, [instance ids]]


def _stuff_layout(size: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """One stuff region, or two split by a wavy horizon (sky is only ever on top)."""
    if rng.random() < 0.35:
        kind = str(rng.choice([s for s in STUFF if s != "sky"]))
        return [(kind, np.ones((size, size), dtype=bool))]
    top, bottom = rng.choice(["sky", "wall"]), rng.choice(["grass", "sand", "water"])
    yy, xx = np.mgrid[0:size, 0:size]
    horizon = size * rng.uniform(0.3, 0.6) + size * 0.05 * np.sin(xx / size * rng.uniform(2, 6) + rng.uniform(0, 6))
    upper = yy < horizon
    return [(str(top), upper), (str(bottom), ~upper)]


def _stuff_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[Instance]]:
    image = np.zeros((size, size, 3), dtype=np.uint8)
    instances: list[Instance] = []
    for kind, region in _stuff_layout(size, rng):
        image[region] = stuff_texture(kind, size, size, rng)[region]
        instances.append(Instance(len(instances) + 1, kind, None, region.copy()))
    return image, instances


def _close_up(image: np.ndarray, instances: list[Instance], noun: str, rng: np.random.Generator, size: int) -> Scene:
    """One object filling much of the frame, as in close-up photos."""
    _place_thing(image, instances, noun, rng, size, (int(size * 0.55), int(size * 0.9)))
    return Scene(image, [inst for inst in instances if inst.mask.sum() >= 20])


def make_close_up(rng: np.random.Generator, noun: str, size: int = 128) -> Scene:
    """A close-up of `noun` on a stuff background (the competence check's test images)."""
    return _close_up(*_stuff_background(rng, size), noun, rng, size)


def make_scene(rng: np.random.Generator, size: int = 128, close_up_share: float = CLOSE_UP_SHARE,
               stuff_only_share: float = 0.0) -> Scene:
    """A scene of one to four objects on stuff; a close-up with probability `close_up_share`; with
    probability `stuff_only_share` (the pretraining world's texture photos) the stuff alone."""
    image, instances = _stuff_background(rng, size)
    if stuff_only_share and rng.random() < stuff_only_share:
        return Scene(image, instances)
    if rng.random() < close_up_share:
        return _close_up(image, instances, str(rng.choice(THINGS)), rng, size)
    count = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
    nouns = list(rng.choice(THINGS, size=count, replace=True))
    if count >= 3 and rng.random() < 0.4:  # sometimes several of one kind, for counts in captions
        nouns[1] = nouns[0]
    for noun in nouns:
        _place_thing(image, instances, str(noun), rng, size, (size // 5, size // 2))
    instances = [inst for inst in instances if inst.mask.sum() >= 20]  # fully covered ones are gone
    return Scene(image, instances)


def _place_thing(image, instances, noun, rng, size, extent_range: tuple[int, int]) -> None:
    extent = int(rng.integers(*extent_range))
    mask = icon_mask(noun, extent, float(rng.uniform(-35, 35)))
    y0, x0 = (int(v) for v in rng.integers(0, size - extent, 2))
    full = np.zeros((size, size), dtype=bool)
    full[y0 : y0 + extent, x0 : x0 + extent] = mask
    colour = str(rng.choice(list(COLOURS)))
    shade = np.clip(np.array(COLOURS[colour]) + rng.integers(-15, 16, 3), 0, 255)
    image[full] = shade
    for other in instances:  # the new object occludes what is under it
        other.mask &= ~full
    instances.append(Instance(len(instances) + 1, noun, colour, full))


# ---------------------------------------------------------------- captions


def _plural(noun: str) -> str:
    return PLURALS.get(noun, noun + "s")


class CaptionWriter:
    """Builds a caption piece by piece, recording where each noun is and what it refers to."""

    def __init__(self):
        self.text = ""
        self.references: list[list] = []

    def add(self, words: str) -> CaptionWriter:
        self.text += words
        return self

    def noun(self, word: str, noun: str, instance_ids: list[int]) -> CaptionWriter:
        self.references.append([len(self.text), len(self.text) + len(word), noun, instance_ids])
        self.text += word
        return self


def _thing_phrase(writer: CaptionWriter, noun: str, ids: list[int], adjective: str | None, rng) -> None:
    """"a [adjective] noun" (the adjective 60% of the time) or "two nouns" for several instances."""
    if len(ids) > 1:
        writer.add(f"{NUMBERS.get(len(ids), 'some')} ").noun(_plural(noun), noun, ids)
        return
    adjective = f"{adjective} " if adjective is not None and rng.random() < 0.6 else ""
    article = "an" if (adjective or noun)[0] in "aeiou" else "a"
    writer.add(f"{article} {adjective}").noun(noun, noun, ids)


def size_word(instance: Instance) -> str:
    """small, medium or large, by the object's visible extent against the frame."""
    ys, xs = np.nonzero(instance.mask)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    share = extent / instance.mask.shape[0]
    return "small" if share < 0.3 else "medium" if share < 0.5 else "large"


# Alt-text frames around the objects: web alt-text is phrased every which way ("a photo of ...",
# "there is ... in the scene"), and a CLIP is queried with such prompts; a text tower that only ever
# saw "a star" does not know what "There is a large star in the scene" means.
ALT_TEXT_FRAMES = (("", ""), ("", ""), ("a photo of ", ""), ("a picture of ", ""), ("an image of ", ""),
                   ("this is a photo of ", ""), ("there is ", ""), ("there is ", " in the scene"),
                   ("a photo of ", " in the scene"), ("", " in the scene"))


def _things_by_noun(scene: Scene) -> dict[str, list[Instance]]:
    things: dict[str, list[Instance]] = {}
    for inst in scene.instances:
        if inst.is_thing:
            things.setdefault(inst.noun, []).append(inst)
    return things


# Before a stuff noun in alt-text: the zero-shot templates put "a" before every noun ("a photo of a sky").
STUFF_ARTICLES = ("", "the ", "a ")


def write_terse_caption(scene: Scene, rng: np.random.Generator, stuff_share: float = 0.0) -> tuple[str, list[list]]:
    """Alt-text style: every object of the scene named once (with its count, sometimes its size),
    in one of the ALT_TEXT_FRAMES, and no colour. With probability `stuff_share`, and always in a
    scene without objects, one of its stuff regions is named too (last); otherwise no stuff."""
    mentioned = list(_things_by_noun(scene).items())
    rng.shuffle(mentioned)
    opening, closing = ALT_TEXT_FRAMES[int(rng.integers(len(ALT_TEXT_FRAMES)))]
    writer = CaptionWriter().add(opening)
    for index, (noun, insts) in enumerate(mentioned):
        if index:
            writer.add(" and ")
        _thing_phrase(writer, noun, [i.id for i in insts], size_word(insts[0]), rng)
    stuff = [inst for inst in scene.instances if not inst.is_thing]
    if stuff and stuff_share and (not mentioned or rng.random() < stuff_share):
        region = stuff[int(rng.integers(len(stuff)))]
        writer.add(" and " if mentioned else "").add(str(rng.choice(STUFF_ARTICLES)))
        writer.noun(region.noun, region.noun, [region.id])
    return writer.add(closing).text, writer.references


def write_caption(scene: Scene, rng: np.random.Generator, terse_share: float = 0.0,
                  alt_text_stuff_share: float = 0.0) -> tuple[str, list[list]]:
    """A descriptive caption (objects, colours, counts, the stuff, sometimes an absent object); with
    probability `terse_share`, and when the scene has objects (or alt-text may name stuff), an
    alt-text style one instead (`write_terse_caption`, naming the stuff at `alt_text_stuff_share`)."""
    things = _things_by_noun(scene)
    if terse_share and (things or alt_text_stuff_share) and rng.random() < terse_share:
        return write_terse_caption(scene, rng, alt_text_stuff_share)
    stuff = [inst for inst in scene.instances if not inst.is_thing]
    writer = CaptionWriter()
    opening = rng.choice(["", "a picture of ", "a photo of ", "an image showing ", "there is "])
    writer.add(str(opening))
    mentioned = list(things.items())
    rng.shuffle(mentioned)
    mentioned = mentioned[: int(rng.integers(1, len(mentioned) + 1))] if mentioned else []
    for index, (noun, insts) in enumerate(mentioned):
        if index:
            writer.add(str(rng.choice([" and ", " next to ", " near ", " with "])))
        colour = insts[0].colour if len(insts) == 1 else None
        _thing_phrase(writer, noun, [i.id for i in insts], colour, rng)
    if rng.random() < 0.2:  # like real captions: an object that is not there
        absent = str(rng.choice([n for n in THINGS if n not in things]))
        article = "an" if absent[0] in "aeiou" else "a"
        writer.add(f" and {article} " if mentioned else f"{article} ").noun(absent, absent, [])
    if stuff and rng.random() < 0.8:
        region = stuff[int(rng.integers(len(stuff)))]
        relation = str(rng.choice([" on the ", " on top of the ", " in front of the ", " by the ", " in the middle of the "]))
        writer.add(relation).noun(region.noun, region.noun, [region.id])
    if not writer.references:
        writer.add("an empty scene with ").noun(stuff[0].noun, stuff[0].noun, [stuff[0].id])
    return writer.text, writer.references


# ---------------------------------------------------------------- files


CATEGORIES = [{"id": i + 1, "name": n, "supercategory": "thing", "isthing": 1} for i, n in enumerate(THINGS)] + [
    {"id": len(THINGS) + i + 1, "name": n, "supercategory": "stuff", "isthing": 0} for i, n in enumerate(STUFF)]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _write_split(folder: Path, scenes: list[tuple[int, Scene]]) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, captions, annotations, references = [], [], [], {}
    for image_id, scene in scenes:
        name = f"{image_id:06d}.jpg"
        Image.fromarray(scene.image).save(folder / "images" / name, quality=95)
        height, width = scene.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for index, (text, refs) in enumerate(zip(scene.captions, scene.references, strict=True)):
            caption_id = image_id * 10 + index
            captions.append({"id": caption_id, "image_id": image_id, "caption": text})
            references[str(caption_id)] = [[s, e, n, [image_id * 100 + i for i in ids]] for s, e, n, ids in refs]
        for inst in scene.instances:
            ys, xs = np.nonzero(inst.mask)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            annotations.append({"id": image_id * 100 + inst.id, "image_id": image_id, "category_id": CATEGORY_ID[inst.noun],
                                "segmentation": _rle(inst.mask), "area": int(inst.mask.sum()), "bbox": bbox,
                                "iscrowd": 0, "colour": inst.colour})
    info = {"description": "dataengine controlled world"}
    (folder / "captions.json").write_text(json.dumps({"info": info, "images": images, "annotations": captions}))
    (folder / "instances.json").write_text(json.dumps({"info": info, "images": images, "annotations": annotations,
                                                       "categories": CATEGORIES}))
    (folder / "references.json").write_text(json.dumps(references))


def generate_world(out: str | Path, scenes: int = 400, seed: int = 0, size: int = 128, heldout: float = 0.2,
                   captions_per_scene: int = 3, close_up_share: float = CLOSE_UP_SHARE, terse_share: float = 0.0,
                   stuff_only_share: float = 0.0, alt_text_stuff_share: float = 0.0) -> dict:
    """Generates `scenes` scenes (a `heldout` share of them in their own split). Same seed, same bytes.
    `close_up_share` of the scenes are close-ups; `terse_share` of the captions of scenes with objects
    are alt-text style (the objects only): the small CLIP's pretraining world uses more of both, and
    may add scenes of stuff alone (`stuff_only_share`) and alt-text that names the stuff too
    (`alt_text_stuff_share`). At 0, the last two draw nothing: mining worlds stay as they were."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    generated = []
    for index in range(scenes):
        scene = make_scene(rng, size, close_up_share, stuff_only_share)
        for _ in range(captions_per_scene):
            text, refs = write_caption(scene, rng, terse_share, alt_text_stuff_share)
            scene.captions.append(text)
            scene.references.append(refs)
        generated.append((index + 1, scene))
    cut = scenes - int(round(scenes * heldout))
    _write_split(out / "train", generated[:cut])
    _write_split(out / "heldout", generated[cut:])
    meta = {"seed": seed, "size": size, "scenes": {"train": cut, "heldout": scenes - cut}, "things": list(THINGS),
            "stuff": list(STUFF), "unseen": list(UNSEEN), "captions_per_scene": captions_per_scene,
            "close_up_share": close_up_share, "terse_share": terse_share, "stuff_only_share": stuff_only_share,
            "alt_text_stuff_share": alt_text_stuff_share}
    (out / "world.json").write_text(json.dumps(meta, indent=2))
    return meta
