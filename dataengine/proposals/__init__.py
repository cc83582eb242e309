"""Class-agnostic mask proposals behind one interface, with a registry of generators.

`create_generator("classical" | "annotations" | "hf:MODEL_ID_OR_PATH", config, device)`: the
spec's name picks the generator from `GENERATORS`, and what follows its colon is the generator's
argument (`create(argument, config, device)`; only hf takes one, the model).
A generator returns candidate masks as `Proposals` (COCO RLE); the proposal stage then applies
the shared post-processing (`masks.finalize`) unless the generator opts out (ground-truth masks).
"""

from __future__ import annotations

from ..config import ConfigError, ProposalConfig
from ..records import Proposals, Sample
from ..registry import Registry


class ProposalGenerator:
    name = "generator"
    postprocess = True  # area limits, NMS and the cap apply to this generator's masks
    needs_annotations = False
    scores_classes = False  # proposals carry class probabilities over the generator's own labels
    loads_model = False  # a learned model: its stage runs where the executor places models (an actor, a GPU)

    def __init__(self, config: ProposalConfig, device: str = "cpu"):
        self.config = config
        self.device = device

    @classmethod
    def create(cls, argument: str, config: ProposalConfig, device: str) -> ProposalGenerator:
        if argument:
            raise ConfigError(f"--proposals: {cls.name} takes no argument, got {cls.name}:{argument}")
        return cls(config, device)

    @property
    def model_id(self) -> str:
        return self.name

    def setup(self) -> None:
        """Load weights; called once per process before the first batch."""

    def generate(self, sample: Sample) -> Proposals:
        raise NotImplementedError

    def generate_batch(self, samples: list[Sample]) -> list[Proposals]:
        return [self.generate(sample) for sample in samples]


GENERATORS = Registry("generator", "--proposals", {
    "annotations": "dataengine.proposals.annotations:AnnotationProposals",
    "classical": "dataengine.proposals.classical:ClassicalProposals",
    "hf": "dataengine.proposals.hf:HFProposals",
}, hint="hf:MODEL_ID_OR_PATH names a transformers model")


def create_generator(spec: str, config: ProposalConfig, device: str = "cpu") -> ProposalGenerator:
    name, _, argument = spec.partition(":")
    return GENERATORS.get(name).create(argument, config, device)
