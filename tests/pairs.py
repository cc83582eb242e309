"""Small synthetic pair shards (jpg + mask.png + txt, as the engine writes them) for finetune tests:
each pair is a coloured shape on the CLIP-mean background, its mask, and the shape's name."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

FILL = (123, 117, 104)
SHAPES = {"square": (220, 40, 40), "circle": (40, 200, 60), "triangle": (40, 60, 220), "bar": (230, 200, 30)}


def _pair(noun: str, rng: np.random.Generator, size: int) -> tuple[bytes, bytes]:
    image = Image.new("RGB", (size, size), FILL)
    mask = Image.new("L", (size, size), 0)
    low, high = sorted(rng.integers(size // 8, size - size // 8, 2))
    high = max(high, low + size // 3)
    box = (int(low), int(low), int(high), int(high))
    for canvas, colour in ((ImageDraw.Draw(image), SHAPES[noun]), (ImageDraw.Draw(mask), 255)):
        if noun == "circle":
            canvas.ellipse(box, fill=colour)
        elif noun == "triangle":
            canvas.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
        elif noun == "bar":
            canvas.rectangle((box[0], box[1], box[2], (box[1] + box[3]) // 2), fill=colour)
        else:
            canvas.rectangle(box, fill=colour)
    jpg, png = io.BytesIO(), io.BytesIO()
    image.save(jpg, format="JPEG", quality=95)
    mask.save(png, format="PNG")
    return jpg.getvalue(), png.getvalue()


def write_pair_shards(folder: Path, pairs: int = 48, per_shard: int = 16, seed: int = 0, size: int = 224,
                      with_masks: bool = True, nouns: list[str] | None = None) -> str:
    """Writes folder/pairs-%06d.tar; returns a brace pattern of them. Pair i's noun is
    nouns[i % len(nouns)] (default: the shapes in turn)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    nouns = nouns or list(SHAPES)
    with wds.ShardWriter(str(folder / "pairs-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for index in range(pairs):
            noun = nouns[index % len(nouns)]
            jpg, png = _pair(noun, rng, size)
            sample = {"__key__": f"img{index:05d}_n0000", "jpg": jpg, "txt": noun}
            if with_masks:
                sample["mask.png"] = png
            sink.write(sample)
    last = (pairs - 1) // per_shard
    return str(folder / f"pairs-{{000000..{last:06d}}}.tar")
