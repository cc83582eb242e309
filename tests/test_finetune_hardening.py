"""`dataengine finetune` on hostile input: bad flags are one line and exit 2; damaged shards cost
only their damaged pairs (counted), with the step count and the resume position intact; MPT works
on plain jpg + txt shards."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from pairs import write_pair_shards
from PIL import Image

from dataengine.cli import main
from finetune.config import TrainConfig
from finetune.shards import Corpus, PairStream
from finetune.train import train

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def args(shards, out, *extra) -> list[str]:
    return ["finetune", "--shards", shards, "--clip", "dataengine-tiny", "--out", str(out), "--epochs", "1",
            "--batch-size", "4", "--workers", "0", "--prompt-depth", "2", "--no-progress", "--device", "cpu", *extra]


def one_line_error(code: int, capsys) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_pair_shards(tmp_path_factory.mktemp("pairs") / "shards", pairs=8, per_shard=8, size=64)


def test_out_that_is_a_file_is_one_line(shards, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert "is not a folder" in one_line_error(main(args(shards, tmp_path / "a-file")), capsys)
    assert "is not a folder" in one_line_error(main(args(shards, tmp_path / "a-file" / "run")), capsys)
    assert (tmp_path / "a-file").read_text() == "x"


@pytest.mark.parametrize("flag,value", [("--mpt-lr", "-1"), ("--mpt-lr", "0"), ("--ft-lr", "-0.00001"),
                                        ("--mpt-lr", "nan"), ("--ft-lr", "inf"), ("--ft-weight-decay", "-0.1"),
                                        ("--prompt-init-std", "0"), ("--vocab-loss-weight", "-1"),
                                        ("--epochs", "0"), ("--batch-size", "-4"), ("--grad-clip", "-1")])
def test_bad_numbers_are_one_line(shards, tmp_path, capsys, flag, value):
    line = one_line_error(main(args(shards, tmp_path / "run", flag, value)), capsys)
    assert flag in line and not (tmp_path / "run").exists()


def test_bench_batch_size_must_be_positive(tmp_path, capsys):
    line = one_line_error(main(["bench", "--dataset", "world", "--root", str(tmp_path), "--clip", "dataengine-tiny",
                                "--batch-size", "0", "--device", "cpu", "--out", str(tmp_path / "r.json")]), capsys)
    assert "--batch-size" in line


def member_offsets(path, data: bool = False) -> dict[str, int]:
    with tarfile.open(path) as tar:
        return {member.name: member.offset_data if data else member.offset for member in tar.getmembers()}


def corrupt_header(path, name: str) -> None:
    """Overwrites the checksum of one member's header (the last block before its data, after the
    PAX header webdataset writes): tar readers cannot trust that member any more."""
    offset = member_offsets(path, data=True)[name] - tarfile.BLOCKSIZE
    with open(path, "r+b") as handle:
        handle.seek(offset + 148)
        handle.write(b"garbage!")


def stream_all(pattern, **overrides):
    corpus = Corpus.scan(pattern)
    settings = dict(shuffle_buffer=0) | overrides
    batches = list(PairStream(corpus.shards, corpus.vocabulary, 64, MEAN, STD, 3, **settings))
    return corpus, batches


def test_one_corrupt_member_costs_only_its_pair(tmp_path):
    pattern = write_pair_shards(tmp_path / "shards", pairs=8, per_shard=8, size=64)
    tar = tmp_path / "shards" / "pairs-000000.tar"
    corrupt_header(tar, "img00003_n0000.jpg")
    corpus, batches = stream_all(pattern)
    keys = [key for batch in batches for key in batch["keys"]]
    assert keys == [f"img{i:05d}_n0000" for i in range(8) if i != 3]  # the rest of the shard is still read
    assert corpus.size == sum(batch["samples"] for batch in batches) == 8
    assert sum(batch["skipped"] for batch in batches) == 1


@pytest.mark.parametrize("member", ["img00003_n0000.txt", "img00003_n0000.mask.png"])
def test_a_pair_that_lost_its_txt_or_mask_is_skipped_and_counted(tmp_path, member):
    """No pair is trained on with a guessed mask, or dropped uncounted: the corpus, the stream and the
    skipped count agree."""
    pattern = write_pair_shards(tmp_path / "shards", pairs=8, per_shard=8, size=64)
    corrupt_header(tmp_path / "shards" / "pairs-000000.tar", member)
    corpus, batches = stream_all(pattern)
    assert [key for batch in batches for key in batch["keys"]] == [f"img{i:05d}_n0000" for i in range(8) if i != 3]
    assert corpus.size == sum(batch["samples"] for batch in batches) == 8
    assert sum(batch["skipped"] for batch in batches) == 1


def test_a_lost_txt_reaches_train_json_and_the_log(tmp_path, capsys):
    pattern = write_pair_shards(tmp_path / "shards", pairs=8, per_shard=8, size=64)
    corrupt_header(tmp_path / "shards" / "pairs-000000.tar", "img00005_n0000.txt")
    assert main(args(pattern, tmp_path / "run", "--log-every", "1")) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["corpus"]["pairs"] == 8
    assert summary["phases"][0]["skipped_pairs"] == 1 and summary["phases"][0]["pairs"] == 7
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["skipped"] == 1


def test_training_over_a_corrupt_member_counts_it_and_resumes_in_place(tmp_path):
    pattern = write_pair_shards(tmp_path / "shards", pairs=16, per_shard=8, size=64)
    corrupt_header(tmp_path / "shards" / "pairs-000001.tar", "img00010_n0000.mask.png")
    corrupt_header(tmp_path / "shards" / "pairs-000000.tar", "img00002_n0000.jpg")

    def config(out, **overrides):
        return TrainConfig(shards=pattern, out=str(out), clip="dataengine-tiny", epochs=2, batch_size=4, workers=0,
                           prompt_depth=2, log_every=1, progress=False, shuffle_buffer=8, **overrides)

    whole = train(config(tmp_path / "whole"))
    phase = whole["phases"][0]
    assert phase["steps"] == 2 * 4 and phase["skipped_pairs"] == 2 * 2  # the jpg's and the mask's pairs, per epoch
    assert phase["pairs"] == 2 * 14
    train(config(tmp_path / "parts", max_steps=3))
    assert train(config(tmp_path / "parts"), resume=True)["finished"]
    losses = [[json.loads(line)["loss"] for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
              for name in ("whole", "parts")]
    assert losses[0] == losses[1] and len(losses[0]) == 8


def test_a_truncated_tar_trains_on_what_it_holds(tmp_path, capsys):
    write_pair_shards(tmp_path / "shards", pairs=8, per_shard=8, size=64)
    tar = tmp_path / "shards" / "pairs-000000.tar"
    cut = member_offsets(tar)["img00005_n0000.jpg"] + 700  # inside that jpg's data
    tar.write_bytes(tar.read_bytes()[:cut])
    assert main(args(str(tar), tmp_path / "run")) == 0, capsys.readouterr().err
    phase = json.loads((tmp_path / "run" / "train.json").read_text())["phases"][0]
    assert phase["pairs"] == 5 and phase["skipped_pairs"] == 0


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_decompression_bomb_is_a_skipped_pair(tmp_path, capsys):
    write_pair_shards(tmp_path / "shards", pairs=4, per_shard=4, size=64)
    bomb = png(Image.new("1", (14000, 14000)))  # 196 Mpixels in a few tens of KB
    write_tar(tmp_path / "shards" / "pairs-000001.tar",
              {"bomb_n0000.png": bomb, "bomb_n0000.txt": b"square", "big_n0000.png": png(Image.new("1", (5000, 4000))),
               "big_n0000.txt": b"circle"})
    assert main(args(str(tmp_path / "shards"), tmp_path / "run")) == 0, capsys.readouterr().err
    phase = json.loads((tmp_path / "run" / "train.json").read_text())["phases"][0]
    assert phase["pairs"] == 4 and phase["skipped_pairs"] == 2
    assert "2 unreadable pairs skipped" in capsys.readouterr().out


def photo_shards(folder, pairs: int = 8) -> str:
    """Plain jpg + txt pairs, as any captioned photo set: no mask.png, no CLIP-mean background."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    members = {}
    for index in range(pairs):
        image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        members[f"photo{index:03d}.jpg"] = buffer.getvalue()
        members[f"photo{index:03d}.txt"] = ("dog", "cat")[index % 2].encode()
    write_tar(folder / "photos-000000.tar", members)
    return str(folder)


