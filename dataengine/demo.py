"""The embedded default job: scikit-image's bundled photos with hand-written captions, mined offline
with classical proposals and the tiny seeded CLIP (random weights: the pairs show the machinery,
not a trained model's judgement)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .config import MineConfig, load_yaml_config

# (scikit-image loader, captions) for photos that ship inside scikit-image (no download).
DEMO_PHOTOS = {
    "astronaut": ["An astronaut in a white space suit poses in front of an American flag.",
                  "A smiling woman astronaut holding a helmet."],
    "coffee": ["A cup of coffee with latte art on a saucer with a spoon.",
               "A white coffee cup sits on a red table."],
    "chelsea": ["A tabby cat looks at the camera.", "A close view of a cat with green eyes and whiskers."],
    "rocket": ["A rocket stands on the launch pad under a blue sky.", "A tall rocket next to a launch tower."],
    "camera": ["A man with a camera on a tripod stands in a field.", "A black and white photo of a photographer."],
    "coins": ["Old coins arranged in rows on a table.", "A grey picture of many coins."],
    "horse": ["The silhouette of a horse.", "A black horse shape on a white background."],
    "hubble_deep_field": ["Galaxies and stars in deep space.", "A telescope image of many galaxies."],
    "motorcycle": ["A red motorcycle parked in a garage next to a wall.", "A motorbike with a helmet on the seat."],
    "page": ["A page of printed text.", "An old book page with words."],
    "immunohistochemistry": ["A microscope view of stained tissue with cells.", "Brown and blue cells in a tissue sample."],
    "brick": ["A brick wall.", ""],
    "grass": ["Green grass in a field.", "A close photo of grass."],
    "logo": ["A snake logo with the letters of a word.", ""],
    "clock": ["A clock on a wall, blurred by motion.", "An analog clock with hands."],
    "text": ["Text written on a sign.", ""],
    "moon": ["The surface of the moon with craters.", "A grey picture of the moon."],
    "gravel": ["Gravel and small stones on the ground.", "A pile of gravel."],
}


def _load_photo(name: str):
    from skimage import data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


def write_demo_input(folder: Path) -> tuple[Path, Path]:
    """Write the photos (PNG, their own modes: RGB, grey, binary, RGBA) and a captions JSONL."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, captions in DEMO_PHOTOS.items():
        path = images / f"{name}.png"
        if not path.exists():
            Image.fromarray(_load_photo(name)).save(path)
        rows.append({"image": path.name, "captions": captions})
    table = folder / "captions.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return images, table


def demo_config(out: str | Path, progress: bool = True) -> MineConfig:
    """pipelines/demo.yaml, pointed at OUT (the demo's input is written to OUT/input)."""
    config = load_yaml_config("demo")
    images, table = write_demo_input(Path(out) / "input")
    config.source.images, config.source.captions = str(images), str(table)
    config.out, config.progress = str(out), progress
    return config


def run_demo(out: str | Path, progress: bool = True) -> dict:
    from .pipeline import mine

    return mine(demo_config(out, progress), overwrite=True)
