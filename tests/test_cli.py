"""The command line: complete --help, one-line errors with exit status 2, a real mining run, inspect."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from readback import check_corpus

from dataengine.cli import MINE_FLAGS, build_parser, main


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", ["mine", "inspect", "demo"])
def test_every_option_has_help(command):
    parser = build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        if action.option_strings:
            assert action.help and len(action.help) > 8, f"{command} {action.option_strings} has no help"
    text = subparser.format_help()
    if command == "mine":
        for flag in MINE_FLAGS:
            assert flag.name in text


def _stated_default_matches(help_text: str, default) -> bool:
    """A help text shows the real default: `(default: V...)` where V, read as the default's type, is it."""
    stated = help_text.partition("(default: ")[2]
    if not stated:
        return False
    token = stated.split(";")[0].split(",")[0].rstrip(")").strip()
    try:
        return type(default)(token) == default
    except ValueError:  # a description of an automatic default, not a value
        return True


def test_every_scalar_default_is_shown_and_true():
    from dataclasses import fields

    from dataengine.cli import dotted_default, help_with_default
    from dataengine.config import MineConfig
    from finetune.cli import TRAIN_HELP
    from finetune.config import TrainConfig

    mine_defaults = MineConfig().to_dict()
    checked = 0
    for flag in MINE_FLAGS:
        default = dotted_default(flag.key, mine_defaults)
        if default is not None and not isinstance(default, bool):
            assert _stated_default_matches(help_with_default(flag.help, default), default), flag.name
            checked += 1
    train_defaults = TrainConfig()
    for item in fields(TrainConfig):
        default = getattr(train_defaults, item.name)
        if default not in (None, "") and not isinstance(default, bool):
            assert _stated_default_matches(help_with_default(TRAIN_HELP[item.name][1], default), default), item.name
            checked += 1
    assert checked > 25
    assert help_with_default("regions per forward", 8) == "regions per forward (default: 8)"
    assert help_with_default("workers (default: all cores)", 2) == "workers (default: all cores)"


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("mine", "inspect", "demo"):
        assert command in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mine", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["mine", "--limit", "many"], "invalid int value"),
        (["mine", "--source", "ftp"], "invalid choice"),
        (["mine", "--source", "coco", "--images", "/nonexistent/images", "--captions", "x.json", "--out", "o"],
         "--images: no such folder: /nonexistent/images"),
        (["mine", "--source", "folder", "--images", ".", "--out", "o"], "--captions: required for --source folder"),
        (["mine", "--images", ".", "--captions", "x"], "out: an output folder is required"),
        (["mine", "--config", "no-such-pipeline", "--out", "o"], "no such file or packaged pipeline"),
        (["mine", "--set", "proposals.bogus=1", "--out", "o"], "proposals.bogus: unknown setting"),
        (["mine", "--set", "proposals.mask_threshold=3", "--out", "o"], "proposals.mask_threshold: must be a number"),
        (["mine", "--proposals", "magic", "--images", ".", "--captions", "x", "--out", "o"], "unknown generator"),
        (["inspect", "/nonexistent/corpus"], "is not a mined corpus"),
        (["mine", "--set", "nouns.extra_drop_nouns=car", "--out", "o"], "nouns.extra_drop_nouns: expected a list of str"),
        (["mine", "--max-captions", "0", "--out", "o"], "nouns.max_captions_per_image: must be a positive integer"),
        (["mine", "--set", "proposals.classical.slic_segments=[0]", "--out", "o"], "slic_segments[0]"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err + out


def test_bad_clip_and_device_are_one_line_errors(capsys, tmp_path, coco_mini):
    base = ["mine", "--images", str(coco_mini / "images"), "--captions", str(coco_mini / "captions.json"),
            "--out", str(tmp_path / "o"), "--no-progress", "--limit", "1", "--executor", "local"]
    code, _, err = run_cli(base + ["--clip", "NoSuchModel-7"], capsys)
    assert code == 2 and "unknown open_clip model" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(base + ["--clip", "dataengine-tiny@/nonexistent/weights.pt"], capsys)
    assert code == 2 and "--clip: cannot load" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(base + ["--device", "tpu"], capsys)
    assert code == 2 and "device: expected auto, cpu, cuda or cuda:N" in err


def test_module_entry_point_exit_status():
    result = subprocess.run([sys.executable, "-m", "dataengine", "mine", "--nope"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_mine_then_inspect(capsys, tmp_path, coco_mini):
    out = tmp_path / "corpus"
    argv = ["mine", "--source", "coco", "--images", str(coco_mini / "images"), "--captions",
            str(coco_mini / "captions.json"), "--instances", str(coco_mini / "instances.json"),
            "--proposals", "annotations", "--out", str(out), "--limit", "6", "--max-captions", "1",
            "--min-score", "-1", "--one-to-one", "--batch-size", "7", "--device", "cpu", "--no-progress",
            "--samples-per-shard", "4", "--set", "write.jpeg_quality=90", "--executor", "local", "--clip", "dataengine-tiny"]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0
    assert "mined" in stdout and "inspect with" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    config = manifest["config"]
    assert config["limit"] == 6 and config["nouns"]["max_captions_per_image"] == 1
    assert config["match"]["one_to_one"] is True and config["match"]["batch_size"] == 7
    assert config["write"]["jpeg_quality"] == 90 and config["write"]["samples_per_shard"] == 4
    assert manifest["versions"]["torch"] and manifest["models"]["proposals"] == "annotations"
    images = sorted(json.loads((coco_mini / "captions.json").read_text())["images"], key=lambda image: image["id"])
    keys = {f"{image['id']:012d}" for image in images[:6]}
    check_corpus(out, keys)

    assert run_cli(argv, capsys)[0] == 0  # the same job again: every shard is done, nothing is redone
    rerun = json.loads((out / "manifest.json").read_text())
    assert rerun["resumed_shards"] == len(rerun["shards"]) == 2 and rerun["counts"] == manifest["counts"]
    changed = [arg if arg != "--one-to-one" else "--max-pairs-per-image=2" for arg in argv]
    code, _, err = run_cli(changed, capsys)  # other settings: refused, the corpus is left as it is
    assert code == 2 and "--overwrite" in err and "match.max_pairs_per_image" in err
    assert run_cli(changed + ["--overwrite"], capsys)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["match"]["max_pairs_per_image"] == 2

    code, stdout, _ = run_cli(["inspect", str(out)], capsys)
    assert code == 0
    assert f"pairs {manifest['counts']['pairs']}" in stdout and "top nouns" in stdout and "sample pairs" in stdout
    code, stdout, _ = run_cli(["inspect", str(out), "--json", "--top", "3"], capsys)
    summary = json.loads(stdout)
    assert summary["pairs"] == manifest["counts"]["pairs"] and len(summary["top_nouns"]) <= 3


def test_yaml_config_with_flag_overrides(capsys, tmp_path, coco_mini):
    yaml_path = tmp_path / "job.yaml"
    yaml_path.write_text(
        "source:\n"
        f"  type: coco\n  images: {coco_mini / 'images'}\n  captions: {coco_mini / 'captions.json'}\n"
        "proposals:\n  generator: classical\n  max_proposals: 5\n"
        "match:\n  clip: dataengine-tiny\n"
        f"out: {tmp_path / 'from-yaml'}\n"
        "limit: 50\n"
    )
    out = tmp_path / "from-flag"
    code, _, _ = run_cli(["mine", "--config", str(yaml_path), "--out", str(out), "--limit", "2", "--no-progress",
                          "--executor", "local"], capsys)
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["limit"] == 2 and manifest["config"]["proposals"]["max_proposals"] == 5
    assert manifest["counts"]["images"] == 2
    assert not (tmp_path / "from-yaml").exists()


def test_demo_runs_offline(capsys, tmp_path):
    code, stdout, _ = run_cli(["demo", "--photos", "--out", str(tmp_path / "demo"), "--no-progress"], capsys)
    assert code == 0
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 18 and manifest["counts"]["pairs"] > 0
    assert "top nouns" in stdout


def folder_job(root):
    images = root / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 20, 20)).save(images / "a.png")
    (root / "captions.jsonl").write_text('{"image": "a.png", "caption": "A red box."}\n')
    return ["mine", "--source", "folder", "--images", str(images), "--captions", str(root / "captions.jsonl"),
            "--clip", "dataengine-tiny", "--executor", "local", "--no-progress"]


def test_out_must_be_a_folder_of_ours(capsys, tmp_path):
    job = folder_job(tmp_path)
    (tmp_path / "a-file").write_text("x")
    code, _, err = run_cli(job + ["--out", str(tmp_path / "a-file")], capsys)
    assert code == 2 and "is a file" in err and len(err.strip().splitlines()) == 1
    theirs = tmp_path / "their-folder"
    (theirs / "index").mkdir(parents=True)
    (theirs / "index" / "precious.txt").write_text("keep me")
    code, _, err = run_cli(job + ["--out", str(theirs)], capsys)
    assert code == 2 and "not written by dataengine" in err
    assert (theirs / "index" / "precious.txt").read_text() == "keep me"
    assert run_cli(job + ["--out", str(tmp_path / "ours")], capsys)[0] == 0
    assert run_cli(job + ["--out", str(tmp_path / "ours")], capsys)[0] == 0  # resumes its own folder


def test_a_second_run_into_a_locked_folder_refuses(capsys, tmp_path):
    from dataengine.output import OutputFolder

    job = folder_job(tmp_path) + ["--out", str(tmp_path / "out")]
    with OutputFolder(tmp_path / "out").locked():  # another run holds the folder
        code, _, err = run_cli(job, capsys)
    assert code == 2 and "is being written by another dataengine run" in err and f"pid {os.getpid()}" in err
    assert run_cli(job, capsys)[0] == 0
