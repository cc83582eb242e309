"""Every source over one fixture of odd and hostile inputs, mined end to end through the CLI.

For each source (coco, folder JSONL / CSV / parquet, webdataset, hf) the run must finish and account
for every input exactly: input images = images with pairs + image-level reject rows, every reject has
a listed reason, and nothing is written outside --out. Bad flags exit 2 with one line."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataengine.cli import main
from dataengine.reasons import IMAGE_LEVEL, REASON_NAMES

RUN_FLAGS = ["--clip", "dataengine-tiny", "--executor", "local", "--proposals", "classical", "--max-proposals", "4",
             "--set", "proposals.classical.work_size=64", "--samples-per-shard", "8", "--no-progress"]
CAPTIONS = ["", "   \t ", "a dog " * 17000, "a 🐶 dog and a \u202ecat\u202c on the גג roof", "a dog\x00 on a mat",
            "<b>A red car</b> &amp; a tree", "a the of", "a small boat in the water"]


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def picture(size=(48, 40), mode="RGB") -> Image.Image:
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[: size[1] // 2, : size[0] // 3] = (220, 40, 40)
    array[size[1] // 2 :, size[0] // 3 :] = (40, 80, 200)
    return Image.fromarray(array).convert(mode)


def bomb_png(side: int = 9400) -> bytes:
    """A 1-bit PNG of side x side pixels in a few KB: a decompression bomb under max_pixels."""
    return encoded(Image.new("1", (side, side)), "PNG", optimize=True)


def odd_images() -> dict[str, bytes]:
    """File name -> bytes of every odd image the issue lists (symlinks and folders are added per source)."""
    good = encoded(picture(), "JPEG")
    frames = [picture(), picture((48, 40)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    palette = picture(mode="RGBA").convert("P")
    palette.info["transparency"] = 0
    return {
        "good.jpg": good,
        "zero.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "garbage.jpg": os.urandom(512),
        "bomb.png": bomb_png(),
        "cmyk.jpg": encoded(picture(mode="CMYK"), "JPEG"),
        "deep.png": encoded(Image.fromarray(np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30), "PNG"),
        "palette.png": encoded(palette, "PNG"),
        "animated.gif": animated.getvalue(),
        "image.webp": encoded(picture(), "WEBP"),
        "rotated.jpg": encoded(picture(), "JPEG", exif=exif.tobytes()),
        "one.png": encoded(picture((1, 1)), "PNG"),
        "wide.jpg": encoded(picture((5000, 100)), "JPEG"),
    }


def write_image_folder(folder: Path) -> list[str]:
    """The odd images plus a symlink to one of them and a directory named like an image."""
    folder.mkdir(parents=True)
    for name, data in odd_images().items():
        (folder / name).write_bytes(data)
    (folder / "link.jpg").symlink_to(folder / "good.jpg")
    (folder / "folder.jpg").mkdir()
    return sorted(os.listdir(folder))


def caption_for(number: int) -> str:
    return CAPTIONS[number % len(CAPTIONS)]


def snapshot(root: Path, skip: Path) -> set[str]:
    return {str(path) for path in root.rglob("*") if skip not in path.parents and path != skip}


def mine(argv: list[str], out: Path, capsys) -> tuple[dict, list[dict], list[dict]]:
    code = main(["mine", *argv, "--out", str(out), *RUN_FLAGS])
    error = capsys.readouterr().err
    assert code == 0, error[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    pairs = [row for path in sorted((out / "index").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    rejects = [row for path in sorted((out / "rejects").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    return manifest, pairs, rejects


def assert_accounted(manifest: dict, pairs: list[dict], rejects: list[dict], inputs: int) -> None:
    image_rejects = [row for row in rejects if row["level"] == IMAGE_LEVEL]
    with_pairs = {row["image_key"] for row in pairs}
    rejected = [row["image_key"] for row in image_rejects]
    assert len(rejected) == len(set(rejected)), "an image rejected twice"
    assert not with_pairs & set(rejected), "an image both paired and rejected"
    assert len(with_pairs) + len(rejected) == inputs == manifest["counts"]["images"]
    assert manifest["counts"]["images_with_pairs"] + manifest["counts"]["rejected_images"] == inputs
    for row in rejects:
        assert row["reason"] in REASON_NAMES and row["detail"] is not None, row


def run_and_check(argv: list[str], tmp_path: Path, inputs: int, capsys) -> tuple[list[dict], list[dict]]:
    out = tmp_path / "out"
    before = snapshot(tmp_path.parent, out)
    manifest, pairs, rejects = mine(argv, out, capsys)
    assert snapshot(tmp_path.parent, out) == before, "something was written outside --out"
    assert_accounted(manifest, pairs, rejects, inputs)
    return pairs, rejects


def reasons_of(rejects: list[dict]) -> dict[str, str]:
    return {row["image_key"]: row["reason"] for row in rejects if row["level"] == IMAGE_LEVEL}


# ------------------------------------------------------------------------------------ sources


def test_coco_source(tmp_path, capsys):
    names = write_image_folder(tmp_path / "images")
    images = [{"id": number + 1, "file_name": name} for number, name in enumerate(names)]
    images += [{"id": 1, "file_name": "good.jpg"},  # a duplicate id
               {"id": 900, "file_name": "../outside.jpg"}, {"id": 901, "file_name": "/etc/hostname"}]
    (tmp_path / "outside.jpg").write_bytes(odd_images()["good.jpg"])
    captions = [{"id": number, "image_id": image["id"], "caption": caption_for(number)}
                for number, image in enumerate(images)]
    captions += [{"id": 999, "image_id": 12345, "caption": "a caption of an unknown image"},
                 {"id": 1000, "image_id": 2, "caption": 42}]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": captions}))
    _, rejects = run_and_check(["--source", "coco", "--images", str(tmp_path / "images"),
                                "--captions", str(tmp_path / "captions.json")], tmp_path, len(images), capsys)
    assert "source_error" in reasons_of(rejects).values()


def table_rows(names: list[str]) -> list[dict]:
    rows = [{"image": name, "caption": caption_for(number)} for number, name in enumerate(names)]
    return rows + [{"image": "../outside.jpg", "caption": "a dog"}, {"image": "missing.jpg", "caption": "a cat"}]


def test_folder_jsonl_source(tmp_path, capsys):
    rows = table_rows(write_image_folder(tmp_path / "images"))
    lines = [json.dumps(row) for row in rows] + ['{"image": "good.jpg", "caption": ', json.dumps({"image": "good.jpg", "caption": 42}),
                                                 "[1, 2]", "\x00\x01"]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    _, rejects = run_and_check(["--source", "folder", "--images", str(tmp_path / "images"),
                                "--captions", str(tmp_path / "captions.jsonl")], tmp_path, len(lines), capsys)
    assert list(reasons_of(rejects).values()).count("source_error") >= 4


def test_folder_csv_source(tmp_path, capsys):
    rows = table_rows(write_image_folder(tmp_path / "images"))
    with (tmp_path / "captions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows([[row["image"], row["caption"].replace("\x00", "")] for row in rows])
        handle.write("good.jpg\n")  # a row with a missing column
        handle.write("good.jpg,a dog,a third field\n")
    _, rejects = run_and_check(["--source", "folder", "--images", str(tmp_path / "images"),
                                "--captions", str(tmp_path / "captions.csv")], tmp_path, len(rows) + 2, capsys)
    assert "source_error" in reasons_of(rejects).values()


def test_folder_parquet_source(tmp_path, capsys):
    rows = table_rows(write_image_folder(tmp_path / "images"))
    pq.write_table(pa.table({"image": [row["image"] for row in rows], "caption": [row["caption"] for row in rows]}),
                   tmp_path / "captions.parquet")
    run_and_check(["--source", "folder", "--images", str(tmp_path / "images"),
                   "--captions", str(tmp_path / "captions.parquet")], tmp_path, len(rows), capsys)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def complete_keys(data: bytes) -> set[str]:
    """Keys of the members that are whole in a (possibly cut) tar."""
    keys = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for member in tar:
                if len(tar.extractfile(member).read()) == member.size:
                    keys.add(member.name.split(".", 1)[0])
    except (tarfile.ReadError, EOFError):
        pass
    return keys


def test_webdataset_source(tmp_path, capsys):
    members, keys = [], []
    for number, (name, data) in enumerate(odd_images().items()):
        key = f"s{number:03d}"
        members += [(f"{key}.{name.rsplit('.', 1)[1]}", data), (f"{key}.txt", caption_for(number).encode())]
        keys.append(key)
    members += [("../escape.jpg", odd_images()["good.jpg"]), ("../escape.txt", b"a dog"),
                ("/abs.jpg", odd_images()["good.jpg"]), ("/abs.txt", b"a cat"),
                ("k" * 200 + ".jpg", odd_images()["good.jpg"]), ("k" * 200 + ".txt", b"a long key"),
                ("meta.jpg", odd_images()["good.jpg"]), ("meta.json", b"{not json")]
    shards = tmp_path / "shards"
    shards.mkdir()
    full = tar_bytes(members)
    (shards / "00000.tar").write_bytes(full)
    (shards / "00001.tar").write_bytes(full[: len(full) // 3])  # truncated
    (shards / "00002.tar").write_bytes(b"")                     # empty
    (shards / "00003.tar").write_bytes(gzip.compress(tar_bytes(members[:4])))  # gzip-compressed, named .tar
    (shards / "00004.tar").write_bytes(b"this is not a tar file at all" * 40)
    out = tmp_path / "out"
    before = snapshot(tmp_path.parent, out)
    manifest, pairs, rejects = mine(["--source", "webdataset", "--urls", str(shards / "{00000..00004}.tar")], out, capsys)
    assert snapshot(tmp_path.parent, out) == before, "something was written outside --out"
    assert_accounted(manifest, pairs, rejects, manifest["counts"]["images"])
    intact = len({name.split(".", 1)[0] for name, _ in members})
    before_the_cut = len(complete_keys(full[: len(full) // 3]))
    # each sample of a readable tar is an input; each unreadable tar (or its cut) one more row
    assert manifest["counts"]["images"] == intact + (before_the_cut + 1) + 1 + 2 + 1
    assert list(reasons_of(rejects).values()).count("duplicate_key") == before_the_cut + 2
    details = " ".join(row["detail"] for row in rejects)
    for broken in ("00001.tar", "00002.tar", "00004.tar"):
        assert broken in details, f"{broken} is not accounted for"
    assert "bad_metadata" in reasons_of(rejects).values()


def test_hf_source(tmp_path, capsys):
    import datasets

    images = odd_images()
    table = datasets.Dataset.from_dict({
        "image": [{"bytes": data, "path": None} for data in images.values()],
        "caption": [caption_for(number) for number in range(len(images))]})
    table.cast_column("image", datasets.Image(decode=False)).save_to_disk(str(tmp_path / "hf"))
    run_and_check(["--source", "hf", "--dataset", str(tmp_path / "hf")], tmp_path, len(images), capsys)


# ------------------------------------------------------------------------------------ flags


@pytest.mark.parametrize("flags", [
    ["--limit", "-1"], ["--max-proposals", "0"], ["--min-score", "5"], ["--samples-per-shard", "0"],
    ["--images-per-batch", "0"], ["--workers", "0"], ["--actor-gpus", "-1"], ["--device", "tpu"],
    ["--clip", "no-such-model"], ["--proposals", "nope"], ["--set", "no.such.key=1"], ["--set", "novalue"],
    ["--ray-temp-dir", "/tmp/" + "x" * 120],
])
def test_bad_flags_exit_2_with_one_line(flags, tmp_path, capsys):
    write_image_folder(tmp_path / "images")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": "good.jpg", "caption": "a dog"}) + "\n")
    code = main(["mine", "--source", "folder", "--images", str(tmp_path / "images"), "--captions",
                 str(tmp_path / "captions.jsonl"), "--out", str(tmp_path / "out"), "--no-progress", *flags])
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert not (tmp_path / "out" / "shards").exists()
