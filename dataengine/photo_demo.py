"""The embedded default job: scikit-image's bundled photos with hand-written captions, mined offline
with classical proposals and the tiny seeded CLIP (random weights: the pairs show the machinery,
not a trained model's judgement)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from .config import ConfigError, MineConfig, load_yaml_config

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


def _captions_table() -> str:
    return "".join(json.dumps({"image": f"{name}.png", "captions": captions}) + "\n"
                   for name, captions in DEMO_PHOTOS.items())


def foreign_entries(folder: Path, ours, folders=frozenset()) -> list[str]:
    """What `folder` holds that dataengine did not write, as paths relative to it: every file that
    `ours(name, path)` does not claim, every subfolder not in `folders` (not looked into), and every
    link or other non-regular file (a link would send deletions outside the folder)."""
    theirs = []
    for parent, dirs, files in os.walk(folder):
        base = Path(parent).relative_to(folder)
        for name in list(dirs):
            relative = (base / name).as_posix()
            if (Path(parent) / name).is_symlink() or relative not in folders:
                theirs.append(relative)
                dirs.remove(name)
        for name in files:
            path, relative = Path(parent) / name, (base / name).as_posix()
            if path.is_symlink() or not path.is_file() or not ours(relative, path):
                theirs.append(relative)
    return sorted(theirs)


def check_own_folder(folder: Path, ours, folders=frozenset(), what: str = "the demo") -> None:
    """Refuse a folder that holds anything dataengine did not write (see foreign_entries), before a
    file is touched: after this, the folder is dataengine's to replace. A link or a file in place of
    the folder is refused too."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ConfigError(f"demo: {folder} is not a folder {what} wrote; move it away or choose another --out")
    theirs = foreign_entries(folder, ours, folders) if folder.exists() else []
    if theirs:
        raise ConfigError(f"demo: {folder} holds files {what} did not write ({', '.join(theirs[:3])}"
                          f"{', ...' if len(theirs) > 3 else ''}); move them away or choose another --out")


def check_demo_folder(out: Path) -> None:
    """The demo replaces only what it wrote itself: its input (OUT/input: the photos and their
    captions) and a corpus (the mining run's own rule: only files its run.json names). Anything
    else in the way is refused before a file is touched."""
    folder = out / "input"
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ConfigError(f"demo: {folder} is not the demo's input folder; move it away or choose another --out")
    photos, table = {f"images/{name}.png" for name in DEMO_PHOTOS}, _captions_table().encode()
    check_own_folder(folder, lambda name, path: name in photos or (name == "captions.jsonl" and path.read_bytes() == table),
                     folders={"images"})


def write_demo_input(folder: Path) -> tuple[Path, Path]:
    """Write the photos (PNG, their own modes: RGB, grey, binary, RGBA) and a captions JSONL."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in DEMO_PHOTOS:
        path = images / f"{name}.png"
        if not path.exists():
            Image.fromarray(_load_photo(name)).save(path)
    table = folder / "captions.jsonl"
    table.write_text(_captions_table())
    return images, table


def demo_config(out: str | Path, progress: bool = True) -> MineConfig:
    """pipelines/demo.yaml, pointed at OUT (the demo's input is written to OUT/input)."""
    config = load_yaml_config("demo")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out: {out} is a file, not a folder")
    from .output import OutputFolder

    OutputFolder(out).check_overwrite()
    check_demo_folder(Path(out))
    images, table = write_demo_input(Path(out) / "input")
    config.source.images, config.source.captions = str(images), str(table)
    config.out, config.progress = str(out), progress
    return config


def run_demo(out: str | Path, progress: bool = True) -> dict:
    """Mine the demo into OUT, replacing an earlier demo there (--overwrite's rule: only what
    dataengine wrote is deleted; anything else in the way is refused)."""
    from .pipeline import mine

    return mine(demo_config(out, progress), overwrite=True)
