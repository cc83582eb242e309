"""Balanced nouns in the controlled world: the per-noun cap of `dataengine filter` and the
class-balanced sampling of `dataengine finetune`, against the plain corpus, at the same budget.

    python -m finetune.world.balance --out DIR [--scenes 240] [--seed 1] [--cap 30] [--threshold 0.05]

Mines the demo's world once (annotation proposals, the committed world CLIP), then trains MPT with
the demo's settings on: the plain corpus; the corpus capped at `--cap` pairs per noun; and the
plain corpus with `--balance sqrt` and `--balance inverse` at `--balance-threshold`. Every run
sees about as many pairs as the plain one (its epochs are scaled to the pairs of an epoch), so
that only what the pairs are differs. Prints the noun shares and the masked-region accuracy of
each model on the held-out scenes, things and stuff apart; the table goes to DIR/balance.json too.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

from .loop import (
    LoopConfig,
    evaluate,
    fmt,
    load_models,
    mine_split,
    reuse_or_generate_world,
    training_config,
    world_parser,
)
from .rounds import ACCURACY_KEYS, accuracy
from .scenes import STUFF


def noun_shares(corpus_shards: str, balance: str = "none", threshold: float = 0.01, seed: int = 0) -> dict:
    """Pairs per epoch and the stuff nouns' share of them (repeats included)."""
    from ..shards import Corpus, repeats, shard_pairs

    corpus = Corpus.scan(corpus_shards, balance, threshold)
    nouns: Counter = Counter()
    for shard in corpus.shards:
        for key, noun in shard_pairs(shard):
            nouns[noun] += repeats(key, corpus.repeat.get(key, 1.0), seed, 0)
    total = sum(nouns.values())
    return {"pairs_per_epoch": total, "stuff_share": round(100.0 * sum(nouns[n] for n in STUFF) / total, 2)}


def run(args) -> dict:
    from dataengine.config import FilterConfig
    from dataengine.postpass import filter_corpus

    from ..rounds import train_or_resume
    from .clip import world_spec

    out, clip, progress = Path(args.out), args.clip or world_spec(), not args.no_progress
    reuse_or_generate_world(out / "world", args.scenes, args.scenes // 2, args.seed)
    split, heldout = out / "world" / "train", out / "world" / "heldout"
    manifest = mine_split(split, out / "corpus", "annotations", clip, "local", progress)
    filter_corpus(FilterConfig(corpus=str(out / "corpus"), out=str(out / "capped"), max_pairs_per_noun=args.cap,
                               progress=False), overwrite=True)
    demo = LoopConfig(progress=progress)
    plain = str(out / "corpus" / "shards")
    variants = {"plain": (plain, "none"), f"cap {args.cap}": (str(out / "capped" / "shards"), "none"),
                "balance sqrt": (plain, "sqrt"), "balance inverse": (plain, "inverse")}
    budget = demo.epochs * manifest["counts"]["pairs"]
    rows, runs = {}, {"pretrained": clip}
    for label, (shards, balance) in variants.items():
        shares = noun_shares(shards, balance, args.threshold)
        epochs = max(1, round(budget / shares["pairs_per_epoch"]))
        folder = out / "runs" / label.replace(" ", "-")
        config = replace(training_config(shards, "mpt", folder, demo, clip, epochs), balance=balance,
                         balance_threshold=args.threshold)
        train_or_resume(config)
        runs[label] = str(folder)
        rows[label] = {"shards": shards, "balance": balance, "epochs": epochs, **shares}
    report = evaluate(heldout, load_models(runs), "gt-masks", progress)["models"]
    result = {"world": {"train": args.scenes, "heldout": args.scenes // 2, "seed": args.seed}, "cap": args.cap,
              "threshold": args.threshold, "pretrained": accuracy(report["pretrained"]),
              "runs": {label: {**row, "masked_region_accuracy": accuracy(report[label])} for label, row in rows.items()}}
    (out / "balance.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    lines = [f"{'':<17}{'epochs':>7}{'pairs/epoch':>12}{'stuff %':>8}   masked-region accuracy: all things stuff "
             "seen unseen",
             f"{'pretrained':<17}{'':>27}   " + " ".join(fmt(result["pretrained"][key]) for key in ACCURACY_KEYS)]
    for label, row in result["runs"].items():
        lines.append(f"{label:<17}{row['epochs']:>7}{row['pairs_per_epoch']:>12}{fmt(row['stuff_share']):>8}   "
                     + " ".join(fmt(row["masked_region_accuracy"][key]) for key in ACCURACY_KEYS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = world_parser("balance", __doc__, "working folder (its corpora are replaced, its runs resumed)")
    parser.add_argument("--scenes", type=int, default=240, help="training scenes (default: 240, as the demo)")
    parser.add_argument("--cap", type=int, default=30, help="--max-pairs-per-noun of the capped corpus (default: 30)")
    parser.add_argument("--threshold", type=float, default=0.05, help="--balance-threshold (default: 0.05)")
    print(format_table(run(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
