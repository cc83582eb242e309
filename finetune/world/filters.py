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

from .loop import FILTERS, corpus_name, fmt, group_cell, mine_split, pair_precision, pct, world_parser
from .scenes import generate_world

# the corpus-level post-pass (dataengine filter), on the corpus of a match filter
POSTPASSES: dict[str, tuple[str, dict]] = {
    "noun_quantile 0.5": ("none", {"noun_quantile": 0.5}),
    "noun_quantile 0.75": ("none", {"noun_quantile": 0.75}),
    "mutual_best + noun_quantile 0.5": ("mutual_best", {"noun_quantile": 0.5}),
    "mutual_best + noun_quantile 0.75": ("mutual_best", {"noun_quantile": 0.75}),
}


def measure(out: Path, scenes: int, seed: int, proposals: list[str], clip: str, progress: bool) -> list[dict]:
    from dataengine.config import FilterConfig
    from dataengine.postpass import filter_corpus

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
        for name, (base, settings) in POSTPASSES.items():
            corpus = out / corpus_name(generator, name).replace("corpus-", "filtered-", 1)
            filter_corpus(FilterConfig(corpus=str(corpora[base]), out=str(corpus), progress=False, **settings),
                          overwrite=True)
            rows.append({"proposals": generator, "filter": name, "settings": {**FILTERS[base], **settings},
                         **(row := _row(corpus, split)), "yield": pct(row["pairs"], unfiltered)})
    return rows


def _row(corpus: Path, split: Path) -> dict:
    return {k: v for k, v in pair_precision(corpus, split)[0].items() if k != "filter"}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'proposals':<12}{'filter':<34}{'pairs':>6}{'yield':>8}{'prec':>8}{'things':>16}{'stuff':>16}"]
    for row in rows:
        things, stuff = group_cell(row, "things"), group_cell(row, "stuff")
        lines.append(f"{row['proposals']:<12}{row['filter']:<34}{row['pairs']:>6}{fmt(row['yield']):>8}"
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
