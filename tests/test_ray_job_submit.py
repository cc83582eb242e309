"""The README's `ray job submit` recipe, run as written against a real local cluster.

Starts `ray start --head` on 127.0.0.1 in a temp dir, submits the README's command (with the COCO
sample, the tiny CLIP and a few images in place of the full data set), and checks that the job's
shards are byte-identical to `--executor local`. Only the processes this test started are stopped,
by their ids: never `ray stop`, which would end every Ray on the machine."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from test_ray import assert_same_output

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 4
SMALL = ["--clip", "dataengine-tiny", "--limit", str(IMAGES), "--max-proposals", "16", "--no-progress"]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("aiohttp") is None or shutil.which("ray") is None,
                                reason="ray[default] is not installed (pip install -e '.[cluster]')")


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's cluster recipe (the bash block that holds `ray job submit`)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    block = next(block for block in blocks if "ray job submit" in block)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def submit_command(coco_mini: Path, out: Path, dashboard: int, hf_home: Path) -> list[str]:
    command = next(words for words in readme_commands() if words[:3] == ["ray", "job", "submit"])
    replace = {"http://HEAD:8265": f"http://127.0.0.1:{dashboard}", "/data/coco/train2017": str(coco_mini / "images"),
               "/data/coco/annotations/captions_train2017.json": str(coco_mini / "captions.json"),
               "/shared/out/coco": str(out)}
    words = [replace.get(word, word.replace("/shared/hf", str(hf_home))) for word in command]
    assert words[words.index("--") + 1 : words.index("--") + 3] == ["dataengine", "mine"]
    return words + SMALL


def local_command(coco_mini: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "dataengine", "mine", "--config", "coco_captions", "--executor", "local",
            "--images", str(coco_mini / "images"), "--captions", str(coco_mini / "captions.json"),
            *SMALL, "--out", str(out)]


def head_processes(temp_dir: str, gcs_port: int) -> list[psutil.Process]:
    """Every process of the cluster this test started, and their children: their command lines name its
    temp dir or its GCS port (the client-server proxy names only the port)."""
    gcs = re.compile(rf"--(gcs-)?address=[\d.]+:{gcs_port}$")
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(temp_dir in part or gcs.match(part) for part in cmdline):
            found[process.pid] = process
            found.update({child.pid: child for child in process.children(recursive=True)})
    return list(found.values())


def stop(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=15)
    for process in alive:
        process.kill()


@pytest.fixture()
def head_node(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    ports = {"port": free_port(), "dashboard": free_port()}
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    start = ["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(ports["port"]),
             "--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports["dashboard"]),
             "--ray-client-server-port", str(free_port()), "--temp-dir", temp_dir, "--num-cpus", "2",
             "--disable-usage-stats"]
    assert ["ray", "start", "--head", "--include-dashboard=true"] in readme_commands()
    result = subprocess.run(start, capture_output=True, text=True, timeout=180, env=env)
    try:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        yield ports["dashboard"], env
    finally:
        stop(head_processes(temp_dir, ports["port"]))
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_readme_ray_job_submit_equals_local_executor(coco_mini, head_node, tmp_path):
    dashboard, env = head_node
    job_out, local_out = tmp_path / "job", tmp_path / "local"
    job = subprocess.run(submit_command(coco_mini, job_out, dashboard, tmp_path / "hf"), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    log = job.stdout[-4000:] + job.stderr[-4000:]
    assert job.returncode == 0 and "succeeded" in job.stdout, log
    local = subprocess.run(local_command(coco_mini, local_out), capture_output=True, text=True, timeout=600, env=env)
    assert local.returncode == 0, local.stderr[-3000:]
    assert (job_out / "manifest.json").is_file()
    assert_same_output(job_out, local_out)
