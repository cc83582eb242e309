"""The four input sources (coco, folder, webdataset, hf) on tiny data written in tmp_path."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import write_image

from dataengine.config import ConfigError, SourceConfig
from dataengine.images import ImageRejected, load_sample_image, read_image_bytes
from dataengine.sources import create_source

KEY = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_PIXELS = 10**7
COLOURS = [(220, 20, 20), (20, 200, 40), (30, 40, 210)]
CAPTIONS = [
    ["A red square on a blue wall.", "A blue wall with a red patch."],
    ["A green block in the sky."],
    ["A dark blue tile.", "Blue on blue.", "A square of navy."],
]


def make_images(folder: Path, fmt: str = "jpg") -> list[Path]:
    """Three small images of different sizes and square colours: image{i}.{fmt}."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_image(folder / f"image{i}.{fmt}", size=(32 + 8 * i, 24 + 4 * i), color=colour)
            for i, colour in enumerate(COLOURS)]


def decode(sample) -> np.ndarray:
    return load_sample_image(sample.image_path, sample.image_bytes, MAX_PIXELS, sample.image_range)


def texts(sample) -> list[str]:
    return [caption.text for caption in sample.captions]


def assert_keys_safe(samples) -> None:
    for sample in samples:
        assert KEY.match(sample.key), sample.key


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ======================================================================= coco


