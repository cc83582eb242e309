"""The single-pass region encoder against the method's crops, in the controlled world.

    python -m finetune.world.encoders --out DIR [--scenes 240] [--seed 1] [--proposals annotations classical]

Generates a world (the demo's scenes for the same seed and size), mines its training split once
per (proposals, encoder) with the committed world CLIP and no precision filter, and prints for
each encoder: mining wall time and its ratio to crops (same run), pair precision (a pair is right
when its mask overlaps an instance of its noun at IoU >= 0.5), things and stuff apart, the share
of nouns for which the encoder chooses the same proposal as crops, and on the held-out split the
masked-region accuracy on ground-truth masks and the two-stage mIoU (classical proposals), things
and stuff apart. The table also goes to DIR/encoders.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .loop import (
    evaluate,
    fmt,
    group_cell,
    load_models,
    mine_split,
    pair_precision,
    pct,
    reuse_or_generate_world,
    world_parser,
)

# name -> match settings of the encoder (the benchmark takes the same ones)
ENCODERS: dict[str, dict] = {
    "crops": {"encoder": "crops"},
    "single-pass": {"encoder": "single-pass"},
    "single-pass 256px": {"encoder": "single-pass", "single_pass_long_side": 256},
    "single-pass 384px": {"encoder": "single-pass", "single_pass_long_side": 384},
    "single-pass last 2 blocks": {"encoder": "single-pass", "single_pass_blocks": 2},
}


def same_proposals(corpus: Path, reference: Path) -> float | None:
    """Share of the reference's pairs (image, noun) for which `corpus` chose the same proposal."""
    import pyarrow.parquet as pq

    def chosen(folder: Path) -> dict[str, int]:
        table = pq.read_table(folder / "index", columns=["key", "proposal_id"]).to_pydict()
        return dict(zip(table["key"], table["proposal_id"], strict=True))

    ours, theirs = chosen(corpus), chosen(reference)
    return pct(sum(ours.get(key) == proposal for key, proposal in theirs.items()), len(theirs))


def measure(out: Path, scenes: int, seed: int, proposals: list[str], encoders: list[str], clip: str,
            progress: bool) -> list[dict]:
    world = out / "world"
    reuse_or_generate_world(world, scenes, scenes // 2, seed)
    rows = []
    for generator in proposals:
        reference, seconds_crops = None, None
        for name in encoders:
            corpus = out / f"corpus-{generator}-{name.replace(' ', '-')}"
            started = time.perf_counter()
            mine_split(world / "train", corpus, generator, clip, "local", progress, ENCODERS[name])
            seconds = time.perf_counter() - started
            reference, seconds_crops = reference or corpus, seconds_crops or seconds
            precision = {k: v for k, v in pair_precision(corpus, world / "train")[0].items() if k != "filter"}
            rows.append({"proposals": generator, "encoder": name, "settings": ENCODERS[name], **precision,
                         "mining_seconds": round(seconds, 1), "speed_vs_crops": round(seconds_crops / seconds, 2),
                         "same_proposal_as_crops": same_proposals(corpus, reference)})
    benchmarks = {name: benchmark(world / "heldout", clip, ENCODERS[name], progress) for name in encoders}
    for row in rows:
        row.update(benchmarks[row["encoder"]])
    return rows


def benchmark(heldout: Path, clip: str, settings: dict, progress: bool) -> dict:
    """Masked-region accuracy (ground-truth masks) and two-stage mIoU of the encoder, per group."""
    bench = {k: v for k, v in settings.items()}
    models = load_models({"clip": clip})
    result = {}
    for protocol, keys in (("gt-masks", ("region_accuracy", "accuracy_things", "accuracy_stuff")),
                           ("two-stage", ("mIoU", "mIoU_things", "mIoU_stuff"))):
        measured = "two-stage-binary" if protocol == "two-stage" else protocol  # the figures the README reports
        report = evaluate(heldout, models, measured, progress, **bench)["models"]["clip"]
        result.update({f"{protocol} {key}": report[key] for key in keys})
    return result


def format_table(rows: list[dict]) -> str:
    lines = [f"{'proposals':<12}{'encoder':<28}{'speed':>7}{'pairs':>6}{'prec':>7}{'things':>15}{'stuff':>15}"
             f"{'same':>7}{'acc':>7}{'acc th':>7}{'acc st':>7}{'mIoU':>7}{'th':>6}{'st':>6}"]
    for row in rows:
        lines.append(
            f"{row['proposals']:<12}{row['encoder']:<28}{row['speed_vs_crops']:>6.1f}x{row['pairs']:>6}"
            f"{fmt(row['precision']):>7}{group_cell(row, 'things'):>15}{group_cell(row, 'stuff'):>15}"
            f"{fmt(row['same_proposal_as_crops']):>7}{fmt(row['gt-masks region_accuracy']):>7}"
            f"{fmt(row['gt-masks accuracy_things']):>7}{fmt(row['gt-masks accuracy_stuff']):>7}"
            f"{fmt(row['two-stage mIoU']):>7}{fmt(row['two-stage mIoU_things']):>6}{fmt(row['two-stage mIoU_stuff']):>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .clip import world_spec

    parser = world_parser("encoders", __doc__, "working folder (its corpora are replaced; a world there is reused)")
    parser.add_argument("--scenes", type=int, default=240, help="training scenes (default: 240, as the demo)")
    parser.add_argument("--proposals", nargs="+", default=["annotations", "classical"],
                        help="proposal generators (default: annotations classical)")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS), metavar="NAME",
                        help=f"encoders to compare, the first is the reference (default: all: {', '.join(ENCODERS)})")
    args = parser.parse_args(argv)
    if args.encoders[0] != "crops":
        parser.error("--encoders: the first is the reference the others are compared with, and must be crops")
    out = Path(args.out)
    rows = measure(out, args.scenes, args.seed, args.proposals, args.encoders, args.clip or world_spec(),
                   not args.no_progress)
    (out / "encoders.json").write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
