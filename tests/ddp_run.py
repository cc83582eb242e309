"""`dataengine finetune` for the data-parallel tests, launched by torchrun as a script, with two
test-only hooks set through the environment:

    DDP_TEST_PAUSE_AT=K   rank 0 writes OUT/paused.txt after logging step K and then waits, so that
                          the test can kill -9 the run there (the other rank waits in its next collective)
    DDP_TEST_DIGESTS=1    at the end every rank writes OUT/weights-rank<R>.txt, a digest of its CLIP weights
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

from dataengine.cli import main
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


if __name__ == "__main__":
    if os.environ.get("DDP_TEST_PAUSE_AT"):
        Trainer._log = pause_after_logging(int(os.environ["DDP_TEST_PAUSE_AT"]))
    if os.environ.get("DDP_TEST_DIGESTS"):
        Trainer._run = digest_at_the_end()
    sys.exit(main(["finetune", *sys.argv[1:]]))
