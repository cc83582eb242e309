"""The controlled world's small CLIP: trained from scratch as CLIP was trained (whole scenes and
their captions, image-level contrastive loss, never a mask or a region crop), and checked for
competence before anything is measured with it. Its weights are committed with the package
(`finetune/world/data/`), with the commands, seeds, log and competence report. Four stages, each
continuing the one before on the scenes of a new seed (56 minutes on a 2-core CPU):

    python -m finetune.world.clip --scenes 48000 --close-up-share 1.0 --terse-share 1.0 --epochs 4 \
        --batch-size 64 --seed 0 --out stage1
    python -m finetune.world.clip --init stage1/dataengine-world.pt --scenes 48000 --epochs 3 --lr 5e-4 \
        --batch-size 64 --seed 2 --out stage2
    python -m finetune.world.clip --init stage2/dataengine-world.pt --scenes 48000 --close-up-share 0.5 \
        --terse-share 0.25 --epochs 3 --lr 3e-4 --batch-size 64 --seed 3 --out stage3
    python -m finetune.world.clip --init stage3/dataengine-world.pt --scenes 48000 --close-up-share 0.5 \
        --terse-share 0.5 --stuff-only-share 0.1 --alt-text-stuff-share 0.3 --epochs 3 --lr 3e-4 \
        --batch-size 64 --seed 4 --out stage4
    python -m finetune.world.clip --check     # the competence report of the committed weights

The pretraining world differs from the mining world the way web alt-text differs from COCO
captions: more close-ups (`--close-up-share`), captions that only name the objects in varied
frames with their sizes (`--terse-share`), and later scenes of stuff alone and alt-text that names
the stuff (`--stuff-only-share`, `--alt-text-stuff-share`). Without terse captions, colour and
stuff words separate the scenes of a batch well enough that the contrastive loss never needs
shapes. Training from scratch starts the image tower's learnable position embeddings as 2-D
sin-cos (`--position-init`): from open_clip's small random start this small ViT stays blind to
where its patches are, and cannot learn shapes.

The check (scenes of a seed the model was never trained on): zero-shot accuracy on close-ups of
each of the 24 things and on whole-frame stuff scenes, per class; masked-region accuracy with
ground-truth masks on held-out scenes, things and stuff apart; and the mean pairwise cosine of
the things' text embeddings (how well the text tower tells the nouns apart).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .loop import pct

MODEL = "dataengine-world"
WEIGHTS = Path(__file__).parent / "data" / f"{MODEL}.pt"
COMPETENCE = WEIGHTS.parent / "competence.json"
CHECK_SEED = 123  # the committed weights were trained on seeds 0, 2, 3 and 4 and monitored on MONITOR_SEED
MONITOR_SEED = 7


def world_spec() -> str:
    """The --clip spec of the committed small CLIP."""
    return f"{MODEL}@{WEIGHTS}"


def training_seeds(log: Path = WEIGHTS.parent / "train_log.json") -> set[int]:
    """The world seeds whose scenes the committed weights were trained on (every run of train_log.json)."""
    seeds, entry = set(), json.loads(log.read_text())
    while isinstance(entry, dict):
        seeds.add(int(entry["settings"]["seed"]))
        entry = entry.get("continues")
    return seeds


def load_scenes(split: Path, size: int | None = None, chunk: int = 4096) -> tuple[torch.Tensor, list[list[str]]]:
    """All images of a world split as a uint8 (N, 3, S, S) tensor (resized to `size` as CLIP sees
    them, when given), and each image's captions."""
    from PIL import Image

    from dataengine.regions import resize_images
    from dataengine.sources.coco import read_coco_json

    captions = read_coco_json(split / "captions.json", f"world split {split.name}")
    texts: dict[int, list[str]] = {}
    for caption in captions["annotations"]:
        texts.setdefault(caption["image_id"], []).append(caption["caption"])
    images = sorted(captions["images"], key=lambda image: image["id"])
    batches = []
    for start in range(0, len(images), chunk):  # resized chunk by chunk: the scenes at full size need not fit at once
        pixels = np.stack([np.asarray(Image.open(split / "images" / image["file_name"]).convert("RGB"))
                           for image in images[start : start + chunk]])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        batches.append(resize_images(batch, size) if size else batch)
    return torch.cat(batches), [texts[image["id"]] for image in images]


# ---------------------------------------------------------------- competence


