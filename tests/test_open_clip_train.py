"""open_clip's own trainer reads the mined shards unchanged: a real client, not our reader.

Mines the COCO sample into several shards, exports the package's tiny CLIP as an open_clip
`local-dir:` folder, and runs `python -m open_clip_train.main --dataset-type webdataset` for one
full epoch over every pair (so the reader crosses the end of every shard), which must finish and
save a checkpoint. This is the environment `.ci/run` installs (webdataset pinned to what
open_clip_train supports)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from dataengine.config import MineConfig, SourceConfig
from dataengine.export import CONFIG_FILE, WEIGHTS_FILE, export_open_clip
from dataengine.pipeline import mine

pytestmark = pytest.mark.skipif(importlib.util.find_spec("open_clip_train") is None,
                                reason="open_clip_train is not installed (pip install -e '.[training]')")
BATCH = 4


@pytest.fixture(scope="module")
def mined(coco_mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("otrain") / "corpus"
    source = SourceConfig(type="coco", images=str(coco_mini / "images"), captions=str(coco_mini / "captions.json"))
    config = MineConfig(source=source, out=str(out), progress=False, executor="local", limit=24)
    config.match.clip = "dataengine-tiny"
    config.proposals.max_proposals = 8
    config.proposals.classical.work_size = 160
    config.write.samples_per_shard = 8  # three shards
    return out, mine(config)["counts"]


def test_export_is_an_open_clip_local_dir(tmp_path, tiny_clip):
    import open_clip
    import torch

    folder = export_open_clip("dataengine-tiny", tmp_path / "tiny")
    assert (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
    model = open_clip.create_model(f"local-dir:{folder}").eval()  # open_clip alone, no dataengine registry
    pixels = torch.rand(2, 3, tiny_clip.image_size, tiny_clip.image_size)
    with torch.inference_mode():
        assert torch.allclose(model.encode_image(pixels), tiny_clip.model.encode_image(pixels), atol=1e-6)


def test_open_clip_train_runs_a_full_epoch_on_the_shards(mined, tmp_path):
    out, counts = mined
    shards = sorted((out / "shards").glob("pairs-*.tar"))
    assert len(shards) >= 3 and counts["pairs"] >= 3 * BATCH
    model_dir = export_open_clip("dataengine-tiny", tmp_path / "model")
    pattern = str(out / "shards" / f"pairs-{{000000..{len(shards) - 1:06d}}}.tar")
    command = [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "webdataset",
               "--train-data", pattern, "--train-num-samples", str(counts["pairs"]),
               "--model", f"local-dir:{model_dir}", "--batch-size", str(BATCH), "--epochs", "1",
               "--workers", "1", "--device", "cpu", "--precision", "fp32", "--lr", "1e-5", "--warmup", "1",
               "--logs", str(tmp_path / "logs"), "--name", "run", "--save-frequency", "1", "--log-every-n-steps", "1",
               "--seed", "0"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "KeyError" not in log
    assert (tmp_path / "logs" / "run" / "checkpoints" / "epoch_1.pt").is_file(), log[-2000:]
    # open_clip logs "[samples seen/samples per epoch (percent)]"; the last step reaches 100%
    progress = re.findall(r"Train Epoch: 0 \[\s*(\d+)/(\d+) \((\d+)%\)\]", log)
    assert progress and progress[-1][2] == "100", log[-2000:]
    # the epoch asks for more batches than the shards hold (open_clip rounds up, drops the partial
    # batch), so the reader runs to the end of the last shard: every pair is read
    assert int(progress[-1][1]) == -(-counts["pairs"] // BATCH) * BATCH >= counts["pairs"]


def test_export_clip_command(tmp_path, capsys):
    import open_clip

    from dataengine.cli import main

    assert main(["export-clip", "--clip", "dataengine-tiny", "--out", str(tmp_path / "tiny")]) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert open_clip.create_model(f"local-dir:{tmp_path / 'tiny'}") is not None
    assert main(["export-clip", "--clip", "dataengine-tiny", "--out", str(tmp_path / "tiny")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    (tmp_path / "run").mkdir()
    assert main(["export-clip", "--clip", str(tmp_path / "run"), "--out", str(tmp_path / "x")]) == 2


def test_import_dataengine_registers_its_models_with_open_clip():
    code = ("import open_clip; before = set(open_clip.list_models()); import dataengine; "
            "print(sorted({'dataengine-tiny', 'dataengine-world'} & (set(open_clip.list_models()) - before)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "['dataengine-tiny', 'dataengine-world']", result.stderr[-2000:]


def test_export_of_a_finetune_run_carries_its_trained_weights(tmp_path, capsys):
    import open_clip
    import torch
    from pairs import write_pair_shards

    from dataengine.cli import main

    shards = write_pair_shards(tmp_path / "shards", pairs=8, per_shard=8, size=64)
    run = tmp_path / "run"
    assert main(["finetune", "--shards", shards, "--clip", "dataengine-tiny", "--mode", "ft", "--epochs", "1",
                 "--batch-size", "4", "--ft-lr", "1e-3", "--out", str(run), "--no-progress"]) == 0
    assert main(["export-clip", "--clip", str(run), "--out", str(tmp_path / "export")]) == 0, capsys.readouterr().err
    exported = open_clip.create_model(f"local-dir:{tmp_path / 'export'}").state_dict()
    trained = torch.load(run / "model.pt", weights_only=True)
    untrained = open_clip.create_model("dataengine-tiny").state_dict()
    name = "visual.conv1.weight"
    assert torch.equal(exported[name], trained[name]) and not torch.equal(exported[name], untrained[name])