def write_coco(tmp_path: Path, with_instances: bool = True) -> SourceConfig:
    paths = make_images(tmp_path / "images")
    ids = [30, 7, 12]  # listed out of id order on purpose
    images = [{"id": image_id, "file_name": path.name, "width": 1, "height": 1} for image_id, path in zip(ids, paths, strict=True)]
    annotations = [
        {"id": 105, "image_id": 30, "caption": "thirty, second"},
        {"id": 11, "image_id": 7, "caption": "seven, only"},
        {"id": 101, "image_id": 30, "caption": "thirty, first"},
        # image 12 has no caption
    ]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    config = SourceConfig(type="coco", images=str(tmp_path / "images"), captions=str(tmp_path / "captions.json"))
    if with_instances:
        instances = [
            {"id": 3, "image_id": 30, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0,
             "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
            {"id": 1, "image_id": 30, "category_id": 2, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0,
             "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]},
            {"id": 2, "image_id": 12, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0,
             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},
        ]
        (tmp_path / "instances.json").write_text(json.dumps({"annotations": instances, "categories": []}))
        config.instances = str(tmp_path / "instances.json")
    return config


def test_coco_orders_by_image_id_and_groups_captions(tmp_path):
    source = create_source(write_coco(tmp_path))
    samples = list(source)
    assert len(source) == 3
    assert [s.image_id for s in samples] == ["7", "12", "30"]
    assert [s.key for s in samples] == ["000000000007", "000000000012", "000000000030"]
    assert_keys_safe(samples)
    by_id = {s.image_id: s for s in samples}
    assert texts(by_id["7"]) == ["seven, only"]
    assert texts(by_id["30"]) == ["thirty, first", "thirty, second"]  # grouped, in annotation id order
    assert [c.id for c in by_id["30"].captions] == ["101", "105"]
    assert by_id["12"].captions == []  # no captions: still a sample
    assert by_id["30"].image_path == str(tmp_path / "images" / "image0.jpg")
    assert by_id["7"].image_path == str(tmp_path / "images" / "image1.jpg")
    assert all(s.image_bytes is None and s.alive for s in samples)


def test_coco_attaches_instances(tmp_path):
    samples = {s.image_id: s for s in create_source(write_coco(tmp_path))}
    assert [a["id"] for a in samples["30"].annotations] == [1, 3]
    assert samples["30"].annotations[0]["bbox"] == [1, 1, 2, 2]
    assert [a["id"] for a in samples["12"].annotations] == [2]
    assert samples["7"].annotations == []  # instances given, none for this image


def test_coco_without_instances_has_no_annotations(tmp_path):
    samples = list(create_source(write_coco(tmp_path, with_instances=False)))
    assert all(s.annotations is None for s in samples)


def test_coco_is_deterministic_and_images_decode(tmp_path):
    config = write_coco(tmp_path)
    first = [(s.key, texts(s)) for s in create_source(config)]
    second = [(s.key, texts(s)) for s in create_source(config)]
    assert first == second
    for sample in create_source(config):
        image = decode(sample)
        assert image.ndim == 3 and image.shape[2] == 3


def test_coco_bad_paths_are_config_errors(tmp_path):
    config = write_coco(tmp_path)
    with pytest.raises(ConfigError, match="--images"):
        create_source(SourceConfig(type="coco", images=str(tmp_path / "nope"), captions=config.captions))
    with pytest.raises(ConfigError, match="--captions"):
        create_source(SourceConfig(type="coco", images=config.images, captions=str(tmp_path / "nope.json")))
    with pytest.raises(ConfigError, match="--instances"):
        create_source(SourceConfig(type="coco", images=config.images, captions=config.captions,
                                   instances=str(tmp_path / "nope.json")))
    with pytest.raises(ConfigError, match="--captions: required"):
        create_source(SourceConfig(type="coco", images=config.images))
    with pytest.raises(ConfigError, match="--images: required"):
        create_source(SourceConfig(type="coco", captions=config.captions))


def test_coco_invalid_or_empty_captions_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        create_source(SourceConfig(type="coco", images=str(tmp_path / "images"), captions=str(tmp_path / "broken.json")))
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ConfigError, match="lists no images"):
        create_source(SourceConfig(type="coco", images=str(tmp_path / "images"), captions=str(tmp_path / "empty.json")))


def test_unknown_source_type():
    with pytest.raises(ConfigError, match="unknown source 'bogus'"):
        create_source(SourceConfig(type="bogus"))


def test_coco_string_image_ids_give_safe_keys(tmp_path):
    make_images(tmp_path / "images")
    captions = {"images": [{"id": "train/0001.jpg", "file_name": "image0.jpg"}],
                "annotations": [{"id": 1, "image_id": "train/0001.jpg", "caption": "a dog"}]}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    samples = list(create_source(SourceConfig(type="coco", images=str(tmp_path / "images"),
                                              captions=str(tmp_path / "captions.json"))))
    assert texts(samples[0]) == ["a dog"]
    assert_keys_safe(samples)


# ======================================================================= folder


def folder_config(tmp_path: Path, table: Path, **kwargs) -> SourceConfig:
    return SourceConfig(type="folder", images=str(tmp_path / "images"), captions=str(table), **kwargs)


def test_folder_jsonl_single_caption_rows_grouped_by_image(tmp_path):
    make_images(tmp_path / "images")
    table = write_jsonl(tmp_path / "captions.jsonl", [
        {"image": "image1.jpg", "caption": "green one"},
        {"image": "image0.jpg", "caption": "red one"},
        {"image": "image1.jpg", "caption": "green two"},
        {"image": "image2.jpg", "caption": "blue one"},
        {"image": "image0.jpg", "caption": "red two"},
    ])
    source = create_source(folder_config(tmp_path, table))
    samples = list(source)
    assert len(source) == 3
    assert [s.image_id for s in samples] == ["image1.jpg", "image0.jpg", "image2.jpg"]  # first-appearance order
    assert [s.key for s in samples] == ["image1", "image0", "image2"]
    assert_keys_safe(samples)
    assert texts(samples[0]) == ["green one", "green two"]
    assert texts(samples[1]) == ["red one", "red two"]
    assert texts(samples[2]) == ["blue one"]
    assert [c.id for c in samples[0].captions] == ["0", "2"]  # caption ids are the table rows
    assert samples[1].image_path == str(tmp_path / "images" / "image0.jpg")
    np.testing.assert_allclose(decode(samples[1])[9, 12], COLOURS[0], atol=12)  # inside the square


def test_folder_jsonl_list_of_captions_column(tmp_path):
    make_images(tmp_path / "images")
    rows = [{"image_path": f"image{i}.jpg", "captions": captions} for i, captions in enumerate(CAPTIONS)]
    rows.append({"image_path": "image0.jpg", "captions": ["one more red"]})
    samples = list(create_source(folder_config(tmp_path, write_jsonl(tmp_path / "c.jsonl", rows))))
    assert [texts(s) for s in samples] == [CAPTIONS[0] + ["one more red"], CAPTIONS[1], CAPTIONS[2]]
    ids = [c.id for s in samples for c in s.captions]
    assert len(ids) == len(set(ids))  # caption ids are unique
    assert [c.id for c in samples[0].captions] == ["0-0", "0-1", "3"]


def test_folder_csv_with_autodetected_columns(tmp_path):
    make_images(tmp_path / "images")
    table = tmp_path / "captions.csv"
    table.write_text("file_name,text,other\nimage2.jpg,\"blue, with a comma\",x\nimage0.jpg,red,y\n"
                     "image2.jpg,blue again,z\n")
    samples = list(create_source(folder_config(tmp_path, table)))
    assert [s.image_id for s in samples] == ["image2.jpg", "image0.jpg"]
    assert texts(samples[0]) == ["blue, with a comma", "blue again"]
    assert texts(samples[1]) == ["red"]


def test_folder_parquet_single_and_list_columns(tmp_path):
    make_images(tmp_path / "images")
    single = write_parquet(tmp_path / "single.parquet",
                           [{"path": f"image{i}.jpg", "caption": c[0]} for i, c in enumerate(CAPTIONS)])
    assert [texts(s) for s in create_source(folder_config(tmp_path, single))] == [[c[0]] for c in CAPTIONS]
    listed = write_parquet(tmp_path / "listed.parquet",
                           [{"filename": f"image{i}.jpg", "captions": c} for i, c in enumerate(CAPTIONS)])
    assert [texts(s) for s in create_source(folder_config(tmp_path, listed))] == CAPTIONS


def test_folder_explicit_columns(tmp_path):
    make_images(tmp_path / "images")
    rows = [{"picture": f"image{i}.jpg", "description": c[0], "caption": "decoy", "image": "decoy.jpg"}
            for i, c in enumerate(CAPTIONS)]
    table = write_jsonl(tmp_path / "c.jsonl", rows)
    samples = list(create_source(folder_config(tmp_path, table, image_column="picture", caption_column="description")))
    assert [s.image_id for s in samples] == ["image0.jpg", "image1.jpg", "image2.jpg"]
    assert [texts(s) for s in samples] == [[c[0]] for c in CAPTIONS]
    # without the flags, the well-known names win
    auto = list(create_source(folder_config(tmp_path, table)))
    assert [s.image_id for s in auto] == ["decoy.jpg"]
    assert texts(auto[0]) == ["decoy"] * 3


def test_folder_missing_columns_are_config_errors(tmp_path):
    make_images(tmp_path / "images")
    table = write_jsonl(tmp_path / "c.jsonl", [{"picture": "image0.jpg", "description": "red"}])
    with pytest.raises(ConfigError, match="--image-column"):
        create_source(folder_config(tmp_path, table))
    with pytest.raises(ConfigError, match="--caption-column"):
        create_source(folder_config(tmp_path, table, image_column="picture"))
    with pytest.raises(ConfigError, match="--image-column: no column 'nope'"):
        create_source(folder_config(tmp_path, table, image_column="nope", caption_column="description"))
    with pytest.raises(ConfigError, match="--caption-column: no column 'nope'"):
        create_source(folder_config(tmp_path, table, image_column="picture", caption_column="nope"))


def test_folder_id_column_gives_keys_and_ids(tmp_path):
    make_images(tmp_path / "images")
    table = write_jsonl(tmp_path / "c.jsonl", [{"image": "image0.jpg", "caption": "red", "uid": "set-A/42"},
                                               {"image": "image1.jpg", "caption": "green", "uid": "b7"}])
    samples = list(create_source(folder_config(tmp_path, table, id_column="uid")))
    assert [s.image_id for s in samples] == ["set-A/42", "b7"]
    assert samples[1].key == "b7"
    assert_keys_safe(samples)
    assert samples[0].key != samples[1].key


def test_folder_nested_and_unsafe_paths_give_safe_distinct_keys(tmp_path):
    images = tmp_path / "images"
    (images / "sub dir").mkdir(parents=True)
    write_image(images / "sub dir" / "x.y.jpg")
    write_image(images / "sub_dir_x_y.jpg")
    table = write_jsonl(tmp_path / "c.jsonl", [{"image": "sub dir/x.y.jpg", "caption": "a"},
                                               {"image": "sub_dir_x_y.jpg", "caption": "b"}])
    samples = list(create_source(folder_config(tmp_path, table)))
    assert_keys_safe(samples)
    assert samples[0].key != samples[1].key
    assert decode(samples[0]).shape == (48, 64, 3)


def test_folder_missing_image_is_left_to_the_decode_stage(tmp_path):
    (tmp_path / "images").mkdir()
    table = write_jsonl(tmp_path / "c.jsonl", [{"image": "absent.jpg", "caption": "ghost"}])
    samples = list(create_source(folder_config(tmp_path, table)))
    assert texts(samples[0]) == ["ghost"]
    with pytest.raises(ImageRejected) as info:
        decode(samples[0])
    assert info.value.reason == "missing_file"


def test_folder_bad_inputs_are_config_errors(tmp_path):
    make_images(tmp_path / "images")
    table = write_jsonl(tmp_path / "c.jsonl", [{"image": "image0.jpg", "caption": "red"}])
    with pytest.raises(ConfigError, match="--images"):
        create_source(SourceConfig(type="folder", images=str(tmp_path / "nope"), captions=str(table)))
    with pytest.raises(ConfigError, match="--captions"):
        create_source(SourceConfig(type="folder", images=str(tmp_path / "images"), captions=str(tmp_path / "no.jsonl")))
    (tmp_path / "c.txt").write_text("image0.jpg red\n")
    with pytest.raises(ConfigError, match="unsupported table format"):
        create_source(folder_config(tmp_path, tmp_path / "c.txt"))
    (tmp_path / "bad.jsonl").write_text('{"image": "image0.jpg", "caption": \n')
    with pytest.raises(ConfigError, match="cannot read"):
        create_source(folder_config(tmp_path, tmp_path / "bad.jsonl"))
    write_parquet(tmp_path / "empty.parquet", [])
    with pytest.raises(ConfigError, match="no rows"):
        create_source(folder_config(tmp_path, tmp_path / "empty.parquet"))


def test_folder_keys_are_unique_across_extensions(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.jpg")
    write_image(images / "a.png")
    table = write_jsonl(tmp_path / "c.jsonl", [{"image": "a.jpg", "caption": "x"}, {"image": "a.png", "caption": "y"}])
    samples = list(create_source(folder_config(tmp_path, table)))
    assert len(samples) == 2
    assert samples[0].key != samples[1].key


def test_folder_row_without_image_is_a_rejected_sample(tmp_path):
    make_images(tmp_path / "images")
    rows = [{"image": "image0.jpg", "caption": "red"}, {"image": "", "caption": "?"}, {"image": "", "caption": "!"}]
    samples = list(create_source(folder_config(tmp_path, write_jsonl(tmp_path / "c.jsonl", rows))))
    assert texts(samples[0]) == ["red"] and samples[0].alive
    assert [(s.alive, s.reject.reason if s.reject else None) for s in samples[1:]] == [(False, "missing_file")] * 2
    assert len({s.key for s in samples}) == 3


# ======================================================================= webdataset


def write_tar(path: Path, members: list[dict]) -> Path:
    with wds.TarWriter(str(path)) as sink:
        for member in members:
            sink.write(member)
    return path


def test_webdataset_txt_and_json_captions_and_missing_image(tmp_path):
    images = make_images(tmp_path / "images")
    write_tar(tmp_path / "00000.tar", [
        {"__key__": "000000000", "jpg": images[0].read_bytes(), "txt": "a red square"},
        {"__key__": "000000001", "txt": "caption without an image"},
        {"__key__": "000000002", "jpg": images[1].read_bytes(), "txt": "txt wins", "json": {"caption": "json loses"}},
    ])
    write_tar(tmp_path / "00001.tar", [
        {"__key__": "000010000", "jpg": images[2].read_bytes(), "json": {"caption": "a blue square", "key": "k-42"}},
    ])
    source = create_source(SourceConfig(type="webdataset", urls=str(tmp_path / "{00000..00001}.tar")))
    samples = list(source)
    assert [s.key for s in samples] == ["000000000", "000000001", "000000002", "000010000"]
    assert_keys_safe(samples)
    assert [texts(s) for s in samples] == [["a red square"], ["caption without an image"], ["txt wins"],
                                           ["a blue square"]]
    assert samples[3].image_id == "k-42"  # img2dataset's json key
    assert samples[0].source.endswith("00000.tar#000000000.jpg")
    assert samples[3].source.endswith("00001.tar#000010000.jpg")

    missing = samples[1]
    assert not missing.alive
    assert missing.reject.reason == "missing_file"
    assert missing.reject.stage == "source"
    assert all(s.alive for s in samples if s is not missing)

    assert samples[0].image_bytes is None  # read lazily, from the tar member's byte range
    assert read_image_bytes(samples[0].image_path, samples[0].image_range) == images[0].read_bytes()
    np.testing.assert_array_equal(decode(samples[3]), load_sample_image(str(images[2]), None, MAX_PIXELS))
    assert len(source) == len(samples)  # known up front, from the tar headers


def test_webdataset_png_member_and_glob(tmp_path):
    images = make_images(tmp_path / "images", fmt="png")
    write_tar(tmp_path / "b.tar", [{"__key__": "b", "png": images[1].read_bytes(), "txt": "green"}])
    write_tar(tmp_path / "a.tar", [{"__key__": "a", "png": images[0].read_bytes(), "txt": "red"}])
    samples = list(create_source(SourceConfig(type="webdataset", urls=str(tmp_path / "*.tar"))))
    assert [s.key for s in samples] == ["a", "b"]  # globbed tars in sorted order
    assert tuple(decode(samples[0])[8, 10]) == COLOURS[0]


def test_webdataset_unsafe_member_names_give_safe_keys(tmp_path):
    images = make_images(tmp_path / "images")
    write_tar(tmp_path / "t.tar", [{"__key__": "dir/sub/x y", "jpg": images[0].read_bytes(), "txt": "a"},
                                   {"__key__": "dir/sub/x_y", "jpg": images[1].read_bytes(), "txt": "b"}])
    samples = list(create_source(SourceConfig(type="webdataset", urls=str(tmp_path / "t.tar"))))
    assert len(samples) == 2
    assert_keys_safe(samples)
    assert samples[0].key != samples[1].key


def _four_sample_tar(tmp_path: Path) -> tuple[Path, tarfile.TarFile]:
    images = make_images(tmp_path / "images", fmt="png")
    whole = write_tar(tmp_path / "whole.tar", [{"__key__": f"k{i}", "png": images[i % 3].read_bytes(),
                                                "txt": f"caption {i}"} for i in range(4)])
    return whole, tarfile.open(whole)


def test_webdataset_tar_cut_inside_a_member_gives_source_error_rows(tmp_path):
    whole, members = _four_sample_tar(tmp_path)
    png = members.getmember("k1.png")
    cut = png.offset_data + png.size // 2  # in the middle of k1's image
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:cut])
    samples = list(create_source(SourceConfig(type="webdataset", urls=str(tmp_path / "cut.tar"))))
    errors = [s for s in samples if not s.alive]
    assert errors
    assert all(s.reject.reason == "source_error" and s.reject.stage == "source" for s in errors)
    # k0 comes through whole; k1 lost its caption and half its image (rejected later as no_caption)
    assert [texts(s) for s in samples if s.alive] == [["caption 0"], []]
    assert_keys_safe(samples)
    assert len({s.key for s in samples}) == len(samples)


