"""Region encoders on the same inputs and model, in one run: the one-region-at-a-time PIL reference,
the batched crop matcher (the method's path) and the single-pass encoder (one forward per image).

Prints: regions/s of each and their ratios, the share of crop matcher time spent outside the model
forward (crop, resize, normalize, transfer), whether crops choose the reference's pairs, and how
often single-pass chooses the same proposal for a noun as crops.

    python bench/bench_matcher.py                       # ViT-B-16 (random init: same cost as trained), CPU
    python bench/bench_matcher.py --images 8 --proposals 100 --no-reference
    python bench/bench_matcher.py --device cuda --images 8 --proposals 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import offline_environment, require_coco_mini


def load_samples(folder, images: int, proposals: int):
    from dataengine.config import MineConfig, ProposalConfig, SourceConfig
    from dataengine.proposals import create_generator
    from dataengine.sources.coco import CocoSource
    from dataengine.stages import DecodeStage, NounStage

    config = MineConfig(source=SourceConfig(type="coco", images=str(folder / "images"), captions=str(folder / "captions.json")))
    config.proposals = ProposalConfig(max_proposals=proposals)
    samples = list(CocoSource(config.source))[:images]
    for stage in (NounStage(config), DecodeStage(config)):
        stage.setup()
        stage(samples)
    generator = create_generator("classical", config.proposals)
    for sample in samples:
        sample.proposals = generator.generate(sample)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="ViT-B-16", help="open_clip model spec (default: ViT-B-16, random init)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--proposals", type=int, default=12, help="proposals per image (default: 12)")
    parser.add_argument("--batch-size", type=int, default=None, help="regions per forward (default: the matcher's own)")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow one-region reference")
    parser.add_argument("--long-side", type=int, default=None,
                        help="single-pass: the image's long side in pixels (default: the model's input size)")
    args = parser.parse_args()
    offline_environment()

    from dataengine.clip import load_clip
    from dataengine.config import MatchConfig
    from dataengine.match import RegionMatcher, Timer
    from dataengine.reference import reference_similarity

    samples = load_samples(require_coco_mini(), args.images, args.proposals)
    regions = sum(len(s.proposals) for s in samples)
    clip = load_clip(args.clip, args.device)
    config = MatchConfig(batch_size=args.batch_size)
    matcher = RegionMatcher(clip, config)
    matcher.timer = Timer(args.device, sync=True)  # exact phase times on a GPU
    matcher.noun_embeddings([n.noun for s in samples for n in s.nouns])  # text encoded once, outside both timings
    matcher.region_features(samples[:1])  # warm-up (allocator, kernels)
    matcher.timer.seconds.clear()

    start = time.perf_counter()
    batched = matcher.region_features(samples)
    batched_seconds = time.perf_counter() - start
    phases = dict(matcher.timer.seconds)

    single_pass = RegionMatcher(clip, MatchConfig(encoder="single-pass", single_pass_long_side=args.long_side))
    single_pass.region_features(samples[:1])  # warm-up
    start = time.perf_counter()
    single = single_pass.region_features(samples)
    single_seconds = time.perf_counter() - start

    print(f"model {args.clip} on {args.device}: {len(samples)} images, {regions} regions")
    if not args.no_reference:
        start = time.perf_counter()
        references = [reference_similarity(clip, matcher.noun_embeddings, s.image, s.proposals,
                                           [n.noun for n in s.nouns]) for s in samples]
        reference_seconds = time.perf_counter() - start
        print(f"reference (one region, PIL): {regions / reference_seconds:8.2f} regions/s")
    print(f"crop matcher (batched)     : {regions / batched_seconds:8.2f} regions/s")
    print(f"single-pass                : {regions / single_seconds:8.2f} regions/s")
    if not args.no_reference:
        print(f"speed-up crops / reference: {reference_seconds / batched_seconds:.2f}x")
        identical, worst = same_pairs(samples, batched, references, matcher.noun_embeddings, config)
        print(f"crops choose the reference's pairs: {identical}; max |score difference| {worst:.2e}")
    print(f"speed-up single-pass / crops: {batched_seconds / single_seconds:.2f}x")
    print(f"single-pass features all finite: {all(bool(torch.isfinite(f).all()) for f in single)}")
    outside = 1.0 - phases.get("forward", 0.0) / batched_seconds  # everything but the forward, untimed work included
    print(f"share of crop matcher time outside the forward (crop, resize, normalize, transfer): {100 * outside:.2f}%")
    untrained = "@" not in args.clip  # a bare name is a random init: its choices mean nothing
    print(f"nouns for which single-pass chooses the proposal crops choose: "
          f"{100 * same_choices(samples, batched, single, matcher.noun_embeddings):.1f}%"
          + (" (random weights: no meaning; python -m finetune.world.encoders measures agreement)" if untrained else ""))


def similarities(sample, features, embeddings) -> np.ndarray:
    return (features @ embeddings([n.noun for n in sample.nouns]).T).numpy()


def same_pairs(samples, batched, references, embeddings, config) -> tuple[bool, float]:
    from dataengine.match import select_pairs

    identical, worst = True, 0.0
    for sample, features, reference in zip(samples, batched, references, strict=True):
        similarity = similarities(sample, features, embeddings)
        worst = max(worst, float(np.abs(similarity - reference).max()))
        ours = [(c.noun_index, c.proposal_index) for c in select_pairs(similarity, config).pairs]
        theirs = [(c.noun_index, c.proposal_index) for c in select_pairs(reference, config).pairs]
        identical &= ours == theirs
    return identical, worst


def same_choices(samples, crops, single, embeddings) -> float:
    """Share of (image, noun) for which both encoders' best proposal is the same."""
    same = total = 0
    for sample, first, second in zip(samples, crops, single, strict=True):
        if not sample.nouns:
            continue
        a = similarities(sample, first, embeddings).argmax(0)
        b = similarities(sample, second, embeddings).argmax(0)
        same, total = same + int((a == b).sum()), total + len(a)
    return same / max(1, total)

if __name__ == "__main__":
    main()
