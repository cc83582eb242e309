"""Ray executor scaling and memory, measured in one run on the same inputs.

1. Throughput of the CPU-bound classical-proposal pipeline with 1 vs 2 Ray workers: each run is
   `dataengine mine --workers N` with its whole process tree pinned to N cores, so that "1 worker"
   really is one core of compute. Throughput is the manifest's images/s (Ray start-up excluded).
2. Peak memory, summed over every process of the run (driver, Ray's own processes, workers) and
   sampled every 0.2 s, for N vs 4N input images (2 workers): a streaming run must not grow with
   the dataset.

    python bench/bench_ray.py [--images 127] [--memory-images 30] [--clip dataengine-tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import offline_environment, require_coco_mini


def write_input(coco: Path, folder: Path, count: int) -> Path:
    """A folder-source table of `count` COCO images (repeated under new ids when count > 127)."""
    captions = json.loads((coco / "captions.json").read_text())
    texts: dict[int, list[str]] = {}
    for annotation in captions["annotations"]:
        texts.setdefault(annotation["image_id"], []).append(annotation["caption"])
    images = sorted(captions["images"], key=lambda image: image["id"])
    rows = [{"id": f"r{i // len(images)}-{images[i % len(images)]['id']}",
             "image": images[i % len(images)]["file_name"],
             "captions": texts.get(images[i % len(images)]["id"], [])} for i in range(count)]
    table = folder / f"input-{count}.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return table


class TreeMemory:
    """Peak of the summed RSS (and PSS, which counts shared memory once) of a process tree."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.peak_rss = self.peak_pss = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        import psutil

        while not self.stop.is_set():
            rss = pss = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    info = process.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def mine(coco: Path, table: Path, out: Path, workers: int, clip: str) -> tuple[dict, TreeMemory]:
    command = [sys.executable, "-m", "dataengine", "mine", "--source", "folder", "--images", str(coco / "images"),
               "--captions", str(table), "--id-column", "id", "--proposals", "classical", "--clip", clip,
               "--executor", "ray", "--workers", str(workers), "--samples-per-shard", "16", "--no-progress",
               "--out", str(out), "--ray-temp-dir", tempfile.mkdtemp(prefix="de-bench-")]
    cores = set(sorted(os.sched_getaffinity(0))[:workers])
    run = subprocess.Popen(command, preexec_fn=lambda: os.sched_setaffinity(0, cores),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(run.pid)
    _, errors = run.communicate()
    memory.close()
    if run.returncode:
        sys.exit(f"mining failed:\n{errors[-2000:]}")
    return json.loads((out / "manifest.json").read_text()), memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=127, help="images of the throughput runs (default: 127, all)")
    parser.add_argument("--memory-images", type=int, default=30, help="N of the N vs 4N memory runs (default: 30)")
    parser.add_argument("--clip", default="dataengine-tiny", help="open_clip spec (default: the tiny seeded model)")
    args = parser.parse_args()
    offline_environment()
    coco = require_coco_mini()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs at least 2 cores")
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    throughput_input = write_input(coco, work, args.images)
    small, large = write_input(coco, work, args.memory_images), write_input(coco, work, 4 * args.memory_images)

    one, _ = mine(coco, throughput_input, work / "one", 1, args.clip)
    two, _ = mine(coco, throughput_input, work / "two", 2, args.clip)
    n, memory_small = mine(coco, small, work / "small", 2, args.clip)
    four_n, memory_large = mine(coco, large, work / "large", 2, args.clip)

    print(f"classical pipeline, {args.images} COCO images, --clip {args.clip}, {os.cpu_count()} cores")
    print(f"1 worker (1 core) : {one['images_per_second']:6.2f} images/s")
    print(f"2 workers (2 cores): {two['images_per_second']:6.2f} images/s")
    print(f"speed-up 2 vs 1 workers: {two['images_per_second'] / one['images_per_second']:.2f}x")
    for label, memory, manifest in ((f"N  = {args.memory_images:4d}", memory_small, n),
                                    (f"4N = {4 * args.memory_images:4d}", memory_large, four_n)):
        print(f"peak memory, {label} images: RSS {memory.peak_rss / 2**20:7.0f} MiB, PSS {memory.peak_pss / 2**20:7.0f} MiB"
              f"  ({manifest['counts']['images']} images, {manifest['counts']['pairs']} pairs)")
    print(f"peak RSS 4N / N: {memory_large.peak_rss / memory_small.peak_rss:.2f}  "
          f"(PSS {memory_large.peak_pss / memory_small.peak_pss:.2f})")


if __name__ == "__main__":
    main()