def test_webdataset_tar_cut_at_a_header_is_not_silent(tmp_path):
    whole, members = _four_sample_tar(tmp_path)
    cut = members.getmember("k2.txt").offset + 100  # inside the header of k2's caption
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:cut])
    samples = list(create_source(SourceConfig(type="webdataset", urls=str(tmp_path / "cut.tar"))))
    assert [s.key for s in samples if s.alive][:2] == ["k0", "k1"]
    assert any(s.reject is not None and s.reject.reason == "source_error" for s in samples)


def test_webdataset_missing_tar_is_config_error(tmp_path):
    images = make_images(tmp_path / "images")
    write_tar(tmp_path / "00000.tar", [{"__key__": "a", "jpg": images[0].read_bytes(), "txt": "red"}])
    with pytest.raises(ConfigError, match="--urls: no such file"):
        create_source(SourceConfig(type="webdataset", urls=str(tmp_path / "nope.tar")))
    with pytest.raises(ConfigError, match="00001.tar"):
        create_source(SourceConfig(type="webdataset", urls=str(tmp_path / "{00000..00001}.tar")))
    with pytest.raises(ConfigError, match="--urls: required"):
        create_source(SourceConfig(type="webdataset"))


# ======================================================================= hf


def hf_dataset(images: list[Path], embed: bool = True):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "captions": datasets.Sequence(datasets.Value("string"))})
    cells = [{"bytes": p.read_bytes(), "path": None} if embed else {"bytes": None, "path": str(p)} for p in images]
    return datasets.Dataset.from_dict({"image": cells, "caption": [c[0] for c in CAPTIONS], "captions": CAPTIONS},
                                      features=features)


