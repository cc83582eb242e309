"""Helpers that read a mined corpus back the way its consumers do, and check its invariants."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq

from dataengine.schema import arrow_schema, load_schema

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


def read_parquet_rows(folder: Path) -> list[dict]:
    files = sorted(folder.glob("*.parquet"))
    for path in files:
        name = "index" if folder.name == "index" else "rejects"
        assert pq.read_schema(path).remove_metadata() == arrow_schema(name), f"{path} does not match schemas/"
    return [row for path in files for row in pq.read_table(path).to_pylist()]


def read_shards_with_webdataset(out: Path) -> list[dict]:
    import webdataset as wds

    tars = sorted(str(path) for path in (out / "shards").glob("*.tar"))
    if not tars:
        return []
    samples = []
    for sample in wds.WebDataset(tars, shardshuffle=False):
        assert set(sample) >= {"__key__", "jpg", "mask.png", "txt", "json"}, sample.keys()
        samples.append(sample)
    return samples


def check_corpus(out: Path, expected_image_keys: set[str]) -> dict:
    """Invariants every corpus must hold; returns the parts for further checks."""
    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, load_schema("manifest.schema.json"))
    index = read_parquet_rows(out / "index")
    rejects = read_parquet_rows(out / "rejects")
    samples = read_shards_with_webdataset(out)

    tar_keys = [s["__key__"] for s in samples]
    assert len(tar_keys) == len(set(tar_keys)), "duplicate keys in shards"
    assert sorted(tar_keys) == sorted(row["key"] for row in index)
    assert all(KEY_PATTERN.match(key) for key in tar_keys)

    pair_schema = load_schema("pair.schema.json")
    validator = jsonschema.Draft202012Validator(pair_schema)
    for sample in samples:
        meta = json.loads(sample["json"])
        validator.validate(meta)
        assert meta["key"] == sample["__key__"]
        assert sample["txt"].decode("utf-8") == meta["noun"]
        assert meta["caption"][meta["span"][0] : meta["span"][1]].strip() != ""

    with_pairs = {row["image_key"] for row in index}
    rejected = {row["key"] for row in rejects if row["level"] == "image"}
    assert not (with_pairs & rejected), "an image has both pairs and an image-level reject"
    assert with_pairs | rejected == expected_image_keys, "some input image is not accounted for"

    # Each image's nouns are numbered 0..n-1: every index appears once, as a pair or a noun-level reject.
    noun_indices = defaultdict(list)
    for key in [row["key"] for row in index] + [row["key"] for row in rejects if row["level"] == "noun"]:
        image_key, _, number = key.rpartition("_n")
        noun_indices[image_key].append(int(number))
    for image_key, numbers in noun_indices.items():
        assert sorted(numbers) == list(range(len(numbers))), f"nouns of {image_key} not all accounted for"

    stats = [json.loads(path.read_text()) for path in sorted((out / "stats").glob("*.json"))]
    noun_rejects = [row for row in rejects if row["level"] == "noun"]
    assert sum(s["nouns_matched"] for s in stats) == len(index) + len(noun_rejects), "a matched noun went missing"
    assert manifest["counts"]["pairs"] == len(index)
    assert manifest["counts"]["images"] == len(expected_image_keys)
    return {"manifest": manifest, "index": index, "rejects": rejects, "samples": samples}