def close_up_images(seed: int, per_thing: int, size: int = 128) -> tuple[torch.Tensor, np.ndarray]:
    """`per_thing` close-ups of each thing (uint8 (N, 3, S, S), drawn at the world's scene size) and
    their thing indices."""
    from .scenes import THINGS, make_close_up

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(THINGS)), per_thing)
    pixels = np.stack([make_close_up(rng, THINGS[label], size).image for label in labels])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), labels


def stuff_images(seed: int, per_stuff: int, size: int = 128) -> tuple[torch.Tensor, np.ndarray]:
    """`per_stuff` whole-frame scenes of each stuff and their stuff indices."""
    from .scenes import STUFF, stuff_texture

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(STUFF)), per_stuff)
    pixels = np.stack([stuff_texture(STUFF[label], size, size, rng) for label in labels])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), labels


def zero_shot(clip, pixels: torch.Tensor, labels: np.ndarray, names: tuple[str, ...], batch_size: int = 128) -> dict:
    """Whole-image zero-shot classification among `names` (14 templates): overall and per class."""
    from dataengine.clip import NounEmbeddings
    from dataengine.regions import normalize, resize_images

    classes = NounEmbeddings(clip)(list(names)).to(clip.device)
    inputs = resize_images(pixels, clip.image_size)
    predicted = torch.cat([
        (clip.encode_images(normalize(inputs[start : start + batch_size], clip.mean, clip.std)) @ classes.t()).argmax(1).cpu()
        for start in range(0, len(pixels), batch_size)]).numpy()
    per_class = {name: pct(int((predicted[labels == c] == c).sum()), int((labels == c).sum()))
                 for c, name in enumerate(names)}
    return {"images": int(len(labels)), "accuracy": pct(int((predicted == labels).sum()), len(labels)),
            "min_class_accuracy": min(per_class.values()), "per_class": per_class}


def text_separation(clip, names: tuple[str, ...]) -> float:
    """Mean pairwise cosine of the nouns' prompt-ensembled text embeddings (1.0: indistinguishable)."""
    from dataengine.clip import NounEmbeddings

    embeddings = NounEmbeddings(clip)(list(names))
    cosines = embeddings @ embeddings.t()
    return round(float(cosines[~torch.eye(len(names), dtype=torch.bool)].mean()), 4)


def masked_region_accuracy(clip, seed: int, scenes: int) -> dict:
    """Region accuracy with ground-truth masks on a held-out world (every region classified among
    all 29 nouns, as in the benchmark), things and stuff apart."""
    from ..benchmark import BenchConfig, Benchmark
    from ..models import EvalModel
    from .loop import group_regions
    from .scenes import STUFF, THINGS, generate_world

    with tempfile.TemporaryDirectory(prefix="world-check-") as folder:
        generate_world(folder, scenes=scenes, seed=seed, heldout=1.0)
        result = Benchmark(BenchConfig("world", str(Path(folder) / "heldout"), "gt-masks", device=clip.device,
                                       progress=False), [EvalModel("clip", clip)]).run()["models"]["clip"]
    report = {"scenes": scenes, "accuracy": round(result["region_accuracy"], 2)}
    for group, names in (("things", THINGS), ("stuff", STUFF)):
        hits, total = group_regions(result["per_class_regions"], names)
        report[f"accuracy_{group}"], report[f"regions_{group}"] = pct(hits, total), total
    report["per_class"] = {name: round(value, 2) for name, value in result["per_class_region_accuracy"].items()}
    return report


def competence(spec: str, seed: int = CHECK_SEED, per_thing: int = 20, per_stuff: int = 20, scenes: int = 200,
               device: str = "cpu") -> dict:
    """The competence report of a world CLIP (see the module's docstring)."""
    from dataengine.clip import load_clip

    from .scenes import STUFF, THINGS

    clip = load_clip(spec, device)
    report = {"clip": spec, "seed": seed,
              "close_up_things": zero_shot(clip, *close_up_images(seed, per_thing), THINGS),
              "whole_frame_stuff": zero_shot(clip, *stuff_images(seed, per_stuff), STUFF),
              "text_mean_pairwise_cosine_things": text_separation(clip, THINGS)}
    if scenes:
        report["masked_regions"] = masked_region_accuracy(clip, seed, scenes)
    report["chance"] = {"things": pct(1, len(THINGS)), "stuff": pct(1, len(STUFF)),
                        "regions": pct(1, len(THINGS) + len(STUFF))}
    return report


