"""Class-agnostic mask proposals behind one interface, with a registry of generators.

`create_generator("classical" | "annotations" | "hf:MODEL_ID_OR_PATH", config, device)`.
A generator returns candidate masks as `Proposals` (COCO RLE); the proposal stage then applies
the shared post-processing (`masks.finalize`) unless the generator opts out (ground-truth masks).
"""

from __future__ import annotations

from ..config import ConfigError, ProposalConfig
from ..records import Proposals, Sample


class ProposalGenerator:
    name = "generator"
    postprocess = True  # area limits, NMS and the cap apply to this generator's masks
    needs_annotations = False
    scores_classes = False  # proposals carry class probabilities over the generator's own labels

    def __init__(self, config: ProposalConfig, device: str = "cpu"):
        self.config = config
        self.device = device

    @property
    def model_id(self) -> str:
        return self.name

    def setup(self) -> None:
        """Load weights; called once per process before the first batch."""

    def generate(self, sample: Sample) -> Proposals:
        raise NotImplementedError

    def generate_batch(self, samples: list[Sample]) -> list[Proposals]:
        return [self.generate(sample) for sample in samples]


def create_generator(spec: str, config: ProposalConfig, device: str = "cpu") -> ProposalGenerator:
    name, _, argument = spec.partition(":")
    if name == "annotations":
        from .annotations import AnnotationProposals

        return AnnotationProposals(config, device)
    if name == "classical":
        from .classical import ClassicalProposals

        return ClassicalProposals(config, device)
    if name == "hf":
        if not argument:
            raise ConfigError("--proposals: hf needs a model, e.g. hf:facebook/maskformer-swin-base-coco or hf:/path/to/model")
        from .hf import create_hf_generator

        return create_hf_generator(argument, config, device)
    raise ConfigError(f"--proposals: unknown generator {spec!r} (available: annotations, classical, hf:MODEL_ID_OR_PATH)")
