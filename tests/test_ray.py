"""The Ray executor on ../shared/data/coco-val-mini: the same bytes as the local executor for any
number of workers, exactly-once output after kill -9 and after losing a cluster node, one run per
output folder."""

from __future__ import annotations

import filecmp
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from readback import check_corpus

from dataengine.config import MineConfig, SourceConfig
from dataengine.pipeline import mine

SAMPLES_PER_SHARD = 16


def coco_job(coco_mini, out, executor: str) -> MineConfig:
    source = SourceConfig(type="coco", images=str(coco_mini / "images"), captions=str(coco_mini / "captions.json"),
                          instances=str(coco_mini / "instances.json"))
    config = MineConfig(source=source, out=str(out), progress=False, executor=executor)
    config.proposals.generator = "annotations"
    config.match.clip = "dataengine-tiny"
    config.write.samples_per_shard = SAMPLES_PER_SHARD
    return config


def cli_args(coco_mini, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dataengine", "mine", "--source", "coco", "--images", str(coco_mini / "images"),
            "--captions", str(coco_mini / "captions.json"), "--instances", str(coco_mini / "instances.json"),
            "--proposals", "annotations", "--clip", "dataengine-tiny", "--samples-per-shard", str(SAMPLES_PER_SHARD),
            "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(coco_mini, tmp_path_factory) -> Path:
    """An uninterrupted run of the in-process executor."""
    config = coco_job(coco_mini, tmp_path_factory.mktemp("reference"), "local")
    mine(config)
    return Path(config.out)


def image_keys(coco_mini) -> set[str]:
    return {f"{image['id']:012d}" for image in json.loads((coco_mini / "captions.json").read_text())["images"]}


def assert_same_output(out: Path, reference: Path) -> None:
    """Same shard files, byte for byte (keys, KEY.json, crops), and the same rejects."""
    names = sorted(path.name for path in (reference / "shards").glob("*.tar"))
    assert sorted(path.name for path in (out / "shards").glob("*.tar")) == names
    for name in names:
        assert filecmp.cmp(out / "shards" / name, reference / "shards" / name, shallow=False), name
    for folder in ("index", "rejects"):
        import pyarrow.parquet as pq

        ours = sorted(path.name for path in (out / folder).glob("*.parquet"))
        assert ours == sorted(path.name for path in (reference / folder).glob("*.parquet"))
        for name in ours:
            assert pq.read_table(out / folder / name).equals(pq.read_table(reference / folder / name))


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_output_equals_local_output(workers, coco_mini, reference, tmp_path):
    config = coco_job(coco_mini, tmp_path / "out", "ray")
    config.ray.num_cpus = workers
    config.ray.temp_dir = tempfile.mkdtemp(prefix="de-ray-")
    manifest = mine(config)
    assert manifest["counts"]["images"] == 127 and manifest["stages"]["match"]["samples_in"] > 0
    check_corpus(Path(config.out), image_keys(coco_mini))
    assert_same_output(Path(config.out), reference)
    assert_same_filtered_output(Path(config.out), reference, tmp_path)


def assert_same_filtered_output(out: Path, reference: Path, tmp_path: Path) -> None:
    """The corpus-level per-noun cap and quantile choose the same pairs whichever executor mined."""
    from dataengine.config import FilterConfig
    from dataengine.postpass import filter_corpus

    for corpus, name in ((out, "filtered"), (reference, "filtered-reference")):
        filter_corpus(FilterConfig(corpus=str(corpus), out=str(tmp_path / name), noun_quantile=0.3,
                                   max_pairs_per_noun=2, progress=False))
    assert_same_output(tmp_path / "filtered", tmp_path / "filtered-reference")


def kill_tree(process: subprocess.Popen, temp_dir: str) -> None:
    """kill -9 the run's process group, and any Ray process of its session that left the group."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    for leftover in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in leftover.info["cmdline"] or []):
            leftover.kill()


def wait_for(condition, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended early with status {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_kill_9_then_rerun_gives_the_uninterrupted_output(coco_mini, reference, tmp_path):
    seed = int(time.time())
    delay = random.Random(seed).uniform(0.0, 8.0)  # from the first finished shard to near the last (~12 s here)
    print(f"kill -9 {delay:.2f} s after the first finished shard (seed {seed})")
    out = tmp_path / "out"
    temp_dir = tempfile.mkdtemp(prefix="de-kill-")
    run = subprocess.Popen(cli_args(coco_mini, out, "--workers", "2", "--ray-temp-dir", temp_dir),
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any((out / "stats").glob("*.json")), 180, run)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and run.poll() is None and not (out / "manifest.json").exists():
            time.sleep(0.05)
        if run.poll() is not None or (out / "manifest.json").exists():
            pytest.skip(f"the run finished within {delay:.1f} s: nothing left to interrupt")
    finally:
        kill_tree(run, temp_dir)
    finished = len(list((out / "stats").glob("*.json")))
    assert finished < 8
    for tar in (out / "shards").glob("*.tar"):  # whatever is visible is whole: written aside, then renamed
        with tarfile.open(tar) as archive:
            assert all(archive.extractfile(member).read() is not None for member in archive.getmembers())

    manifest = mine(coco_job(coco_mini, out, "ray"))
    assert manifest["resumed_shards"] == finished
    check_corpus(out, image_keys(coco_mini))
    assert_same_output(out, reference)


def test_losing_a_cluster_node_mid_run_still_gives_the_uninterrupted_output(coco_mini, reference, tmp_path):
    from ray.cluster_utils import Cluster

    os.makedirs(os.path.join(tempfile.gettempdir(), "ray"), exist_ok=True)  # Cluster notes its address there
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "temp_dir": tempfile.mkdtemp(prefix="de-cl-")})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    out = tmp_path / "out"
    run = subprocess.Popen(cli_args(coco_mini, out, "--ray-address", cluster.address, "--images-per-batch", "2"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any((out / "stats").glob("*.json")), 180, run)
        cluster.remove_node(worker, allow_graceful=False)  # as a crashed machine: no chance to clean up
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
        cluster.shutdown()
    assert len(list((out / "stats").glob("*.json"))) == 8
    check_corpus(out, image_keys(coco_mini))
    assert_same_output(out, reference)


def test_a_second_concurrent_run_into_the_same_folder_refuses(coco_mini, tmp_path):
    out = tmp_path / "out"
    temp_dir = tempfile.mkdtemp(prefix="de-lock-")
    first = subprocess.Popen(cli_args(coco_mini, out, "--ray-temp-dir", temp_dir), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "pid" in ((out / ".lock").read_text() if (out / ".lock").exists() else ""), 120, first)
        second = subprocess.run(cli_args(coco_mini, out, "--executor", "local"), capture_output=True, text=True,
                                timeout=120)
    finally:
        kill_tree(first, temp_dir)
    assert second.returncode == 2
    error = [line for line in second.stderr.splitlines() if not line.startswith("WARNING")]
    assert len(error) == 1, second.stderr
    assert "is being written by another dataengine run" in error[0] and f"pid {first.pid}" in error[0]
