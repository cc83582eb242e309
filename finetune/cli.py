"""`dataengine demo | export-clip | finetune | loop | bench` (also `python -m finetune.bench`), registered with the
`dataengine` command through the `dataengine.commands` entry point (see `register`)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields, replace

from dataengine.cli import help_with_default
from dataengine.config import ENCODERS, ConfigError, from_dict

from .config import ENSEMBLE_FORMS, LOSSES, MODES, PRECISIONS, PROTOCOLS, TrainConfig

TRAIN_HELP = {
    "shards": ("PATTERN", "pair shards: brace pattern, glob, or folder of tars, e.g. out/coco/shards "
                          "(jpg + txt, optional mask.png: the engine's output or any such set) (required)"),
    "out": ("DIR", "output folder: checkpoints, prompts.pt, model.pt, log.jsonl, train.json (required)"),
    "clip": ("SPEC", "open_clip NAME[@PRETRAINED_OR_PATH] to start from"),
    "mode": ("MODE", f"{' | '.join(MODES)}: mask prompt tuning, full finetune of the visual tower, or both in turn "
                     "(default: mpt)"),
    "epochs": ("N", "epochs per phase"),
    "batch_size": ("N", "pairs per step"),
    "accumulate": ("N", "micro-batches per optimizer step"),
    "mpt_lr": ("LR", "MPT learning rate"),
    "mpt_weight_decay": ("WD", "MPT weight decay"),
    "ft_lr": ("LR", "full finetune learning rate"),
    "ft_weight_decay": ("WD", "full finetune weight decay"),
    "warmup": ("SHARE", "share of each phase's steps for linear warmup before the cosine decay"),
    "grad_clip": ("NORM", "gradient norm clipping, 0 = off"),
    "prompt_depth": ("N", "MPT: blocks whose input gets mask prompts (default: 3, the method's; fewer on a shallower tower)"),
    "prompt_init_std": ("STD", "MPT: prompt initialisation std"),
    "loss": ("LOSS", f"{' | '.join(LOSSES)}: in-batch InfoNCE, plus or instead of a classification over every "
                     "noun of the corpus"),
    "vocab_loss_weight": ("W", "weight of the vocabulary loss in clip+vocab"),
    "mask_repeated_nouns": (None, "count repeats of a noun in a batch as negatives (default: they are masked out)"),
    "learn_logit_scale": (None, "freeze the logit scale in full finetune (default: learned, capped at 100)"),
    "balance": ("B", "none | sqrt | inverse: class-balanced sampling; a noun with a share f of the pairs under "
                     "--balance-threshold t has its pairs repeated sqrt(t/f) or t/f times per epoch (LVIS's repeat "
                     "factor sampling)"),
    "balance_threshold": ("T", "share of the pairs under which a noun is repeated"),
    "shuffle_buffer": ("N", "samples in each loader worker's shuffle buffer"),
    "workers": ("N", "data loader processes (per data rank)"),
    "data_ranks": ("N", "split the data into N data ranks, each reading its own shards into batches of "
                        "--batch-size/N, concatenated in rank order; N must be a multiple of the number of "
                        "processes, each reading N/processes of them: the same N gives the same run on any "
                        "number of processes (default: one per process; --resume keeps the saved one)"),
    "seed": ("N", "seed of data order and prompt initialisation"),
    "device": ("DEVICE", "auto | cpu | cuda | cuda:N"),
    "precision": ("P", f"{' | '.join(PRECISIONS)}: auto is bf16 autocast on GPU, fp32 on CPU"),
    "checkpoint_every": ("N", "optimizer steps between checkpoints (default: 500; also at each phase end)"),
    "log_every": ("N", "optimizer steps between log.jsonl lines"),
    "max_steps": ("N", "stop after N optimizer steps in all, with a checkpoint; --resume continues (default: none)"),
    "progress": (None, "no progress bar"),
}
OPTIONAL_COUNTS = {"max_steps", "prompt_depth", "data_ranks"}  # int settings whose default is None
NEGATED = {"mask_repeated_nouns": "--keep-repeated-nouns", "learn_logit_scale": "--freeze-logit-scale",
           "progress": "--no-progress"}


def register(commands) -> None:
    """The `dataengine.commands` entry point: this package's subcommands of `dataengine`."""
    add_demo_parser(commands)
    add_export_parser(commands)
    add_finetune_parser(commands)
    add_loop_parser(commands)
    add_bench_parser(commands)


