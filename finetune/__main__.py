"""`python -m finetune ARGS` is `dataengine finetune ARGS`: the entry point torchrun launches,
`torchrun --nproc-per-node N -m finetune --shards ... --out ...` (one process per rank)."""

import sys

from dataengine.cli import main

sys.exit(main(["finetune", *sys.argv[1:]]))
