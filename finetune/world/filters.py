"""Precision and yield of the match stage's precision filters in the controlled world.

    python -m finetune.world.filters --out DIR [--scenes 240] [--seed 1] [--proposals annotations classical]

Generates a world (the same scenes as `dataengine demo` for the same seed and size), mines its
training split once per (proposals, filter) with the committed world CLIP, and prints, for each,
the pairs kept, their share of the unfiltered pairs (yield) and their precision (a pair is right
when its mask overlaps an instance of its noun at IoU >= 0.5), things and stuff apart. The table
also goes to DIR/filters.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .loop import FILTERS, mine_split, pair_precision
from .scenes import generate_world

def measure(out: Path, scenes: int, seed: int, proposals: list[str], clip: str, progress: bool) -> list[dict]:
    world = out / "world"
    generate_world(world, scenes=scenes + scenes // 2, seed=seed, heldout=(scenes // 2) / (scenes + scenes // 2))
    split = world / "train"
    rows = []
    for generator in proposals:
        unfiltered = None
        for name, match in FILTERS.items():
            corpus = out / f"corpus-{generator}-{name.replace(' ', '_').replace('+', 'and')}"
            mine_split(split, corpus, generator, clip, "local", progress, match)
            row = pair_precision(corpus, split)[0]
            unfiltered = unfiltered or row["pairs"]
            rows.append({"proposals": generator, "filter": name, "settings": match,
                         "yield": round(100.0 * row["pairs"] / unfiltered, 2) if unfiltered else None,
                         **{k: v for k, v in row.items() if k != "filter"}})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'proposals':<12}{'filter':<34}{'pairs':>6}{'yield':>8}{'prec':>8}{'things':>16}{'stuff':>16}"]
    for row in rows:
        things = f"{_fmt(row['precision_things'])} of {row['pairs_things']}"
        stuff = f"{_fmt(row['precision_stuff'])} of {row['pairs_stuff']}"
        lines.append(f"{row['proposals']:<12}{row['filter']:<34}{row['pairs']:>6}{_fmt(row['yield']):>8}"
                     f"{_fmt(row['precision']):>8}{things:>16}{stuff:>16}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    from .clip import world_spec

    parser = argparse.ArgumentParser(prog="python -m finetune.world.filters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="working folder (its world and corpora are replaced)")
    parser.add_argument("--scenes", type=int, default=240, help="training scenes (default: 240, as the demo)")
    parser.add_argument("--seed", type=int, default=1, help="world seed (default: 1, as the demo)")
    parser.add_argument("--proposals", nargs="+", default=["annotations", "classical"],
                        help="proposal generators (default: annotations classical)")
    parser.add_argument("--clip", default=None, help="CLIP spec (default: the committed world CLIP)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = measure(out, args.scenes, args.seed, args.proposals, args.clip or world_spec(), not args.no_progress)
    (out / "filters.json").write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
