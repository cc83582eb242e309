"""Precision and yield of the match stage's precision filters in the controlled world.

    python -m finetune.world.filters --out DIR [--scenes 240] [--seed 1] [--proposals annotations classical]

Generates a world (the same scenes as `dataengine demo` for the same seed and size), mines its
training split once per (proposals, match filter) with the committed world CLIP, runs the
corpus-level post-pass (`dataengine filter`) on some of those corpora, and prints, for each,
the pairs kept, their share of the unfiltered pairs (yield) and their precision (a pair is right
when its mask overlaps an instance of its noun at IoU >= 0.5), things and stuff apart. The table
also goes to DIR/filters.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from .loop import (
    FILTERS,
    POSTPASSES,
    corpus_name,
    filter_settings,
    fmt,
    group_cell,
    mine_split,
    pair_precision,
    pct,
    postpass,
    world_parser,
)
from .scenes import generate_world


def measure(out: Path, scenes: int, seed: int, proposals: list[str], clip: str, progress: bool) -> list[dict]:
    world = out / "world"
    generate_world(world, scenes=scenes + scenes // 2, seed=seed, heldout=(scenes // 2) / (scenes + scenes // 2))
    split = world / "train"
    rows = []
    for generator in proposals:
        corpora, unfiltered = {}, None
        for name, match in FILTERS.items():
            corpora[name] = corpus = out / corpus_name(generator, name)
            mine_split(split, corpus, generator, clip, "local", progress, match)
            row = _row(corpus, split)
            unfiltered = unfiltered or row["pairs"]
            rows.append({"proposals": generator, "filter": name, "settings": match, **row,
                         "yield": pct(row["pairs"], unfiltered)})
        for name, (base, settings, only) in POSTPASSES.items():
            if only is not None and generator not in only:
                continue
            corpus = out / corpus_name(generator, name).replace("corpus-", "filtered-", 1)
            postpass(corpora[base], corpus, settings)
            rows.append({"proposals": generator, "filter": name, "settings": filter_settings(name),
                         **(row := _row(corpus, split)), "yield": pct(row["pairs"], unfiltered)})
    return rows


def _row(corpus: Path, split: Path) -> dict:
    return {k: v for k, v in pair_precision(corpus, split)[0].items() if k != "filter"}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'proposals':<12}{'filter':<54}{'pairs':>6}{'yield':>8}{'prec':>8}{'things':>16}{'stuff':>16}"]
    for row in rows:
        things, stuff = group_cell(row, "things"), group_cell(row, "stuff")
        lines.append(f"{row['proposals']:<12}{row['filter']:<54}{row['pairs']:>6}{fmt(row['yield']):>8}"
                     f"{fmt(row['precision']):>8}{things:>16}{stuff:>16}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .clip import world_spec

    parser = world_parser("filters", __doc__, "working folder (its world and corpora are replaced)")
    parser.add_argument("--scenes", type=int, default=240, help="training scenes (default: 240, as the demo)")
    parser.add_argument("--proposals", nargs="+", default=["annotations", "classical"],
                        help="proposal generators (default: annotations classical)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = measure(out, args.scenes, args.seed, args.proposals, args.clip or world_spec(), not args.no_progress)
    (out / "filters.json").write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
