"""How the trained CLIP's accuracy grows with mined data: the reason a data engine exists.

    python -m finetune.world.scaling --out DIR [--sizes 240 800 3200] [--seed 1] [--mode mpt]
        [--filter none] [--heldout 200]

For each size, a world of that many training scenes (seed `--seed`; a larger world begins with the
scenes of the smaller ones) is mined with annotation proposals and the committed world CLIP, and a
model is trained on its pairs with the demo's settings (the same epochs at every size: more data,
more steps). All sizes are evaluated on the same held-out world (seed `--seed` + 1000, never mined):
masked-region accuracy with ground-truth masks, seen and unseen nouns apart, next to the pretrained
CLIP's. A rerun resumes: finished sizes are read back. The table goes to DIR/scaling.json too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dataengine.config import ConfigError

from .loop import (
    FILTERS,
    LoopConfig,
    evaluate,
    fmt,
    load_models,
    mining_config,
    pair_precision,
    reuse_or_generate_world,
    training_config,
    world_parser,
)
from .rounds import ACCURACY_KEYS, PRECISION_KEYS, accuracy

HELDOUT_SEED_OFFSET = 1000


def heldout_world(out: Path, seed: int, scenes: int) -> Path:
    folder = out / "heldout-world"
    reuse_or_generate_world(folder, 0, scenes, seed + HELDOUT_SEED_OFFSET)
    return folder / "heldout"


def run_size(out: Path, size: int, args, clip: str, heldout: Path, progress: bool) -> dict:
    from dataengine.pipeline import mine

    from ..rounds import train_or_resume

    folder = out / f"scenes-{size}"
    result_file = folder / "result.json"
    world = folder / "world"
    reuse_or_generate_world(world, size, 0, args.seed)
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if (result.get("mode", "mpt"), result.get("filter", "none")) == (args.mode, args.filter):  # keys added later
            return result
        raise ConfigError(f"--out: {folder} holds a run with --mode {result.get('mode')} --filter "
                          f"{result.get('filter')}; choose another --out")
    started = time.perf_counter()
    manifest = mine(mining_config(world / "train", folder / "corpus", "annotations", clip, "local", progress,
                                  FILTERS[args.filter]))
    mined = time.perf_counter()
    train_or_resume(training_config(str(folder / "corpus" / "shards"), args.mode, folder / "train",
                                    LoopConfig(progress=progress), clip))
    trained = time.perf_counter()
    report = evaluate(heldout, load_models({"model": str(folder / "train")}), "gt-masks", progress)
    row = pair_precision(folder / "corpus", world / "train")[0]
    result = {"scenes": size, "mode": args.mode, "filter": args.filter, "pairs": manifest["counts"]["pairs"], "precision": {k: row[k] for k in PRECISION_KEYS},
              "masked_region_accuracy": accuracy(report["models"]["model"]),
              "seconds": {"mining": round(mined - started, 1), "training": round(trained - mined, 1)}}
    result_file.write_text(json.dumps(result, indent=2))
    return result


def run(args) -> dict:
    from .clip import world_spec

    if args.filter not in FILTERS:
        raise ConfigError(f"--filter: one of {', '.join(FILTERS)}, got {args.filter!r}")
    out, clip, progress = Path(args.out), args.clip or world_spec(), not args.no_progress
    out.mkdir(parents=True, exist_ok=True)
    heldout = heldout_world(out, args.seed, args.heldout)
    pretrained = evaluate(heldout, load_models({"pretrained": clip}), "gt-masks", progress)["models"]["pretrained"]
    result = {"seed": args.seed, "heldout": {"scenes": args.heldout, "seed": args.seed + HELDOUT_SEED_OFFSET},
              "mode": args.mode, "filter": args.filter, "pretrained": accuracy(pretrained),
              "sizes": [run_size(out, size, args, clip, heldout, progress) for size in args.sizes]}
    (out / "scaling.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    lines = [f"{'scenes':>7}{'pairs':>7}{'prec':>7}{'things':>8}   masked-region accuracy: all things stuff seen unseen"]
    lines.append(f"{'pretrained':>29}   " + " ".join(fmt(result["pretrained"][key]) for key in ACCURACY_KEYS))
    for size in result["sizes"]:
        precision = size["precision"]
        lines.append(f"{size['scenes']:>7}{size['pairs']:>7}{fmt(precision['precision']):>7}"
                     f"{fmt(precision['precision_things']):>8}   "
                     + " ".join(fmt(size["masked_region_accuracy"][key]) for key in ACCURACY_KEYS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = world_parser("scaling", __doc__, "working folder (a rerun resumes in it)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[240, 800, 3200],
                        help="training scenes per run (default: 240 800 3200)")
    parser.add_argument("--heldout", type=int, default=200, help="held-out scenes (default: 200)")
    parser.add_argument("--mode", default="mpt", help="mpt | ft | ft+mpt (default: mpt)")
    parser.add_argument("--filter", default="none", help="match filter of finetune.world.loop.FILTERS (default: none)")
    print(format_table(run(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