def check_hf_samples(samples, images: list[Path], caption_lists: list[list[str]]) -> None:
    assert [s.key for s in samples] == ["000000000", "000000001", "000000002"]
    assert_keys_safe(samples)
    assert [texts(s) for s in samples] == caption_lists
    for sample, path in zip(samples, images, strict=True):
        assert sample.image is None  # nothing decoded by the source
        assert sample.image_bytes is not None or sample.image_path is not None
        assert isinstance(sample.image_bytes, bytes | type(None))
        np.testing.assert_array_equal(decode(sample), load_sample_image(str(path), None, MAX_PIXELS))


def test_hf_save_to_disk_with_image_feature(tmp_path):
    images = make_images(tmp_path / "images")
    hf_dataset(images).save_to_disk(str(tmp_path / "ds"))
    source = create_source(SourceConfig(type="hf", dataset=str(tmp_path / "ds")))
    assert len(source) == 3
    samples = list(source)
    check_hf_samples(samples, images, [[c[0]] for c in CAPTIONS])  # auto-detected "caption" column
    assert all(s.image_bytes == p.read_bytes() for s, p in zip(samples, images, strict=True))  # still encoded
    listed = list(create_source(SourceConfig(type="hf", dataset=str(tmp_path / "ds"), caption_column="captions")))
    check_hf_samples(listed, images, CAPTIONS)
    assert [c.id for c in listed[2].captions] == ["0", "1", "2"]