@pytest.mark.parametrize("mode", ["mpt", "ft+mpt"])
def test_mpt_on_plain_jpg_txt_shards_runs_and_says_it_had_nothing_to_learn(tmp_path, capsys, caplog, mode):
    shards = photo_shards(tmp_path / "photos")
    assert main(args(shards, tmp_path / "run", "--mode", mode)) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    phase = summary["phases"][-1]
    assert summary["finished"] and phase["phase"] == "mpt" and phase["steps"] >= 2
    assert phase["pairs_without_masked_patch"] == phase["pairs"] == 8
    assert (tmp_path / "run" / "prompts.pt").exists() and "prompts learned nothing" in caplog.text


def damaged_prompt_files(folder, visual) -> dict:
    import zipfile

    import torch

    from dataengine.prompts import MaskPromptedViT, save_prompts

    good = folder / "good.pt"
    save_prompts(good, MaskPromptedViT(visual, depth=2), "dataengine-tiny")
    saved = torch.load(good, weights_only=True)
    files = {}
    for name, change in {"no-depth": lambda d: d.pop("depth"), "no-prompts": lambda d: d.pop("prompts"),
                         "str-depth": lambda d: d.update(depth="2"), "flat": lambda d: d.update(prompts=torch.zeros(5)),
                         "deep": lambda d: d.update(depth=9, prompts=torch.zeros(9, 4, 8))}.items():
        copy = dict(saved)
        change(copy)
        torch.save(copy, folder / f"{name}.pt")
        files[name] = folder / f"{name}.pt"
    data = good.read_bytes()
    (folder / "zip-error.pt").write_bytes(data[: len(data) // 2])  # a cut zip
    with zipfile.ZipFile(folder / "bad-member.pt", "w") as archive:
        archive.writestr("archive/data.pkl", b"garbage")
    files |= {"zip-error": folder / "zip-error.pt", "bad-member": folder / "bad-member.pt", "folder": folder}
    return files


def test_a_damaged_prompt_file_is_one_line(tmp_path, capsys):
    from dataengine.clip import load_clip
    from dataengine.prompts import MPTError, read_prompt_file, wrap_with_prompts
    from finetune.world.scenes import generate_world

    visual = load_clip("dataengine-tiny", "cpu").model.visual
    files = damaged_prompt_files(tmp_path, visual)
    for name, path in files.items():
        with pytest.raises(MPTError) as error:  # a ConfigError: exit 2 with one line
            wrap_with_prompts(visual, path)
        assert str(path) in str(error.value) and "\n" not in str(error.value), name
    with pytest.raises(MPTError, match="--prompts"):
        read_prompt_file(files["no-depth"])
    world = tmp_path / "world"
    generate_world(world, scenes=2, seed=3, heldout=0.5)
    for name in ("no-depth", "zip-error"):
        code = main(["bench", "--dataset", "world", "--root", str(world / "heldout"), "--clip", "dataengine-tiny",
                     "--prompts", str(files[name]), "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r.json")])
        assert str(files[name]) in one_line_error(code, capsys)
