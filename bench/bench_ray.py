"""Ray executor scaling and memory, measured in one run on the same inputs.

1. Throughput of the CPU-bound classical-proposal pipeline with 1 vs 2 Ray workers: each run is
   `dataengine mine --workers N` with its whole process tree pinned to N cores, so that "1 worker"
   really is one core of compute. Throughput is the manifest's images/s (Ray start-up excluded).
2. Peak memory for N vs 4N input images (2 workers, annotation proposals so that 4N can be large:
   COCO images repeated under new ids), summed over every process of the run (driver, Ray's own
   processes, workers) and, apart, of the driver alone (it holds unfinished shards), sampled every
   0.2 s: a streaming run must not grow with the dataset.

3. With `--baseline DIR` (a checkout of another revision, e.g. `git worktree add /tmp/base REV`),
   every run above is made twice, first with DIR's code and then with this one's, and each figure
   is printed for both with its ratio: a before/after comparison measured in one run.

    python bench/bench_ray.py [--images 127] [--memory-images 127] [--clip dataengine-tiny] [--baseline DIR]
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


def write_coco_input(coco: Path, folder: Path, count: int) -> tuple[Path, Path]:
    """COCO captions and instances files listing `count` images: the 127 repeated under new ids."""
    captions = json.loads((coco / "captions.json").read_text())
    instances = json.loads((coco / "instances.json").read_text())
    images = sorted(captions["images"], key=lambda image: image["id"])
    chosen = [(i // len(images), images[i % len(images)]) for i in range(count)]
    new_id = {(rep, image["id"]): rep * 10_000_000 + image["id"] for rep, image in chosen}

    def repeat(annotations):
        return [{**a, "image_id": new_id[rep, a["image_id"]], "id": rep * 10_000_000 + a["id"]}
                for rep in {rep for rep, _ in chosen} for a in annotations if (rep, a["image_id"]) in new_id]

    listed = [{**image, "id": new_id[rep, image["id"]]} for rep, image in chosen]
    paths = []
    for name, data in (("captions", captions), ("instances", instances)):
        path = folder / f"{name}-{count}.json"
        path.write_text(json.dumps({**data, "images": listed, "annotations": repeat(data["annotations"])}))
        paths.append(path)
    return paths[0], paths[1]


class TreeMemory:
    """Peak of the summed RSS (and PSS, which counts shared memory once) of a process tree."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.peak_rss = self.peak_pss = self.peak_driver = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        import psutil

        while not self.stop.is_set():
            rss = pss = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
                self.peak_driver = max(self.peak_driver, self.root.memory_info().rss)
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


def mine(source: list[str], out: Path, workers: int, clip: str, code: Path | None = None) -> tuple[dict, TreeMemory]:
    """One `dataengine mine` run; `code`: a checkout whose packages it runs instead of this one's."""
    environment = {**os.environ, "PYTHONPATH": str(code)} if code else None
    command = [sys.executable, "-m", "dataengine", "mine", *source, "--clip", clip,
               "--executor", "ray", "--workers", str(workers), "--samples-per-shard", "16", "--no-progress",
               "--out", str(out), "--ray-temp-dir", tempfile.mkdtemp(prefix="de-bench-")]
    cores = set(sorted(os.sched_getaffinity(0))[:workers])
    run = subprocess.Popen(command, preexec_fn=lambda: os.sched_setaffinity(0, cores), env=environment,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(run.pid)
    _, errors = run.communicate()
    memory.close()
    if run.returncode:
        sys.exit(f"mining failed:\n{errors[-2000:]}")
    return json.loads((out / "manifest.json").read_text()), memory


def measure(args, coco: Path, work: Path, code: Path | None) -> dict:
    work.mkdir(parents=True)
    classical = ["--source", "folder", "--images", str(coco / "images"), "--id-column", "id", "--proposals", "classical",
                 "--captions", str(write_input(coco, work, args.images))]
    one, _ = mine(classical, work / "one", 1, args.clip, code)
    two, _ = mine(classical, work / "two", 2, args.clip, code)
    runs = []
    for count in (args.memory_images, 4 * args.memory_images):
        captions, instances = write_coco_input(coco, work, count)
        annotations = ["--source", "coco", "--images", str(coco / "images"), "--captions", str(captions),
                       "--instances", str(instances), "--proposals", "annotations"]
        runs.append(mine(annotations, work / f"memory-{count}", 2, args.clip, code))
    return {"one": one, "two": two, "memory": runs}


def report(args, figures: dict) -> None:
    one, two = figures["one"], figures["two"]
    (n, memory_small), (four_n, memory_large) = figures["memory"]
    print(f"classical pipeline, {args.images} COCO images, --clip {args.clip}, {os.cpu_count()} cores")
    print(f"1 worker (1 core) : {one['images_per_second']:6.2f} images/s")
    print(f"2 workers (2 cores): {two['images_per_second']:6.2f} images/s")
    print(f"speed-up 2 vs 1 workers: {two['images_per_second'] / one['images_per_second']:.2f}x")
    print("annotation-proposal pipeline, 2 workers:")
    for label, memory, manifest in ((f"N  = {args.memory_images:4d}", memory_small, n),
                                    (f"4N = {4 * args.memory_images:4d}", memory_large, four_n)):
        print(f"peak memory, {label} images: all processes RSS {memory.peak_rss / 2**20:6.0f} MiB "
              f"(PSS {memory.peak_pss / 2**20:6.0f} MiB), driver RSS {memory.peak_driver / 2**20:5.0f} MiB"
              f"  ({manifest['counts']['images']} images, {manifest['counts']['pairs']} pairs)")
    print(f"peak RSS 4N / N: all processes {memory_large.peak_rss / memory_small.peak_rss:.2f} "
          f"(PSS {memory_large.peak_pss / memory_small.peak_pss:.2f}), "
          f"driver {memory_large.peak_driver / memory_small.peak_driver:.2f}")


def compare(base: dict, this: dict) -> None:
    """This code's figures over the baseline's (throughput: above 1 is faster; memory: below 1 is less)."""
    print("this / baseline:")
    for key, label in (("one", "1 worker"), ("two", "2 workers")):
        print(f"  images/s, {label}: {this[key]['images_per_second'] / base[key]['images_per_second']:.2f}")
    for (_, memory), (_, base_memory), label in zip(this["memory"], base["memory"], ("N", "4N"), strict=True):
        print(f"  peak RSS, {label}: all processes {memory.peak_rss / base_memory.peak_rss:.2f} "
              f"(PSS {memory.peak_pss / base_memory.peak_pss:.2f}), driver {memory.peak_driver / base_memory.peak_driver:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=127, help="images of the throughput runs (default: 127, all)")
    parser.add_argument("--memory-images", type=int, default=127, help="N of the N vs 4N memory runs (default: 127)")
    parser.add_argument("--clip", default="dataengine-tiny", help="open_clip spec (default: the tiny seeded model)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="a checkout of another revision: measure its code too and print this / baseline")
    args = parser.parse_args()
    offline_environment()
    coco = require_coco_mini()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs at least 2 cores")
    if args.baseline and not (args.baseline / "dataengine" / "__init__.py").is_file():
        sys.exit(f"--baseline: {args.baseline} is not a checkout of this project")
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    base = measure(args, coco, work / "baseline", args.baseline.resolve()) if args.baseline else None
    this = measure(args, coco, work / "this", None)
    if base:
        print(f"baseline: {args.baseline}")
        report(args, base)
        print("this code:")
    report(args, this)
    if base:
        compare(base, this)


if __name__ == "__main__":
    main()
