"""Train the controlled world's small CLIP from scratch, as CLIP was trained: whole scenes and their
captions, image-level contrastive loss, never a mask. Its weights are committed with the package
(`finetune/data/world_clip/`), with the command, seed and log that reproduce them:

    python -m finetune.world_clip --scenes 4000 --epochs 40 --seed 0

It runs on a CPU (11 minutes on 2 cores) and uses a GPU when one is present.
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

MODEL = "dataengine-world"
WEIGHTS = Path(__file__).parent / "data" / "world_clip" / f"{MODEL}.pt"


def world_spec() -> str:
    """The --clip spec of the committed small CLIP."""
    return f"{MODEL}@{WEIGHTS}"


def load_scenes(split: Path) -> tuple[torch.Tensor, list[list[str]]]:
    """All images of a world split as a uint8 (N, 3, S, S) tensor, and each image's captions."""
    from PIL import Image

    captions = json.loads((split / "captions.json").read_text())
    texts: dict[int, list[str]] = {}
    for caption in captions["annotations"]:
        texts.setdefault(caption["image_id"], []).append(caption["caption"])
    images = sorted(captions["images"], key=lambda image: image["id"])
    pixels = np.stack([np.asarray(Image.open(split / "images" / image["file_name"]).convert("RGB")) for image in images])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), [texts[image["id"]] for image in images]


def train_world_clip(world: Path, out: Path, epochs: int, batch_size: int, lr: float, seed: int,
                     device: str, progress: bool = True) -> dict:
    import open_clip
    from open_clip.loss import ClipLoss

    from dataengine.clip import register_package_models

    from .train import warmup_cosine

    register_package_models()
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    model = open_clip.create_model(MODEL, device=device)
    tokenizer = open_clip.get_tokenizer(MODEL)
    pixels, captions = load_scenes(world / "train")
    mean = torch.tensor(model.visual.image_mean or open_clip.OPENAI_DATASET_MEAN, device=device)[:, None, None]
    std = torch.tensor(model.visual.image_std or open_clip.OPENAI_DATASET_STD, device=device)[:, None, None]
    steps_per_epoch = math.ceil(len(pixels) / batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, 0.1))
    loss_fn = ClipLoss()
    history, started = [], time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = generator.permutation(len(pixels))
        losses = []
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            images = (pixels[chosen].to(device).float() / 255.0 - mean) / std
            texts = tokenizer([captions[i][generator.integers(len(captions[i]))] for i in chosen]).to(device)
            image_features, text_features, scale = model(images, texts)
            loss = loss_fn(image_features, text_features, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 5),
                        "seconds": round(time.perf_counter() - started, 1)})
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f} ({history[-1]['seconds']:.0f} s)",
                  flush=True)
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in model.state_dict().items()}
    torch.save(state, out / f"{MODEL}.pt")
    return {"model": MODEL, "history": history, "images": len(pixels), "device": device}


def main(argv: list[str] | None = None) -> int:
    from dataengine.world import generate_world

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=4000, help="scenes to generate (default: 4000)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs (default: 40)")
    parser.add_argument("--batch-size", type=int, default=128, help="scenes per step (default: 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate: 10%% warmup, then cosine (default: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and of training (default: 0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--out", default=str(WEIGHTS.parent), help=f"output folder (default: {WEIGHTS.parent})")
    args = parser.parse_args(argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    with tempfile.TemporaryDirectory(prefix="world-") as folder:
        generate_world(folder, scenes=args.scenes, seed=args.seed, heldout=0.0)
        result = train_world_clip(Path(folder), Path(args.out), args.epochs, args.batch_size, args.lr, args.seed, device)
    result["command"] = "python -m finetune.world_clip " + " ".join(argv if argv is not None else sys.argv[1:])
    result["settings"] = vars(args)
    (Path(args.out) / "train_log.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