def format_competence(report: dict) -> str:
    close, stuff = report["close_up_things"], report["whole_frame_stuff"]
    chance = report["chance"]
    lines = [f"competence of {Path(report['clip'].split('@')[-1]).name} on scenes of seed {report['seed']} "
             "(never trained on)",
             f"close-up zero-shot, 24 things: {close['accuracy']}% of {close['images']} "
             f"(lowest class {close['min_class_accuracy']}%; chance {chance['things']}%)",
             f"whole-frame zero-shot, 5 stuff: {stuff['accuracy']}% of {stuff['images']} "
             f"(lowest class {stuff['min_class_accuracy']}%; chance {chance['stuff']}%)",
             f"text embeddings of the things: mean pairwise cosine {report['text_mean_pairwise_cosine_things']}"]
    if "masked_regions" in report:
        regions = report["masked_regions"]
        lines.append(f"masked-region accuracy, ground-truth masks, {regions['scenes']} held-out scenes (29 nouns, "
                     f"chance {chance['regions']}%): things {regions['accuracy_things']}% of {regions['regions_things']}, "
                     f"stuff {regions['accuracy_stuff']}% of {regions['regions_stuff']}, all {regions['accuracy']}%")
    lines.append("per thing, close-up / masked region:")
    per_region = report.get("masked_regions", {}).get("per_class", {})
    for name, value in close["per_class"].items():
        lines.append(f"  {name:<10} {value:>6.1f} {per_region.get(name, float('nan')):>6.1f}")
    lines.append("per stuff, whole frame / masked region:")
    for name, value in stuff["per_class"].items():
        lines.append(f"  {name:<10} {value:>6.1f} {per_region.get(name, float('nan')):>6.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- training


def train_world_clip(world: Path, out: Path, epochs: int, batch_size: int, lr: float, seed: int,
                     device: str, progress: bool = True, init: Path | None = None, warmup: float = 0.1,
                     position_init: str = "sincos") -> dict:
    """Contrastive training from scratch, or from the weights `init` (to continue on new scenes).
    From scratch, the image tower's (learnable) position embeddings start as 2-D sin-cos
    (`position_init="sincos"`) rather than open_clip's small random ones (`"random"`); see
    `init_positions`."""
    import open_clip

    from dataengine.checkpoint import load_state_dict
    from dataengine.clip import ClipModel, register_package_models

    from ..train import clip_loss, no_decay, parameter_groups, warmup_cosine
    from .scenes import STUFF, THINGS

    register_package_models()
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    model = open_clip.create_model(MODEL, device=device)
    if init is not None:
        state = load_state_dict(init, "--init", device)
        model.load_state_dict({name: tensor.float() if tensor.is_floating_point() else tensor
                               for name, tensor in state.items()})
    elif position_init == "sincos":
        init_positions(model.visual)
    tokenizer = open_clip.get_tokenizer(MODEL)
    size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size)
    pixels, captions = load_scenes(world / "train", size)
    mean = tuple(model.visual.image_mean or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(model.visual.image_std or open_clip.OPENAI_DATASET_STD)
    monitor, stuff_monitor = close_up_images(MONITOR_SEED, 5), stuff_images(MONITOR_SEED, 5)
    clip = ClipModel(MODEL, model, tokenizer, device, size, mean, std, MODEL)
    mean_t, std_t = (torch.tensor(v, device=device)[:, None, None] for v in (mean, std))
    steps_per_epoch = math.ceil(len(pixels) / batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(parameter_groups(model.parameters(), 0.1, no_decay(model)), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
    history, started = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = generator.permutation(len(pixels))
        losses = []
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            images = (pixels[chosen].to(device).float() / 255.0 - mean_t) / std_t
            chosen_captions = [captions[i][generator.integers(len(captions[i]))] for i in chosen]
            image_features, text_features, scale = model(images, tokenizer(chosen_captions).to(device))
            loss = clip_loss(image_features, text_features, caption_labels(chosen_captions, device), scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
        model.eval()
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 5),
                        "close_up_accuracy_monitor": zero_shot(clip, *monitor, THINGS)["accuracy"],
                        "stuff_accuracy_monitor": zero_shot(clip, *stuff_monitor, STUFF)["accuracy"],
                        "seconds": round(time.perf_counter() - started, 1)})
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f}, close-up accuracy "
                  f"{history[-1]['close_up_accuracy_monitor']:.1f}%, stuff accuracy "
                  f"{history[-1]['stuff_accuracy_monitor']:.1f}% ({history[-1]['seconds']:.0f} s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in model.state_dict().items()}
    torch.save(state, out / f"{MODEL}.pt")
    return {"model": MODEL, "history": history, "images": len(pixels), "device": device,
            "monitor": f"close-ups and whole-frame stuff of seed {MONITOR_SEED}, 5 per class"}