def test_hf_parquet_file_and_folder(tmp_path):
    images = make_images(tmp_path / "images")
    dataset = hf_dataset(images)
    dataset.to_parquet(str(tmp_path / "data.parquet"))
    samples = list(create_source(SourceConfig(type="hf", dataset=str(tmp_path / "data.parquet"),
                                              caption_column="captions")))
    check_hf_samples(samples, images, CAPTIONS)
    (tmp_path / "parts").mkdir()
    dataset.select([0]).to_parquet(str(tmp_path / "parts" / "part-0.parquet"))
    dataset.select([1, 2]).to_parquet(str(tmp_path / "parts" / "part-1.parquet"))
    check_hf_samples(list(create_source(SourceConfig(type="hf", dataset=str(tmp_path / "parts")))),
                     images, [[c[0]] for c in CAPTIONS])


def test_hf_image_given_by_path_stays_a_path(tmp_path):
    images = make_images(tmp_path / "images")
    hf_dataset(images, embed=False).to_parquet(str(tmp_path / "data.parquet"))
    samples = list(create_source(SourceConfig(type="hf", dataset=str(tmp_path / "data.parquet"))))
    for sample, path in zip(samples, images, strict=True):
        if sample.image_bytes is None:
            assert sample.image_path == str(path)
    check_hf_samples(samples, images, [[c[0]] for c in CAPTIONS])


