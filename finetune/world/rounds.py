"""The model-in-the-loop engine (`dataengine loop`) in the controlled world, with its figures.

    python -m finetune.world.rounds --out DIR [--scenes 240] [--seed 1] [--rounds 2] [--mode mpt]
        [--proposals annotations] [--filter NAME] [--noun-quantile Q] [--max-pairs-per-noun N]
        [--min-noun-margin M]

Generates a world (the demo's scenes for the same seed and size), then runs the loop on its
training split: round 1 mines with the committed world CLIP and trains; each later round mines the
same scenes with the model of the round before and trains again from the world CLIP. For each round
it records the precision of the mined pairs (and of the filtered ones it trained on), things and
stuff apart, and the masked-region accuracy of its model on the held-out scenes (seen and unseen
nouns apart), next to the pretrained CLIP's. The table goes to DIR/rounds.json too.
"""

from __future__ import annotations

import json
from pathlib import Path

from .loop import (
    FILTERS,
    LoopConfig,
    evaluate,
    fmt,
    group_cell,
    load_models,
    mining_config,
    pair_precision,
    reuse_or_generate_world,
    training_config,
    world_parser,
)

PRECISION_KEYS = ("pairs", "precision", "pairs_things", "precision_things", "pairs_stuff", "precision_stuff",
                  "precision_things_present")
ACCURACY_KEYS = ("region_accuracy", "accuracy_things", "accuracy_stuff", "accuracy_seen", "accuracy_unseen")


def precision(corpus: Path, split: Path) -> dict:
    row = pair_precision(corpus, split)[0]
    return {key: row[key] for key in PRECISION_KEYS}


def accuracy(result: dict) -> dict:
    return {key: result.get(key) for key in ACCURACY_KEYS}


def world_evaluator(split: Path, heldout: Path, progress: bool):
    """The loop's `evaluate`: the precision of a round's pairs and its model's accuracy."""
    def evaluate_round(current, corpus: Path) -> dict:
        figures = {"mined_precision": precision(current.corpus, split)}
        if corpus != current.corpus:
            figures["trained_on_precision"] = precision(corpus, split)
        report = evaluate(heldout, load_models({"model": str(current.run)}), "gt-masks", progress)
        figures["masked_region_accuracy"] = accuracy(report["models"]["model"])
        return figures

    return evaluate_round


def run(args) -> dict:
    from dataengine.config import ConfigError

    from ..rounds import LoopSettings, run_rounds
    from .clip import world_spec

    if args.filter not in FILTERS:
        raise ConfigError(f"--filter: one of {', '.join(FILTERS)}, got {args.filter!r}")
    out, clip, progress = Path(args.out), args.clip or world_spec(), not args.no_progress
    world = out / "world"
    reuse_or_generate_world(world, args.scenes, args.scenes // 2, args.seed)
    split, heldout = world / "train", world / "heldout"
    demo = LoopConfig(out=str(out), progress=progress)
    mining = mining_config(split, out / "unused", args.proposals, clip, "local", progress, FILTERS[args.filter])
    training = training_config("-", args.mode, out / "unused", demo, clip)
    record = run_rounds(LoopSettings(str(out / "loop"), args.rounds, args.noun_quantile, args.max_pairs_per_noun,
                                     args.min_noun_margin),
                        mining, training, world_evaluator(split, heldout, progress))
    pretrained = evaluate(heldout, load_models({"pretrained": clip}), "gt-masks", progress)["models"]["pretrained"]
    result = {"world": {"train": args.scenes, "heldout": args.scenes // 2, "seed": args.seed},
              "settings": {"proposals": args.proposals, "filter": args.filter, "mode": args.mode,
                           "noun_quantile": args.noun_quantile, "max_pairs_per_noun": args.max_pairs_per_noun,
                           "min_noun_margin": args.min_noun_margin},
              "pretrained": accuracy(pretrained), "rounds": record["rounds"]}
    (out / "rounds.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    lines = [f"{'':<11}{'pairs':>6}{'prec':>7}{'things':>14}{'stuff':>14}   masked-region accuracy: all things "
             "stuff seen unseen"]
    pretrained = result["pretrained"]
    lines.append(f"{'pretrained':<11}{'':>41}   " + " ".join(fmt(pretrained[key]) for key in ACCURACY_KEYS))
    for entry in result["rounds"]:
        pairs = entry.get("trained_on_precision", entry["mined_precision"])
        things, stuff = group_cell(pairs, "things"), group_cell(pairs, "stuff")
        accuracy_row = entry["masked_region_accuracy"]
        lines.append(f"{'round ' + str(entry['round']):<11}{pairs['pairs']:>6}{fmt(pairs['precision']):>7}{things:>14}"
                     f"{stuff:>14}   " + " ".join(fmt(accuracy_row[key]) for key in ACCURACY_KEYS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = world_parser("rounds", __doc__, "working folder (a rerun resumes the loop in it)")
    parser.add_argument("--scenes", type=int, default=240, help="training scenes (default: 240, as the demo)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default: 2)")
    parser.add_argument("--mode", default="mpt", help="what each round trains: mpt | ft | ft+mpt (default: mpt)")
    parser.add_argument("--proposals", default="annotations", help="proposal generator (default: annotations)")
    parser.add_argument("--filter", default="none", help="match filter of finetune.world.loop.FILTERS (default: none)")
    parser.add_argument("--noun-quantile", type=float, help="dataengine filter on each round's corpus (default: off)")
    parser.add_argument("--max-pairs-per-noun", type=int, help="dataengine filter on each round's corpus (default: off)")
    parser.add_argument("--min-noun-margin", type=float, help="dataengine filter on each round's corpus (default: off)")
    print(format_table(run(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
