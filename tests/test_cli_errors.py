"""Bad output folders, Ray settings, config files and corpora are one line on stderr and exit status
2, never a traceback or a hang; `inspect` never prints raw control characters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataengine.cli import main
from dataengine.output import LOCK_FILE
from dataengine.schema import arrow_schema


def one_line_error(argv, capsys, contains: str) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert contains in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def job(tmp_path) -> list[str]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(images / "a.png")
    (tmp_path / "captions.jsonl").write_text('{"image": "a.png", "caption": "A red box."}\n')
    return ["mine", "--source", "folder", "--images", str(images), "--captions", str(tmp_path / "captions.jsonl"),
            "--clip", "dataengine-tiny", "--executor", "local", "--no-progress"]


NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]


def test_an_unwritable_out(job, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes into read-only folders: run the CLI as an unprivileged user
        unwritable_out_as_nobody()
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        one_line_error(job + ["--out", str(locked / "out")], capsys, "cannot write")
        one_line_error(job + ["--out", str(locked)], capsys, "cannot write")
    finally:
        locked.chmod(0o700)


def unwritable_out_as_nobody() -> None:
    """The same checks in a subprocess as uid/gid 65534 (setpriv), on inputs in a folder that user
    can read (pytest's own temporary folders are root's alone)."""
    import shutil
    import tempfile

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: cannot drop privileges")
    root = Path(tempfile.mkdtemp(prefix="dataengine-nobody-"))
    try:
        root.chmod(0o755)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "LANG": "C.UTF-8"}

        def as_nobody(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run([setpriv, *NOBODY, sys.executable, *argv], capture_output=True, text=True,
                                  cwd=root, env=env, timeout=300)

        probe = as_nobody("-c", "import dataengine")
        if probe.returncode != 0:
            pytest.skip(f"the venv is not usable by uid 65534: {probe.stderr.strip().splitlines()[-1:]}")
        images = root / "images"
        images.mkdir()
        Image.new("RGB", (40, 30), (200, 20, 20)).save(images / "a.png")
        (root / "captions.jsonl").write_text('{"image": "a.png", "caption": "A red box."}\n')
        for path in (images / "a.png", root / "captions.jsonl"):
            path.chmod(0o644)
        images.chmod(0o755)
        locked = root / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        argv = ["-m", "dataengine", "mine", "--source", "folder", "--images", str(images), "--captions",
                str(root / "captions.jsonl"), "--clip", "dataengine-tiny", "--executor", "local", "--no-progress"]
        for out in (locked / "out", locked):
            result = as_nobody(*argv, "--out", str(out))
            errors = [line for line in result.stderr.strip().splitlines() if not line.startswith("WARNING ")]
            assert result.returncode == 2, result.stderr[-2000:]
            assert len(errors) == 1 and "cannot write" in errors[0], result.stderr[-2000:]
            assert "Traceback" not in result.stderr + result.stdout
        assert os.listdir(locked) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_an_out_that_cannot_be_a_folder(job, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    one_line_error(job + ["--out", str(tmp_path / "a-file" / "out")], capsys, "cannot write")
    one_line_error(job + ["--out", "/proc/self/x"], capsys, "cannot write")


def test_an_out_with_a_symlinked_subfolder_is_refused(job, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(job + ["--out", str(out)]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep me")
    for shard in (out / "shards").iterdir():
        shard.unlink()
    (out / "shards").rmdir()
    (out / "shards").symlink_to(elsewhere)
    for extra in ([], ["--overwrite"], ["--min-score", "0.5"]):
        one_line_error(job + ["--out", str(out), *extra], capsys, "symbolic link")
    assert [path.name for path in elsewhere.iterdir()] == ["keep.txt"]
    assert not (out / LOCK_FILE).exists()


@pytest.mark.parametrize(("flags", "contains"), [
    (["--actor-gpus", "-1"], "ray.actor_gpus"),
    (["--set", "ray.actor_cpus=-2"], "ray.actor_cpus"),
    (["--set", "ray.num_gpus=-1"], "ray.num_gpus"),
    (["--ray-temp-dir", "/tmp/" + "d" * 110], "ray.temp_dir"),
    (["--ray-temp-dir", "/tmp/" + "d" * 60], "ray.temp_dir"),
    (["--set", "mask_pixels_per_chunk=0"], "mask_pixels_per_chunk"),
])
def test_bad_ray_and_memory_settings(job, tmp_path, capsys, flags, contains):
    one_line_error(job + ["--out", str(tmp_path / "out"), *flags], capsys, contains)
    assert not (tmp_path / "out").exists()


def test_an_unreachable_ray_address_fails_within_its_timeout(job, tmp_path, capsys):
    argv = job[:-3] + ["--executor", "ray", "--no-progress", "--ray-address", "127.0.0.1:1",
                       "--set", "ray.connect_timeout_s=2", "--out", str(tmp_path / "out")]
    start = time.monotonic()
    one_line_error(argv, capsys, "no Ray cluster reachable at 127.0.0.1:1")
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out").exists()  # the folder it created for its lock is gone again


def test_a_ray_address_that_times_out(monkeypatch):
    import socket

    from dataengine.config import ConfigError
    from dataengine.executors.ray import check_reachable

    def silent(address, timeout):
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(ConfigError, match="within 0.5 s .timed out"):
        check_reachable("ray://10.0.0.1:10001", 0.5)
    with pytest.raises(ConfigError, match="expected auto, HOST:PORT"):
        check_reachable("no-port-here", 0.5)


def test_an_explicit_ray_address_wins_over_ray_address_in_the_environment(monkeypatch):
    """ray.init reads RAY_ADDRESS only for no address or "auto": so does the reachability check."""
    import socket

    from dataengine.executors.ray import check_reachable

    tried = []

    def connect(address, timeout):
        tried.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    from dataengine.config import ConfigError

    with pytest.raises(ConfigError, match="at 10.0.0.1:10001"):
        check_reachable("ray://10.0.0.1:10001", 0.5)
    with pytest.raises(ConfigError, match="at 10.0.0.2:6380"):
        check_reachable("10.0.0.2:6380", 0.5)
    with pytest.raises(ConfigError, match="at 10.9.9.9:6379"):  # auto: the environment's address
        check_reachable("auto", 0.5)
    assert tried == [("10.0.0.1", 10001), ("10.0.0.2", 6380), ("10.9.9.9", 6379)]


def test_a_config_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("nouns:\n  extra_drop_nouns: [caf\xe9]\n".encode("latin-1"))
    one_line_error(["mine", "--config", str(path), "--out", str(tmp_path / "o")], capsys, "not UTF-8")


def test_a_yaml_alias_bomb_under_a_known_key_is_a_quick_one_line_error(tmp_path):
    """Each level repeats the one before nine times: the value's repr would be 9^12 strings long."""
    levels = ["    - &a0 [" + ", ".join(["lol"] * 9) + "]\n"]
    levels += [f"    - &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]\n" for n in range(1, 12)]
    path = tmp_path / "bomb.yaml"
    path.write_text("nouns:\n  extra_drop_nouns:\n" + "".join(levels))
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dataengine", "mine", "--config", str(path), "--out",
                             str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 60
    assert result.returncode == 2, result.stderr[:500]
    assert len(result.stderr.strip().splitlines()) == 1 and len(result.stderr) < 400, result.stderr[:500]
    assert "nouns.extra_drop_nouns: expected a list of str" in result.stderr