def test_hf_plain_parquet_without_hf_features(tmp_path):
    images = make_images(tmp_path / "images")
    write_parquet(tmp_path / "plain.parquet", [{"img": {"bytes": p.read_bytes(), "path": None}, "text": c[0]}
                                               for p, c in zip(images, CAPTIONS, strict=True)])
    samples = list(create_source(SourceConfig(type="hf", dataset=str(tmp_path / "plain.parquet"))))
    check_hf_samples(samples, images, [[c[0]] for c in CAPTIONS])


def test_hf_dataset_dict_splits_and_id_column(tmp_path):
    import datasets

    images = make_images(tmp_path / "images")
    train = hf_dataset(images).add_column("uid", ["x/1", "x/2", "x.3"])
    splits = datasets.DatasetDict({"train": train, "validation": train.select([2])})
    splits.save_to_disk(str(tmp_path / "dd"))
    assert len(create_source(SourceConfig(type="hf", dataset=str(tmp_path / "dd")))) == 3  # train by default
    validation = list(create_source(SourceConfig(type="hf", dataset=str(tmp_path / "dd"), split="validation",
                                                 id_column="uid")))
    assert [s.image_id for s in validation] == ["x.3"]
    assert texts(validation[0]) == [CAPTIONS[2][0]]
    with_ids = list(create_source(SourceConfig(type="hf", dataset=str(tmp_path / "dd"), id_column="uid")))
    assert_keys_safe(with_ids)
    assert len({s.key for s in with_ids}) == 3
    with pytest.raises(ConfigError, match="--split"):
        create_source(SourceConfig(type="hf", dataset=str(tmp_path / "dd"), split="test"))


