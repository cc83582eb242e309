"""Exactly-once output: a run interrupted at any commit point, rerun, equals an uninterrupted run;
a rerun refuses what would mix two jobs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_ray import assert_same_output

from dataengine.config import ConfigError, MineConfig, SourceConfig
from dataengine.pipeline import mine


class Crash(Exception):
    """Stands for a kill -9: nothing after it runs, and nothing cleans up."""


def job(coco_mini, out: Path, limit: int = 24) -> MineConfig:
    source = SourceConfig(type="coco", images=str(coco_mini / "images"), captions=str(coco_mini / "captions.json"),
                          instances=str(coco_mini / "instances.json"))
    config = MineConfig(source=source, out=str(out), progress=False, executor="local", limit=limit)
    config.proposals.generator = "annotations"
    config.match.clip = "dataengine-tiny"
    config.write.samples_per_shard = 8
    return config


@pytest.fixture(scope="module")
def uninterrupted(coco_mini, tmp_path_factory) -> Path:
    config = job(coco_mini, tmp_path_factory.mktemp("uninterrupted"))
    mine(config)
    return Path(config.out)


def count_replaces(coco_mini, tmp_path) -> int:
    calls = []
    real = os.replace

    def counting(*args):
        calls.append(args)
        return real(*args)

    os.replace = counting
    try:
        mine(job(coco_mini, tmp_path / "count"))
    finally:
        os.replace = real
    return len(calls)


def test_a_crash_at_every_commit_point_then_a_rerun_gives_the_uninterrupted_output(coco_mini, uninterrupted,
                                                                                   tmp_path, monkeypatch):
    """Every file of a run is committed by a rename (run.json, then per shard: tar, index, rejects,
    stats; last the manifest). Crash just before each one in turn, rerun, compare."""
    renames = count_replaces(coco_mini, tmp_path)
    assert renames >= 10
    real = os.replace
    for crash_at in range(renames):
        out = tmp_path / f"crash-{crash_at}"
        calls = []

        def crashing(*args, crash_at=crash_at, calls=calls):
            calls.append(args)
            if len(calls) - 1 == crash_at:
                raise Crash(f"killed before rename {crash_at}: {args[1]}")
            return real(*args)

        monkeypatch.setattr(os, "replace", crashing)
        with pytest.raises(Crash):
            mine(job(coco_mini, out))
        monkeypatch.setattr(os, "replace", real)
        mine(job(coco_mini, out))
        assert_same_output(out, uninterrupted)
        assert json.loads((out / "manifest.json").read_text())["counts"]["images"] == 24


def test_a_crash_while_clearing_an_old_corpus_never_looks_finished(coco_mini, tmp_path, monkeypatch, uninterrupted):
    out = tmp_path / "out"
    old = job(coco_mini, out)
    old.match.max_pairs_per_image = 1  # an earlier corpus with other settings
    mine(old)
    real = Path.unlink

    def crash_on_shards(path, *args, **kwargs):  # clearing deletes file by file, only what run.json names
        if Path(path).parent.name == "shards":
            raise Crash("killed while clearing")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", crash_on_shards)
    with pytest.raises(Crash):
        mine(job(coco_mini, out), overwrite=True)
    monkeypatch.setattr(Path, "unlink", real)
    assert not list((out / "stats").glob("*.json"))  # the done markers went first
    mine(job(coco_mini, out))
    assert_same_output(out, uninterrupted)


def test_a_changed_input_is_refused_not_mixed(coco_mini, tmp_path):
    captions = json.loads((coco_mini / "captions.json").read_text())
    copy = tmp_path / "captions.json"
    copy.write_text(json.dumps(captions))
    config = job(coco_mini, tmp_path / "out")
    config.source.captions = str(copy)
    mine(config)
    (tmp_path / "out" / "stats" / "000001.json").unlink()  # as if interrupted
    captions["images"] = captions["images"][1:]  # the input changed before the rerun
    copy.write_text(json.dumps(captions))
    with pytest.raises(ConfigError, match=r"other settings \(input.keys_sha256, input.samples|input.keys_sha256"):
        mine(config)


def test_a_damaged_run_file_gives_way_to_overwrite(coco_mini, tmp_path, uninterrupted):
    out = tmp_path / "out"
    mine(job(coco_mini, out))
    for damage in ('{"job": [', "[]"):
        (out / "run.json").write_text(damage)
        with pytest.raises(ConfigError, match="is damaged"):
            mine(job(coco_mini, out))
        mine(job(coco_mini, out), overwrite=True)
    assert_same_output(out, uninterrupted)