def corpus(out: Path, caption: str = "A dog.", noun: str = "dog") -> Path:
    (out / "stats").mkdir(parents=True)
    (out / "index").mkdir()
    (out / "stats" / "000000.json").write_text(json.dumps({"images": 1}))
    row = {name: None for name in arrow_schema("index").names}
    row.update(key="k_n0000", shard=0, image_key="k", image_id="1", source="x", image_height=10, image_width=10,
               caption_id="0", caption=caption, noun=noun, span_start=0, span_end=3, mentions=1, score=0.5,
               margin=0.1, proposal_id=0, proposal_score=1.0, generator="classical", box=[0, 0, 1, 1], area=1,
               mask_counts="1", clip_model="c")
    pq.write_table(pa.Table.from_pylist([row], schema=arrow_schema("index")), out / "index" / "pairs-000000.parquet")
    return out


def test_inspect_a_corrupt_index_or_manifest(tmp_path, capsys):
    out = corpus(tmp_path / "a")
    (out / "index" / "pairs-000000.parquet").write_bytes(b"PAR1 not really parquet")
    one_line_error(["inspect", str(out)], capsys, "cannot read")
    out = corpus(tmp_path / "b")
    (out / "manifest.json").write_text("{ truncated")
    one_line_error(["inspect", str(out)], capsys, "manifest.json is damaged")
    out = corpus(tmp_path / "c")
    (out / "stats" / "000000.json").write_bytes(b"\xff\xfe")
    one_line_error(["inspect", str(out)], capsys, "000000.json is damaged")


def test_inspect_escapes_terminal_control_characters(tmp_path, capsys):
    hostile = "\x1b]0;pwned\x07A dog\x1b[2J on a \u202emat\x00"
    out = corpus(tmp_path / "c", caption=hostile, noun="dog\x1b[31m")
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "A dog" in printed and "\\x1b[2J" in printed
    for raw in ("\x1b", "\x07", "\u202e", "\x00"):
        assert raw not in printed
    assert main(["inspect", str(out), "--json"]) == 0
    assert "\x1b" not in capsys.readouterr().out
