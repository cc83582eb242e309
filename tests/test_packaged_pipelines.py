"""Every packaged pipeline YAML runs with only the flags of the example in its own header comment.

The example's path flags (--images, --captions, --instances, --dataset, --urls) get small real data
from the COCO sample in their place; the models are swapped for offline ones (the tiny seeded CLIP,
a tiny random Mask2Former for the learned-proposals YAML) and the run is cut to a few images. No
other flag is added, so a YAML that needs more than its example says (a relative instances file,
say) fails here."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
import tarfile
from importlib.resources import files
from pathlib import Path

import pytest
from test_proposals import mask2former_dir  # noqa: F401  (a fixture)

IMAGES = 3
PACKAGED_PIPELINES = Path(str(files("dataengine.pipelines")))
OFFLINE = ["--clip", "dataengine-tiny", "--limit", str(IMAGES), "--max-proposals", "8", "--executor", "local",
           "--no-progress"]
MINED_BY_DEMO = {"demo"}  # `dataengine demo --photos` writes its input and runs it (tests/test_cli.py)


def packaged() -> list[str]:
    return sorted(path.stem for path in PACKAGED_PIPELINES.glob("*.yaml") if path.stem not in MINED_BY_DEMO)


def example_command(name: str) -> list[str]:
    header = [line[1:].strip() for line in (PACKAGED_PIPELINES / f"{name}.yaml").read_text().splitlines()
              if line.startswith("#")]
    example = next(line for line in header if line.startswith("dataengine mine"))
    words = shlex.split(example)
    assert words[words.index("--config") + 1] == name
    return words


def coco_captions(coco_mini: Path) -> list[tuple[str, str]]:
    """(file name, first caption) of the first images of the sample."""
    data = json.loads((coco_mini / "captions.json").read_text())
    first = {}
    for annotation in data["annotations"]:
        first.setdefault(annotation["image_id"], annotation["caption"])
    return [(image["file_name"], first[image["id"]]) for image in data["images"][:IMAGES]]


def folder_table(coco_mini: Path, folder: Path) -> Path:
    path = folder / "captions.jsonl"
    path.write_text("".join(json.dumps({"image": name, "caption": caption}) + "\n"
                            for name, caption in coco_captions(coco_mini)))
    return path


def hf_dataset(coco_mini: Path, folder: Path) -> Path:
    import datasets

    rows = coco_captions(coco_mini)
    table = datasets.Dataset.from_dict({"image": [str(coco_mini / "images" / name) for name, _ in rows],
                                        "caption": [caption for _, caption in rows]})
    table.cast_column("image", datasets.Image()).save_to_disk(str(folder / "hf"))
    return folder / "hf"


def webdataset_tars(coco_mini: Path, folder: Path) -> str:
    for number, (name, caption) in enumerate(coco_captions(coco_mini)):
        with tarfile.open(folder / f"{number:05d}.tar", "w") as tar:
            for suffix, data in ((".jpg", (coco_mini / "images" / name).read_bytes()), (".txt", caption.encode())):
                member = tarfile.TarInfo(f"{Path(name).stem}{suffix}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    return str(folder / f"{{00000..{IMAGES - 1:05d}}}.tar")


@pytest.fixture()
def inputs(coco_mini, tmp_path):
    return {"--images": str(coco_mini / "images"), "--captions": str(coco_mini / "captions.json"),
            "--instances": str(coco_mini / "instances.json")}


@pytest.mark.parametrize("name", packaged())
def test_packaged_pipeline_runs_with_its_example_flags(name, coco_mini, inputs, tmp_path, request):
    words = example_command(name)
    source = words[words.index("--config") + 1]
    if source == "folder_captions":
        inputs["--captions"] = str(folder_table(coco_mini, tmp_path))
    inputs["--dataset"] = str(hf_dataset(coco_mini, tmp_path)) if "--dataset" in words else ""
    inputs["--urls"] = webdataset_tars(coco_mini, tmp_path) if "--urls" in words else ""
    command = [inputs.get(words[i - 1], word) if i and words[i - 1] in inputs else word for i, word in enumerate(words)]
    extra = list(OFFLINE)
    if "maskformer" in name:
        extra += ["--proposals", f"hf:{request.getfixturevalue('mask2former_dir')}"]
    result = subprocess.run([sys.executable, "-m", *command, *extra], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / command[command.index("--out") + 1]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["images"] == IMAGES
    assert counts["images_with_pairs"] + counts["rejected_images"] == IMAGES