def add_demo_parser(commands) -> None:
    demo = commands.add_parser("demo", help="the whole loop in a controlled world, offline, with a results table",
                               description="Generate a small world of drawn scenes with exact ground truth, mine pairs from "
                                           "its captions with the package's small trained CLIP, train mask prompt tuning on "
                                           "them and print the benchmark on held-out scenes (seen and unseen nouns apart). "
                                           "A few minutes on a laptop CPU. Only what an earlier demo or run wrote in OUT is "
                                           "replaced (with --photos too): other files in the way are refused.")
    demo.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out)")
    demo.add_argument("--full", action="store_true",
                      help="the full table: a larger world, annotation and classical proposals, score and margin "
                           "filters, MPT, finetune, finetune+MPT and finetune on ground-truth pairs (tens of minutes)")
    demo.add_argument("--seed", type=int, default=1, metavar="S",
                      help="seed of the world's scenes (default: 1; choose one the committed CLIP was not trained on: "
                           "the demo warns otherwise)")
    demo.add_argument("--filter", action="append", dest="filters", metavar="NAME",
                      help="a filtered corpus to mine and train on besides the unfiltered one, by its name in "
                           "finetune.world.loop's FILTERS (match stage) or POSTPASSES (dataengine filter), e.g. "
                           "--filter 'mutual_best + min_noun_margin 0.17' (repeatable; default: mutual_best)")
    demo.add_argument("--photos", action="store_true",
                      help="instead: mine scikit-image's bundled photos with the tiny seeded CLIP (the machinery only)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=run_demo)



def add_export_parser(commands) -> None:
    export = commands.add_parser("export-clip", help="write a CLIP as an open_clip local-dir: folder",
                                 description="Write any --clip spec, or the weights of a finetune output folder, as an "
                                             "open_clip local-dir: folder (open_clip_config.json + open_clip_model.safetensors) "
                                             "that open_clip's own tools load unchanged, e.g. open_clip_train --model local-dir:DIR.")
    export.add_argument("--clip", required=True, metavar="SPEC",
                        help="open_clip NAME[@PRETRAINED_TAG_OR_CHECKPOINT], or a dataengine finetune output folder")
    export.add_argument("--out", required=True, metavar="DIR", help="new or empty folder to write")
    export.set_defaults(run=run_export)


def run_demo(args: argparse.Namespace) -> int:
    if args.photos:
        return run_photo_demo(args)
    from .world.loop import format_report, full_config, run_loop, small_config

    config = (full_config if args.full else small_config)(args.out, progress=not args.no_progress, seed=args.seed)
    if args.filters:
        config = replace(config, filters=tuple(args.filters))
    report = run_loop(config)
    print("\n" + format_report(report))
    print(f"\n-> {args.out}/world_report.json; mined pairs in {args.out}/corpus-*/ (dataengine inspect ...)")
    print(f"quality report of the mined pairs: {report['report_html']} (open it in a browser)")
    return 0


def run_photo_demo(args: argparse.Namespace) -> int:
    from dataengine.cli import print_summary
    from dataengine.inspect import inspect_corpus
    from dataengine.photo_demo import run_demo as demo

    manifest = demo(args.out, progress=not args.no_progress)
    print_summary(manifest)
    print(inspect_corpus(args.out, top=10, samples=5))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dataengine.clip import finetune_run
    from dataengine.export import describe_export, export_open_clip

    spec, run = args.clip, finetune_run(args.clip)
    if run is not None:
        folder, spec, prompts = Path(run.folder), run.spec, run.prompts
        if not (folder / "model.pt").exists():
            raise ConfigError(f"--clip: {folder} holds mask prompts only (an MPT run): they need this package's "
                              "wrapper and are not part of an open_clip model; export a finetune run's folder")
        if prompts:
            print(f"note: {prompts} is not exported (mask prompts are not part of an open_clip model)")
    print(describe_export(export_open_clip(spec, args.out)))
    return 0


def add_finetune_parser(commands) -> None:
    parser = commands.add_parser(
        "finetune", help="mask prompt tuning / full finetune of CLIP on mined pairs",
        description="Train mask-adapted CLIP on pair shards: mask prompt tuning (CLIP frozen), full finetune of "
                    "the visual tower, or finetune then MPT. The text tower is always frozen.",
        epilog="Resume an interrupted run with the same command plus --resume. Evaluate with: dataengine bench "
               "--model NAME=OUT ... Data-parallel: torchrun --nproc-per-node N -m finetune ARGS (one process per "
               "GPU, or gloo on CPU), or --ray-workers N on a Ray cluster; --batch-size is then the global batch, "
               "dealt evenly over the data ranks (--data-ranks), and the run trains what one process with that "
               "batch and --data-ranks would.")
    defaults = TrainConfig()
    for item in fields(TrainConfig):
        metavar, help_text = TRAIN_HELP[item.name]
        help_text = help_with_default(help_text, getattr(defaults, item.name))
        if item.name in NEGATED:
            parser.add_argument(NEGATED[item.name], dest=item.name, action="store_false", help=help_text)
            continue
        value = getattr(defaults, item.name)
        kind = float if isinstance(value, float) else int if isinstance(value, int) or item.name in OPTIONAL_COUNTS else str
        parser.add_argument(f"--{item.name.replace('_', '-')}", dest=item.name, type=kind, metavar=metavar,
                            default=value, help=help_text)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ray = parser.add_argument_group("Ray Train", "run the training as data-parallel Ray Train workers on the Ray cluster "
                                                 "of this process (ray job submit ... -- python -m finetune ...); "
                                                 "--shards and --out must be on storage every worker reads")
    ray.add_argument("--ray-workers", type=int, metavar="N", help="train on N Ray Train workers (default: off, "
                                                                  "train in this process or under torchrun)")
    ray.add_argument("--ray-gpu", action="store_true", help="one GPU per Ray worker (NCCL); default: CPU workers (gloo)")
    ray.add_argument("--ray-storage", metavar="DIR", help="Ray Train's storage_path, where it keeps its copies of the "
                                                          "checkpoints: shared storage on a multi-node cluster "
                                                          "(default: Ray's, ~/ray_results)")
    ray.add_argument("--ray-max-failures", type=int, default=0, metavar="N",
                     help="times Ray restarts the workers after a failure, each resuming from the last checkpoint "
                          "(default: 0)")
    parser.set_defaults(run=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    from .train import train

    if not args.shards or not args.out:
        raise ConfigError("finetune: --shards and --out are required")
    values = {item.name: getattr(args, item.name) for item in fields(TrainConfig)}
    config = from_dict(TrainConfig, values)
    if args.ray_workers is not None:
        summary = run_on_ray(config, args)
    else:
        summary = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")):  # a data-parallel run: rank 0 reports
        return 0
    for phase in summary["phases"]:
        state = "stopped (resume with --resume)" if phase["stopped"] else "done"
        skipped = f", {phase['skipped_pairs']} unreadable pairs skipped" if phase.get("skipped_pairs") else ""
        print(f"{phase['phase']}: {state} at step {phase['steps']}, last loss {phase['last_loss']:.4f}, "
              f"{phase['pairs_per_s']:.1f} pairs/s{skipped}")
    print(f"-> {args.out}")
    return 0


def run_on_ray(config: TrainConfig, args: argparse.Namespace) -> dict:
    """The run as Ray Train workers; its summary is the train.json rank 0 wrote."""
    import json
    from pathlib import Path

    from .distributed import check_data_ranks
    from .ray_train import fit

    # before Ray starts anything (on --resume, the saved --data-ranks is checked by the workers)
    check_data_ranks(config.batch_size, config.data_ranks or args.ray_workers, args.ray_workers, "Ray workers")
    result = fit(config, args.resume, args.ray_workers, args.ray_gpu, args.ray_storage, args.ray_max_failures)
    if result.error is not None:
        raise result.error
    return json.loads((Path(config.out) / "train.json").read_text())


def add_loop_parser(commands) -> None:
    from dataengine.cli import add_mine_arguments

    parser = commands.add_parser(
        "loop", help="rounds of mining and training: each round mines with the model the round before trained",
        description="The model-in-the-loop engine. Round 1 mines the inputs with --clip and trains on the pairs; round "
                    "r mines the same inputs with round r-1's adapted model (its weights and mask prompts) and trains "
                    "again from --clip on the new pairs. Writes OUT/round-N/{corpus,filtered,train} and OUT/loop.json.",
        epilog="Rerunning the same command resumes it: mining, filtering and training each continue where they "
               "stopped. The mining flags are dataengine mine's; --out is the loop's folder.")
    add_mine_arguments(parser, overwrite=False)
    parser.add_argument("--rounds", type=int, default=2, metavar="N", help="rounds of mining and training (default: 2)")
    parser.add_argument("--mode", default="mpt", choices=tuple(MODES), metavar="MODE",
                        help=f"what each round trains: {' | '.join(MODES)} (default: mpt)")
    parser.add_argument("--noun-quantile", type=float, metavar="Q", help="dataengine filter on each round's corpus: "
                        "each noun drops its floor(Q*n) lowest-scoring pairs (default: off)")
    parser.add_argument("--max-pairs-per-noun", type=int, metavar="N", help="dataengine filter on each round's corpus: "
                        "each noun keeps its N best pairs (default: off)")
    parser.add_argument("--min-noun-margin", type=float, metavar="M", help="dataengine filter on each round's corpus: "
                        "a noun whose pairs' median margin is under M drops them all (default: off)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dataengine finetune setting for every round's training, by name, e.g. --train-set "
                             "epochs=3 (repeatable; see dataengine finetune --help)")
    parser.set_defaults(run=run_loop_command)


LOOP_OWNS = {"shards": "each round's corpus", "out": "OUT/round-N/train", "clip": "--clip", "mode": "--mode"}


def run_loop_command(args: argparse.Namespace) -> int:
    import yaml

    from dataengine.cli import config_from_args

    from .rounds import LoopSettings, run_rounds

    mining = config_from_args(args)
    if not mining.out:
        raise ConfigError("loop: --out DIR is required (the loop's folder, one subfolder per round)")
    values = {"shards": "-", "out": "-", "clip": mining.match.clip, "mode": args.mode, "progress": mining.progress}
    for assignment in args.train_set:
        key, sep, value = assignment.partition("=")
        if not sep or key.strip() not in {item.name for item in fields(TrainConfig)}:
            raise ConfigError(f"--train-set: expected KEY=VALUE with KEY a dataengine finetune setting, got {assignment!r}")
        if key.strip() in LOOP_OWNS:
            raise ConfigError(f"--train-set {key.strip()}: the loop sets it ({LOOP_OWNS[key.strip()]})")
        values[key.strip()] = yaml.safe_load(value)
    record = run_rounds(LoopSettings(mining.out, args.rounds, args.noun_quantile, args.max_pairs_per_noun,
                                     args.min_noun_margin), mining,
                        from_dict(TrainConfig, values))
    for entry in record["rounds"]:
        print(f"round {entry['round']}: {entry['pairs']} pairs mined with {entry['mined_with']} -> {entry['train']}")
    print(f"-> {mining.out}/loop.json")
    return 0


def add_bench_parser(commands) -> None:
    from .datasets import DATASETS

    parser = commands.add_parser(
        "bench", help="open-vocabulary segmentation benchmarks (ADE20K, Pascal Context, VOC, COCO-Object)",
        description="Evaluate CLIP models on masked regions: ground-truth masks (region accuracy and painted mIoU) "
                    "or two-stage segmentation with a proposal generator (mIoU). Several models side by side.",
        epilog="Example: dataengine bench --dataset ade20k-150 --root ADEChallengeData2016 --model pretrained=ViT-B-16@openai "
               "--model mpt=runs/mpt --model ft+mpt=runs/ftmpt --out ade150.json")
    add_bench_arguments(parser, DATASETS, PROTOCOLS)
    parser.set_defaults(run=run_bench)


def add_bench_arguments(parser, datasets, protocols) -> None:
    parser.add_argument("--dataset", choices=tuple(datasets), metavar="NAME",
                        help=f"one of {', '.join(datasets)} (required, unless --compare)")
    parser.add_argument("--root", metavar="DIR",
                        help="the dataset in its standard layout (ADEChallengeData2016, ADE20K_2021_17_01, "
                             "VOCdevkit/VOC2010, VOCdevkit/VOC2012, or a COCO folder with its instances JSON)")
    parser.add_argument("--clip", metavar="SPEC", help="open_clip NAME[@PRETRAINED_OR_PATH], or a finetune output folder "
                                                       "(default: ViT-B-16@openai when no --model is given)")
    parser.add_argument("--prompts", metavar="FILE", help="mask prompts (prompts.pt from dataengine finetune) for --clip")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=SPEC",
                        help="a model to compare, repeatable: SPEC is NAME[@PRETRAINED_OR_PATH] or a finetune output "
                             "folder (its finetuned weights and prompts are used)")
    parser.add_argument("--protocol", default="gt-masks", choices=protocols, metavar="P",
                        help="gt-masks (CLIP classifies each ground-truth class region) | two-stage (the method's: "
                             "every proposal of the generator, soft masks where it has them, painted by MaskFormer's "
                             "semantic inference) | two-stage-binary (the generator's binary masks after the engine's "
                             "area filter and NMS) (default: gt-masks)")
    parser.add_argument("--proposals", default="classical", metavar="GEN",
                        help="two-stage: classical | hf:MODEL_ID_OR_PATH (default: classical)")
    parser.add_argument("--ensemble-lambda", metavar="L|method",
                        help="two-stage: weight of CLIP in the geometric ensemble with the generator's class scores, "
                             "over every class and renormalized; `method` takes the method's weight for --dataset "
                             "(0.7 ADE, 0.6 Pascal Context, 0.45 VOC); needs a generator that scores class names")
    parser.add_argument("--ensemble-form", default="renormalized", choices=ENSEMBLE_FORMS, metavar="F",
                        help="with --ensemble-lambda: renormalized (the generator's class probabilities and the "
                             "mixture renormalized per region; default) | released (as the method's released code: "
                             "nothing renormalized, so a likely no-object query weighs less; queries with an empty "
                             "binary mask still paint; needs --protocol two-stage)")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images only")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="regions per CLIP forward (default: 32)")
    parser.add_argument("--encoder", default="crops", choices=ENCODERS, metavar="E",
                        help="how regions are encoded, as in dataengine mine: crops (the method's, one forward per "
                             "region; default) | single-pass (one forward per image, a region token per region)")
    parser.add_argument("--single-pass-long-side", type=int, metavar="PIXELS",
                        help="single-pass: the image's long side in pixels (default: the model's input size)")
    parser.add_argument("--single-pass-blocks", type=int, metavar="N",
                        help="single-pass: region tokens join before the last N blocks (default: all)")
    parser.add_argument("--test-short-side", type=int, metavar="PIXELS",
                        help="two-stage protocols: resize each image to this shortest side first, as the method "
                             "tests (default: 640 for ADE, Pascal Context and VOC, the method's; 640 for COCO by "
                             "analogy; the world is evaluated as stored)")
    parser.add_argument("--test-max-size", type=int, metavar="PIXELS",
                        help="two-stage protocols: ... and to at most this longest side (default: 2560 where the "
                             "dataset has a default size)")
    parser.add_argument("--no-test-resize", action="store_true", help="evaluate images as stored")
    parser.add_argument("--mask-threshold", type=float, metavar="T",
                        help="two-stage: the probability at which a MaskFormer's soft masks are binarized for CLIP "
                             "(default: 0.4, as the method's Swin-B evaluation config; its demo config uses 0.35, its R101c "
                             "one 0.5)")
    parser.add_argument("--region-preprocessing", default="engine", choices=("engine", "method"), metavar="P",
                        help="crops: engine (as mining, PIL's way: 8-bit fill at the CLIP mean, antialiased bicubic; "
                             "default) | method (the method's released adapter: normalize, fill 0, F.interpolate "
                             "bicubic without antialiasing)")
    parser.add_argument("--device", default="auto", metavar="DEVICE", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of randomly initialised models (default: 0)")
    parser.add_argument("--out", metavar="RESULT.json", help="where to write the results as JSON (required, unless "
                                                            "--compare)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--compare", nargs="+", metavar="RESULT.json",
                        help="instead of a benchmark: print the models of earlier reports side by side; reports "
                             "measured under different protocol settings are refused")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="with --compare: compare reports of different protocols anyway, with a warning")


def run_bench(args: argparse.Namespace) -> int:
    from dataengine.clip import resolve_device

    from .benchmark import BenchConfig, Benchmark, format_table, write_report
    from .models import load_eval_model, parse_model_argument

    if args.compare:
        from .benchmark import compare_reports

        print(compare_reports(args.compare, args.allow_mismatch))
        return 0
    for flag, value in (("--dataset", args.dataset), ("--root", args.root), ("--out", args.out)):
        if value is None:
            raise ConfigError(f"{flag} is required (unless --compare)")
    device = resolve_device(args.device)
    config = BenchConfig(args.dataset, args.root, args.protocol, args.proposals,
                         ensemble_weight(args.ensemble_lambda, args.dataset), args.limit, args.batch_size, device,
                         progress=not args.no_progress, encoder=args.encoder, test_resize=not args.no_test_resize,
                         test_short_side=args.test_short_side, test_max_size=args.test_max_size,
                         single_pass_long_side=args.single_pass_long_side, single_pass_blocks=args.single_pass_blocks,
                         region_preprocessing=args.region_preprocessing, mask_threshold=args.mask_threshold,
                         ensemble_form=args.ensemble_form)
    requested = [parse_model_argument(value) for value in args.model]
    if args.clip or args.prompts or not requested:
        requested.insert(0, ("clip+prompts" if args.prompts else "clip", args.clip or "ViT-B-16@openai"))
    labels = [label for label, _ in requested]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--model: labels must be unique, got {', '.join(labels)}")
    models = [load_eval_model(label, spec, args.prompts if index == 0 and (args.clip or args.prompts) else None,
                              device, args.seed) for index, (label, spec) in enumerate(requested)]
    report = Benchmark(config, models).run()
    write_report(report, args.out)
    print(format_table(report))
    print(f"-> {args.out}")
    return 0


def ensemble_weight(value: str | None, dataset: str) -> float | None:
    """--ensemble-lambda: a number, or `method` for the method's weight on this dataset."""
    from .benchmark import ENSEMBLE_PRESETS

    if value is None:
        return None
    if value == "method":
        if dataset not in ENSEMBLE_PRESETS:
            raise ConfigError(f"--ensemble-lambda method: the method publishes no ensemble weight for {dataset} "
                              f"(it does for {', '.join(ENSEMBLE_PRESETS)}); give a number")
        return ENSEMBLE_PRESETS[dataset]
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--ensemble-lambda: expected a number in [0, 1] or `method`, got {value!r}") from None


def bench_main(argv: list[str] | None = None) -> int:
    from dataengine.cli import main

    return main(["bench", *(sys.argv[1:] if argv is None else argv)])

