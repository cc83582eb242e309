"""The on-disk contract: schemas are valid, output is deterministic and written atomically."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from readback import check_corpus

from dataengine.config import MineConfig, SourceConfig
from dataengine.pipeline import mine
from dataengine.reasons import NOUN_LEVEL
from dataengine.records import Caption, NounMention, Pair, Proposals, Reject, Sample
from dataengine.schema import arrow_schema, load_schema
from dataengine.write import CorpusWriter, Models


@pytest.mark.parametrize("name", ["pair.schema.json", "manifest.schema.json"])
def test_json_schemas_are_valid(name):
    jsonschema.Draft202012Validator.check_schema(load_schema(name))


@pytest.mark.parametrize("name", ["index", "rejects"])
def test_parquet_schemas_build(name):
    schema = arrow_schema(name)
    assert schema.names[0] == "key" and not schema.field("key").nullable


def tiny_folder(root: Path) -> SourceConfig:
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        pixels = np.full((70, 90, 3), (30 * i, 100, 200 - 30 * i), dtype=np.uint8)
        pixels[10:40, 20:60] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).save(images / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "caption": f"A box and a ball number {i} near a tree."})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return SourceConfig(type="folder", images=str(images), captions=str(root / "captions.jsonl"))


def run(source: SourceConfig, out: Path, **match) -> MineConfig:
    config = MineConfig(source=source, out=str(out), progress=False, executor="local", images_per_batch=2)
    config.match.clip = "dataengine-tiny"
    config.write.samples_per_shard = 2
    config.proposals.max_proposals = 8
    for key, value in match.items():
        setattr(config.match, key, value)
    mine(config)
    return config


def test_same_input_same_bytes(tmp_path):
    source = tiny_folder(tmp_path / "in")
    first = run(source, tmp_path / "a")
    second = run(source, tmp_path / "b", batch_size=3)  # a different CLIP batching must not change the output
    tars = sorted(p.name for p in Path(first.out, "shards").glob("*.tar"))
    assert tars == ["pairs-000000.tar", "pairs-000001.tar", "pairs-000002.tar"]
    for name in tars:
        assert Path(first.out, "shards", name).read_bytes() == Path(second.out, "shards", name).read_bytes()
    for folder in ("index", "rejects"):
        for path in sorted(Path(first.out, folder).glob("*.parquet")):
            assert pq.read_table(path).equals(pq.read_table(Path(second.out, folder, path.name)))
    check_corpus(Path(first.out), {f"img{i}" for i in range(5)})


def test_shard_members_and_atomic_commit(tmp_path):
    source = tiny_folder(tmp_path / "in")
    config = run(source, tmp_path / "out", min_score=1.0)  # nothing scores 1.0: every noun is rejected
    out = Path(config.out)
    import webdataset as wds

    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == [f"pairs-00000{i}.tar" for i in range(3)]
    shards = str(out / "shards" / "pairs-{000000..000002}.tar")
    assert list(wds.WebDataset(shards, shardshuffle=False)) == []
    assert all(pq.read_table(path).num_rows == 0 for path in (out / "index").glob("*.parquet"))
    rejects = [row for path in sorted((out / "rejects").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert {r["reason"] for r in rejects if r["level"] == "noun"} == {"below_min_score"}
    assert {r["reason"] for r in rejects if r["level"] == "image"} == {"no_pairs"}
    assert sorted(p.name for p in (out / "stats").glob("*.json")) == ["000000.json", "000001.json", "000002.json"]
    assert not (out / "_tmp").exists()
    check_corpus(out, {f"img{i}" for i in range(5)})


def test_writer_members_names_and_metadata(tmp_path):
    masks = np.zeros((2, 40, 60), dtype=bool)
    masks[0, 5:20, 10:30] = True
    masks[1, 25:35, 40:55] = True
    sample = Sample("img-1", "1", "somewhere/img.png", [Caption("7", "A cat on a mat.")])
    sample.height, sample.width = 40, 60
    sample.proposals = Proposals.from_masks(masks, [0.9, 0.5], "classical")
    cat, mat = NounMention("cat", "7", 2, 5), NounMention("mat", "7", 11, 14)
    sample.nouns = [cat, mat]
    crop = np.full((224, 224, 3), 123, dtype=np.uint8)
    sample.pairs = [Pair("img-1_n0000", cat, 1, 0.25, 0.125, crop, np.ones((224, 224), bool))]
    sample.noun_rejects = [Reject(NOUN_LEVEL, "below_min_margin", stage="match", noun=mat, score=0.2, margin=0.01)]
    writer = CorpusWriter(tmp_path, Models("dataengine-tiny", "classical", "core_web_sm-3.8.0"))
    stats = writer.write_shard(3, [sample])
    assert stats["tar"] == "shards/pairs-000003.tar" and stats["pairs"] == 1 and stats["rejected_nouns"] == 1
    with tarfile.open(tmp_path / stats["tar"]) as tar:
        assert sorted(tar.getnames()) == ["img-1_n0000.jpg", "img-1_n0000.json", "img-1_n0000.mask.png",
                                          "img-1_n0000.txt"]
        assert all(member.mtime == 0 for member in tar.getmembers())
        meta = json.loads(tar.extractfile("img-1_n0000.json").read())
    jsonschema.validate(meta, load_schema("pair.schema.json"))
    assert meta["box"] == [40, 25, 15, 10] and meta["area"] == 150 and meta["proposal_score"] == 0.5
    assert meta["caption"][meta["span"][0] : meta["span"][1]] == "cat"
    rejects = pq.read_table(tmp_path / stats["rejects"]).to_pylist()
    assert rejects == [{
        "key": "img-1_n0001", "level": "noun", "reason": "below_min_margin", "detail": "", "stage": "match",
        "shard": 3, "image_key": "img-1", "image_id": "1", "source": "somewhere/img.png", "caption_id": "7",
        "noun": "mat", "span_start": 11, "span_end": 14, "score": 0.2, "margin": 0.01,
    }]
