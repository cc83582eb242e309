"""The mining stages, in pipeline order: nouns -> decode -> proposals -> match.

Nouns come first because they are cheap: an image whose captions hold no noun is never decoded.
"""

from __future__ import annotations

import contextlib

from .config import MineConfig
from .images import decode_sample
from .masks import finalize
from .reasons import NO_CAPTION, NO_NOUNS, NO_PAIRS, NO_PROPOSALS
from .records import Sample
from .stage import CPU_TASK, MODEL_ACTOR, Stage, share_time
from .write import encode_pair


@contextlib.contextmanager
def torch_threads(device: str, threads: int):
    """torch's CPU threads at `threads` (`match.cpu_threads`) for a model stage's own work only, on
    a CPU; the process's setting is restored after it (a caller's training or benchmark keeps its
    threads). One thread keeps model outputs bit-identical whatever the executor (see MatchConfig)."""
    if device.startswith("cuda"):
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class NounStage(Stage):
    name = "nouns"

    def __init__(self, config: MineConfig):
        super().__init__()
        self.config = config.nouns
        self.extractor = None

    def setup(self) -> None:
        from .nouns import NounExtractor

        if self.extractor is None:
            self.extractor = NounExtractor(self.config)

    def process_batch(self, samples: list[Sample]) -> None:
        from .nouns import image_nouns

        self.setup()
        limit = self.config.max_captions_per_image
        captions = [[c for c in s.captions if c.text.strip()][:limit] for s in samples]
        mentions = iter(self.extractor.mentions([c.text for used in captions for c in used]))
        for sample, used in zip(samples, captions, strict=True):
            if not used:
                sample.drop(NO_CAPTION, f"{len(sample.captions)} caption(s), none with text", self.name)
                continue
            sample.nouns = image_nouns(used, [next(mentions) for _ in used])
            if not sample.nouns:
                sample.drop(NO_NOUNS, f"no visual noun in {len(used)} caption(s)", self.name)


class DecodeStage(Stage):
    name = "decode"

    def __init__(self, config: MineConfig):
        super().__init__()
        self.source = config.source  # max_pixels, max_file_bytes, max_pixels_per_byte

    def process(self, sample: Sample) -> None:
        decode_sample(sample, self.source)


class ProposalStage(Stage):
    name = "proposals"

    def __init__(self, config: MineConfig, device: str):
        from .proposals import GENERATORS

        super().__init__()
        self.config = config.proposals
        self.generator_type = GENERATORS.get(self.config.generator.partition(":")[0])
        self.generator = None  # built by setup(), where the stage runs: an hf: one reads its model's config
        self.mask_pixels = config.mask_pixels_per_chunk  # memory bound of its full-size masks
        self.device, self.threads = device, config.match.cpu_threads

    @property
    def placement(self) -> str:
        return MODEL_ACTOR if self.generator_type.loads_model else CPU_TASK

    def setup(self) -> None:
        from .proposals import create_generator

        if self.generator is not None:
            return
        generator = create_generator(self.config.generator, self.config, self.device)
        generator.mask_pixels = self.mask_pixels
        with torch_threads(self.device, self.threads):
            generator.setup()
        self.generator = generator

    def process_batch(self, samples: list[Sample]) -> None:
        self.setup()
        with torch_threads(self.device, self.threads):  # learned generators: as many threads as CLIP
            generated = self.generator.generate_batch(samples)
        for sample, proposals in zip(samples, generated, strict=True):
            if self.generator.postprocess:
                cfg = self.config
                proposals = finalize(proposals, sample.height * sample.width, min_area=cfg.min_area,
                                     max_area=cfg.max_area, nms_iou=cfg.nms_iou, max_proposals=cfg.max_proposals)
            sample.proposals = proposals
            if not len(proposals):
                sample.drop(NO_PROPOSALS, f"{self.generator.model_id} gave no non-empty mask", self.name)


class MatchStage(Stage):
    name = "match"
    placement = MODEL_ACTOR

    def __init__(self, config: MineConfig, device: str):
        super().__init__()
        self.config = config.match
        self.jpeg_quality = config.write.jpeg_quality
        self.mask_pixels = config.mask_pixels_per_chunk
        self.device = device
        self.matcher = None

    def setup(self) -> None:
        from .clip import load_adapted_clip
        from .match import RegionMatcher

        if self.matcher is None:
            with self.threads():
                clip = load_adapted_clip(self.config.clip, self.device, self.config.seed)
                self.matcher = RegionMatcher(clip, self.config, self.mask_pixels)

    def threads(self):
        return torch_threads(self.device, self.config.cpu_threads)

    def process_batch(self, samples: list[Sample]) -> None:
        self.setup()
        before = dict(self.matcher.timer.seconds)
        with self.threads():
            self.matcher.match(samples)
        for phase, seconds in self.matcher.timer.seconds.items():
            share_time(samples, f"{self.name}.{phase}", seconds - before.get(phase, 0.0))
        for sample in samples:
            sample.image = None  # the pairs hold their crops; the full image is no longer needed
            for pair in sample.pairs:
                encode_pair(pair, self.jpeg_quality)
            if not sample.pairs:
                reasons = sorted({r.reason for r in sample.noun_rejects})
                sample.drop(NO_PAIRS, f"all {len(sample.nouns)} noun(s) rejected: {', '.join(reasons)}", self.name)


def build_stages(config: MineConfig, device: str) -> list[Stage]:
    """The one stage list of a run, in order; executors split it with `stage.split_by_placement`.
    Building is cheap (no model loads before `setup()`), so every process may build the list."""
    return [NounStage(config), DecodeStage(config), ProposalStage(config, device), MatchStage(config, device)]