def test_hf_bad_inputs_are_config_errors(tmp_path):
    images = make_images(tmp_path / "images")
    hf_dataset(images).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match="--dataset"):
        create_source(SourceConfig(type="hf", dataset=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="--dataset: required"):
        create_source(SourceConfig(type="hf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a save_to_disk dataset nor parquet"):
        create_source(SourceConfig(type="hf", dataset=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="--caption-column: no column 'nope'"):
        create_source(SourceConfig(type="hf", dataset=str(tmp_path / "ds"), caption_column="nope"))
    with pytest.raises(ConfigError, match="--image-column: no column 'nope'"):
        create_source(SourceConfig(type="hf", dataset=str(tmp_path / "ds"), image_column="nope"))


@pytest.mark.parametrize("kind", ["folder", "hf"])
def test_missing_id_column_is_config_error(tmp_path, kind):
    images = make_images(tmp_path / "images")
    if kind == "folder":
        table = write_jsonl(tmp_path / "c.jsonl", [{"image": "image0.jpg", "caption": "red"}])
        config = folder_config(tmp_path, table, id_column="nope")
    else:
        hf_dataset(images).save_to_disk(str(tmp_path / "ds"))
        config = SourceConfig(type="hf", dataset=str(tmp_path / "ds"), id_column="nope")
    with pytest.raises(ConfigError, match="nope"):
        list(create_source(config))


# ======================================================================= same data, four formats


def test_four_formats_give_the_same_samples(tmp_path):
    images = make_images(tmp_path / "images")
    caption_lists = [[c[0]] for c in CAPTIONS]  # webdataset (img2dataset) carries one caption per image

    coco_images = [{"id": i + 1, "file_name": p.name} for i, p in enumerate(images)]
    coco_captions = [{"id": 10 + i, "image_id": i + 1, "caption": c[0]} for i, c in enumerate(caption_lists)]
    (tmp_path / "coco.json").write_text(json.dumps({"images": coco_images, "annotations": coco_captions}))
    coco = SourceConfig(type="coco", images=str(tmp_path / "images"), captions=str(tmp_path / "coco.json"))

    table = write_jsonl(tmp_path / "folder.jsonl", [{"image": p.name, "caption": c[0]}
                                                    for p, c in zip(images, caption_lists, strict=True)])
    folder = SourceConfig(type="folder", images=str(tmp_path / "images"), captions=str(table))

    write_tar(tmp_path / "shard.tar", [{"__key__": f"{i:09d}", "jpg": p.read_bytes(), "txt": c[0]}
                                       for i, (p, c) in enumerate(zip(images, caption_lists, strict=True))])
    webdataset = SourceConfig(type="webdataset", urls=str(tmp_path / "shard.tar"))

    hf_dataset(images).save_to_disk(str(tmp_path / "hf"))
    hf = SourceConfig(type="hf", dataset=str(tmp_path / "hf"))

    expected_images = [load_sample_image(str(p), None, MAX_PIXELS) for p in images]
    for config in (coco, folder, webdataset, hf):
        samples = list(create_source(config))
        assert [texts(s) for s in samples] == caption_lists, config.type
        assert_keys_safe(samples)
        assert len({s.key for s in samples}) == 3
        assert all(s.alive for s in samples)
        for sample, expected in zip(samples, expected_images, strict=True):
            decoded = decode(sample)
            assert decoded.shape == expected.shape, config.type
            np.testing.assert_array_equal(decoded, expected)


def test_duplicate_ids_are_rejected_with_keys_of_their_own(tmp_path):
    make_images(tmp_path / "images")
    rows = [{"image": "image0.jpg", "caption": "red", "id": "same"}, {"image": "image1.jpg", "caption": "green", "id": "same"}]
    config = folder_config(tmp_path, write_jsonl(tmp_path / "c.jsonl", rows))
    config.id_column = "id"
    first, second = list(create_source(config))
    assert first.alive and first.key == "same"
    assert second.reject.reason == "duplicate_key" and second.key == "same-duplicate-1"


def test_every_source_ships_to_workers_with_its_key_index(tmp_path):
    """The Ray executor pickles the driver's Source once: a worker reads samples from the copy
    without re-reading captions, instances, tables or tar headers, and gets the same samples."""
    import pickle

    images = make_images(tmp_path / "images")
    write_tar(tmp_path / "00000.tar", [{"__key__": f"{i:09d}", "jpg": path.read_bytes(), "txt": f"thing {i}"}
                                       for i, path in enumerate(images)])
    hf_dataset(images).save_to_disk(str(tmp_path / "ds"))
    rows = [{"image": path.name, "caption": f"thing {i}"} for i, path in enumerate(images)]
    configs = [write_coco(tmp_path), folder_config(tmp_path, write_jsonl(tmp_path / "c.jsonl", rows)),
               SourceConfig(type="webdataset", urls=str(tmp_path / "00000.tar")),
               SourceConfig(type="hf", dataset=str(tmp_path / "ds"))]
    for config in configs:
        source = create_source(config).with_key_index()
        shipped = pickle.loads(pickle.dumps(source))
        assert "first_use_of_key" in vars(shipped), config.type  # the index travelled with it
        original, copy = source.read(0, len(source)), shipped.read(0, len(shipped))
        assert [(s.key, texts(s)) for s in copy] == [(s.key, texts(s)) for s in original], config.type
        np.testing.assert_array_equal(decode(copy[-1]), decode(original[-1]))


def test_tar_patterns_name_each_file_once_and_literal_names_win_over_globs(tmp_path):
    from dataengine.sources.webdataset import expand_tars

    folder = tmp_path / "s"
    folder.mkdir()
    for name in ("a.tar", "b.tar", "c[1].tar"):
        (folder / name).write_bytes(b"")
    same = expand_tars([str(folder), f"{tmp_path}/./s", f"{folder}//a.tar", f"{folder}/*.tar"], "--shards")
    assert same == sorted(str(folder / name) for name in ("a.tar", "b.tar", "c[1].tar"))
    assert expand_tars(str(folder / "c[1].tar"), "--urls") == [str(folder / "c[1].tar")]
    with pytest.raises(ConfigError, match=r"--urls: no tar files match .*\*\.nope"):
        expand_tars([str(folder / "a.tar"), str(folder / "*.nope")], "--urls")
