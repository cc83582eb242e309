"""Job configuration (YAML loading, unknown keys, range checks) and tar-safe keys."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from dataengine.config import (
    ClassicalConfig,
    ConfigError,
    HFConfig,
    MineConfig,
    NounConfig,
    ProposalConfig,
    SourceConfig,
    from_dict,
    load_yaml_config,
)
from dataengine.keys import MAX_KEY_LENGTH, pair_key, safe_key

PIPELINES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))
KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ pipelines/*.yaml


def test_pipelines_folder_is_found():
    assert len(PIPELINES) >= 7
    assert {p.stem for p in PIPELINES} >= {"coco_captions", "coco_annotations", "folder_captions", "hf_captions",
                                           "webdataset_captions", "demo"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_packaged_pipeline_loads(path):
    config = load_yaml_config(path)
    assert isinstance(config, MineConfig)
    assert isinstance(config.source, SourceConfig)
    assert isinstance(config.proposals, ProposalConfig)
    assert isinstance(config.proposals.classical, ClassicalConfig)
    assert isinstance(config.proposals.hf, HFConfig)
    assert isinstance(config.nouns, NounConfig)
    assert config.source.type in {"coco", "folder", "webdataset", "hf"}
    assert config.out
    assert config.validate() is config
    # loading by packaged name gives the same configuration
    assert load_yaml_config(path.stem).to_dict() == config.to_dict()


def test_pipeline_values_reach_the_dataclasses():
    annotations = load_yaml_config(PIPELINES[0].parent / "coco_annotations.yaml")
    assert annotations.proposals.generator == "annotations"
    assert annotations.source.instances.endswith("instances_val2017.json")
    webdataset = load_yaml_config("webdataset_captions")
    assert webdataset.source.type == "webdataset"
    assert webdataset.source.urls == "data/cc3m/{00000..00331}.tar"
    assert webdataset.match.min_score == 0.2
    maskformer = load_yaml_config("coco_maskformer")
    assert maskformer.proposals.hf.score_threshold == 0.1
    assert maskformer.proposals.hf.pred_iou_thresh == HFConfig().pred_iou_thresh  # unset: default


def test_unknown_pipeline_name_is_config_error():
    with pytest.raises(ConfigError, match="--config: no such file or packaged pipeline"):
        load_yaml_config("no_such_pipeline_anywhere")


# ------------------------------------------------------------------ loading YAML


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_yaml_config(write_yaml(tmp_path, "")).to_dict() == MineConfig().to_dict()
    assert load_yaml_config(write_yaml(tmp_path, "proposals:\n")).to_dict() == MineConfig().to_dict()


def test_yaml_overrides_only_what_it_names(tmp_path):
    config = load_yaml_config(write_yaml(tmp_path, (
        "source: {type: folder, images: imgs, captions: c.csv}\n"
        "proposals:\n  mask_threshold: 0.25\n  classical:\n    slic_segments: [8]\n"
        "nouns: {extra_drop_nouns: [thing]}\n"
        "out: somewhere\n")))
    assert config.source.type == "folder" and config.source.captions == "c.csv"
    assert config.proposals.mask_threshold == 0.25
    assert config.proposals.classical.slic_segments == [8]
    assert config.proposals.classical.felzenszwalb_sigma == ClassicalConfig().felzenszwalb_sigma
    assert config.proposals.max_proposals == ProposalConfig().max_proposals
    assert config.nouns.extra_drop_nouns == ["thing"]
    assert config.out == "somewhere"


@pytest.mark.parametrize("text,key", [
    ("proposals:\n  bogus: 1\n", "proposals.bogus"),
    ("bogus: 1\n", "bogus"),
    ("proposals:\n  classical:\n    bogus: 1\n", "proposals.classical.bogus"),
    ("proposals:\n  hf:\n    scor_threshold: 0.1\n", "proposals.hf.scor_threshold"),
    ("source:\n  image: x\n", "source.image"),
    ("match:\n  min_scroe: 0.1\n", "match.min_scroe"),
    ("write:\n  zeta: 1\n  alpha: 2\n", "write.alpha"),  # the first unknown key in sorted order
])
def test_unknown_keys_name_the_dotted_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: unknown setting") as info:
        load_yaml_config(write_yaml(tmp_path, text))
    assert "known:" in str(info.value)


def test_section_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"^proposals: expected a mapping"):
        load_yaml_config(write_yaml(tmp_path, "proposals: 5\n"))
    with pytest.raises(ConfigError, match=r"^proposals\.classical: expected a mapping"):
        load_yaml_config(write_yaml(tmp_path, "proposals:\n  classical: [1, 2]\n"))
    with pytest.raises(ConfigError, match=r"^config: expected a mapping"):
        load_yaml_config(write_yaml(tmp_path, "- just\n- a list\n"))


def test_invalid_yaml_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml_config(write_yaml(tmp_path, "source: {type: coco\n  images: [\n"))


def test_from_dict_builds_nested_dataclasses():
    config = from_dict(MineConfig, {"match": {"one_to_one": True}, "proposals": {"hf": {"revision": "abc"}}})
    assert config.match.one_to_one is True
    assert config.proposals.hf.revision == "abc"
    assert config.match.clip == MineConfig().match.clip


# ------------------------------------------------------------------ validate()


def valid() -> MineConfig:
    return MineConfig(out="out-dir")


def test_default_config_with_out_is_valid():
    config = valid()
    assert config.validate() is config


def _set(config: MineConfig, dotted: str, value) -> MineConfig:
    *parents, name = dotted.split(".")
    target = config
    for parent in parents:
        target = getattr(target, parent)
    assert hasattr(target, name), dotted
    setattr(target, name, value)
    return config


@pytest.mark.parametrize("key,value", [
    ("proposals.mask_threshold", 1.5),
    ("proposals.mask_threshold", -0.01),
    ("proposals.mask_threshold", "0.5"),
    ("proposals.mask_threshold", None),
    ("proposals.min_area", -0.1),
    ("proposals.max_area", 1.01),
    ("proposals.nms_iou", 2),
    ("proposals.max_proposals", 0),
    ("proposals.classical.work_size", 0),
    ("match.min_margin", -1),
    ("match.min_margin", 2.5),
    ("match.min_score", 1.5),
    ("match.min_score", -1.5),
    ("match.max_pairs_per_image", 0),
    ("match.batch_size", 0),
    ("match.batch_size", 2.5),
    ("match.batch_size", True),
    ("nouns.batch_size", 0),
    ("nouns.n_process", 0),
    ("write.samples_per_shard", 0),
    ("write.samples_per_shard", -3),
    ("write.jpeg_quality", 0),
    ("write.jpeg_quality", 101),
    ("images_per_batch", 0),
    ("source.max_pixels", 0),
    ("limit", 0),
])
def test_validate_rejects_out_of_range_values_naming_the_key(key, value):
    config = _set(valid(), key, value)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be") as info:
        config.validate()
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("key,value", [
    ("proposals.mask_threshold", 0.0),
    ("proposals.mask_threshold", 1.0),
    ("proposals.mask_threshold", 1),
    ("match.min_margin", 0.0),
    ("match.min_margin", 2.0),
    ("match.min_score", -1.0),
    ("match.min_score", None),
    ("match.max_pairs_per_image", 1),
    ("write.samples_per_shard", 1),
    ("write.jpeg_quality", 100),
    ("limit", 1),
])
def test_validate_accepts_boundary_values(key, value):
    _set(valid(), key, value).validate()


def test_validate_needs_out_and_a_known_executor():
    with pytest.raises(ConfigError, match=r"^out: "):
        MineConfig().validate()
    config = valid()
    config.executor = "spark"
    with pytest.raises(ConfigError, match=r"^executor: unknown executor 'spark'"):
        config.validate()
    for executor in ("ray", "local"):
        config.executor = executor
        config.validate()


def test_out_of_range_yaml_loads_but_does_not_validate(tmp_path):
    config = load_yaml_config(write_yaml(tmp_path, "proposals: {mask_threshold: 1.5}\nout: x\n"))
    assert config.proposals.mask_threshold == 1.5
    with pytest.raises(ConfigError, match=r"^proposals\.mask_threshold: "):
        config.validate()


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize("raw", ["000000000139", "abc-DEF_123", "k", "-", "a" * MAX_KEY_LENGTH])
def test_safe_key_keeps_safe_keys(raw):
    assert safe_key(raw) == raw


@pytest.mark.parametrize("raw", ["a/b", "x.jpg", "sub dir/x.y.jpg", "ünïcødé", "", "...", "_a", "a_", "tab\there",
                                 "a" * (MAX_KEY_LENGTH + 1), "../../etc/passwd", "k\n"])
def test_safe_key_cleans_unsafe_keys(raw):
    key = safe_key(raw)
    assert KEY.match(key), key
    assert key != raw
    assert len(key) <= MAX_KEY_LENGTH
    assert safe_key(raw) == key  # deterministic


def test_safe_key_keeps_a_readable_prefix():
    assert safe_key("sub dir/x.jpg").startswith("sub_dir_x_jpg-")
    assert safe_key("x.jpg").startswith("x_jpg-")


@pytest.mark.parametrize("a,b", [("a/b", "a_b"), ("x.jpg", "x_jpg"), ("a/b", "a.b"), ("a b", "a/b"),
                                 ("x" * 200 + "1", "x" * 200 + "2"), ("", "x"), ("_a", "a")])
def test_safe_key_keeps_distinct_inputs_distinct(a, b):
    assert safe_key(a) != safe_key(b)


def test_safe_key_is_injective_on_many_random_names():
    rng = random.Random(0)
    alphabet = "ab_-./ é"
    names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(3000)}
    keys = {safe_key(name) for name in names}
    assert len(keys) == len(names)
    assert all(KEY.match(key) for key in keys)


def test_safe_key_caps_length():
    for length in (MAX_KEY_LENGTH + 1, 200, 5000):
        key = safe_key("a" * length)
        assert len(key) == MAX_KEY_LENGTH
        assert KEY.match(key)
    assert len(safe_key("é" * 500)) <= MAX_KEY_LENGTH


def test_pair_key_format():
    assert pair_key("000000000139", 3) == "000000000139_n0003"
    assert pair_key("k", 0) == "k_n0000"
    assert pair_key("k", 9999) == "k_n9999"
    assert pair_key("k", 12345) == "k_n12345"
    keys = [pair_key("img", i) for i in range(120)]
    assert keys == sorted(keys)  # zero padding keeps noun order in sorted listings
    assert all(KEY.match(key) for key in keys)
    assert pair_key(safe_key("a/b.jpg"), 7).endswith("_n0007")
