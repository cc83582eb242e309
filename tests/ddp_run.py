"""`dataengine finetune` for the data-parallel tests, launched by torchrun as a script, with two
test-only hooks set through the environment:

    DDP_TEST_PAUSE_AT=K   rank 0 writes OUT/paused.txt after logging step K and then waits, so that
                          the test can kill -9 the run there (the other rank waits in its next collective)
    DDP_TEST_DIGESTS=1    at the end every rank writes OUT/weights-rank<R>.txt, a digest of its CLIP weights
    DDP_TEST_OPENED=DIR   every shard a rank's pair stream opens is a line "EPOCH PATH" of DIR/rank<R>.txt
                          (written from the rank's loader workers)
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

from dataengine.cli import main
from finetune.shards import PairStream
from finetune.train import Trainer


def pause_after_logging(step: int):
    original = Trainer._log

    def log(self, *args):
        original(self, *args)
        if self.state["global_step"] == step:
            (self.out / "paused.txt").write_text(str(step))
            time.sleep(600)

    return log


def weights_digest(model) -> str:
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return weights.hexdigest()


def digest_at_the_end():
    original = Trainer._run

    def run(self):
        summary = original(self)
        (self.out / f"weights-rank{self.world.rank}.txt").write_text(weights_digest(self.clip.model))
        return summary

    return run


def record_opened(folder: str):
    original = PairStream._read

    def read(self, url):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"rank{os.environ['RANK']}.txt"), "a") as handle:
            handle.write(f"{self.epoch} {url}\n")
        return original(self, url)

    return read


if __name__ == "__main__":
    if os.environ.get("DDP_TEST_PAUSE_AT"):
        Trainer._log = pause_after_logging(int(os.environ["DDP_TEST_PAUSE_AT"]))
    if os.environ.get("DDP_TEST_OPENED"):
        PairStream._read = record_opened(os.environ["DDP_TEST_OPENED"])
    if os.environ.get("DDP_TEST_DIGESTS"):
        Trainer._run = digest_at_the_end()
    sys.exit(main(["finetune", *sys.argv[1:]]))