def init_positions(visual) -> None:
    """Sets a ViT's learnable position embeddings (class token first) to the 2-D sin-cos table of
    its patch grid. With open_clip's default start (N(0, width^-1/2), about a tenth of a patch
    embedding's scale) the small tower is all but position-blind for its first hundred thousand
    samples, and the world's objects differ by shape, i.e. by where their edges are."""
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    rows, cols = visual.grid_size
    if rows != cols:
        raise ValueError(f"sin-cos position init needs a square patch grid, not {rows}x{cols}")
    table = get_2d_sincos_pos_embed(visual.positional_embedding.shape[1], rows, cls_token=True)
    with torch.no_grad():
        visual.positional_embedding.copy_(torch.from_numpy(table).float())


def caption_labels(captions: list[str], device) -> torch.Tensor:
    """One label per distinct caption string: a close-up's terse caption ("a star") repeats within a
    batch, and counting its copies as negatives would teach the towers instance details, not nouns."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(caption, len(index)) for caption in captions], device=device)


def check(args) -> int:
    from dataengine.clip import register_package_models, resolve_device

    register_package_models()
    weights = Path(args.weights)
    report = competence(f"{MODEL}@{weights}", args.check_seed, device=resolve_device(args.device))
    if weights.resolve() == WEIGHTS.resolve():  # no machine-specific path in the committed report
        report["clip"] = f"{MODEL}@finetune/world/data/{WEIGHTS.name}"
    print(format_competence(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        print(f"-> {args.report}")
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's real default."""


def main(argv: list[str] | None = None) -> int:
    from dataengine.config import ConfigError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="print the competence report of --weights instead of training")
    parser.add_argument("--weights", default=str(WEIGHTS), help="weights to check")
    parser.add_argument("--check-seed", type=int, default=CHECK_SEED,
                        help="seed of the check's scenes")
    parser.add_argument("--report", metavar="FILE", help="also write the competence report as JSON to this file")
    parser.add_argument("--scenes", type=int, default=32000, help="scenes to generate")
    parser.add_argument("--close-up-share", type=float, default=0.75, help="share of close-up scenes")
    parser.add_argument("--terse-share", type=float, default=0.5,
                        help="share of captions that only name the objects")
    parser.add_argument("--stuff-only-share", type=float, default=0.0,
                        help="share of scenes of stuff alone, without objects (texture photos)")
    parser.add_argument("--alt-text-stuff-share", type=float, default=0.0,
                        help="share of alt-text captions that name a stuff region too (always, in a scene of stuff alone)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="scenes per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate: 10%% warmup, then cosine")
    parser.add_argument("--init", metavar="WEIGHTS", help="start from these weights, to continue on the scenes of "
                        "another --seed (None: from scratch)")
    parser.add_argument("--position-init", choices=("sincos", "random"), default="sincos",
                        help="start of the image tower's learnable position embeddings when training from scratch: "
                        "2-D sin-cos, or open_clip's small random ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and of training")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", default=str(WEIGHTS.parent), help="output folder")
    args = parser.parse_args(argv)
    try:
        return check(args) if args.check else train_command(args, argv)
    except ConfigError as error:  # a user's error (a bad weights file, device...): one line
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


def train_command(args, argv: list[str] | None) -> int:
    from dataengine.checkpoint import load_state_dict
    from dataengine.clip import resolve_device

    from .scenes import generate_world

    device = resolve_device(args.device)
    if args.init:
        load_state_dict(args.init, "--init", mmap=True)  # refused before the world is generated
    with tempfile.TemporaryDirectory(prefix="world-") as folder:
        generate_world(folder, scenes=args.scenes, seed=args.seed, heldout=0.0, close_up_share=args.close_up_share,
                       terse_share=args.terse_share, stuff_only_share=args.stuff_only_share,
                       alt_text_stuff_share=args.alt_text_stuff_share)
        result = train_world_clip(Path(folder), Path(args.out), args.epochs, args.batch_size, args.lr, args.seed,
                                  device, init=Path(args.init) if args.init else None, position_init=args.position_init)
    result["command"] = "python -m finetune.world.clip " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.init:  # the log of the run it continues, so that one file tells the whole history
        previous = Path(args.init).with_name("train_log.json")
        result["continues"] = json.loads(previous.read_text()) if previous.exists() else args.init
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("check", "weights", "check_seed", "report")}
    (Path(args.out) / "train_log.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
