"""CLIP models to evaluate: a pretrained spec, a checkpoint, learned mask prompts, or a finetune run
folder (which knows its base model, its finetuned weights and its prompts)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dataengine.clip import ClipModel, NounEmbeddings, load_adapted_clip
from dataengine.config import ConfigError
from dataengine.prompts import MaskPromptedViT


@dataclass
class EvalModel:
    label: str
    clip: ClipModel
    _text: NounEmbeddings | None = field(default=None, repr=False)

    @property
    def prompts(self) -> MaskPromptedViT | None:
        return self.clip.prompts

    def class_embeddings(self, names: list[str]) -> torch.Tensor:
        """(C, D) prompt-ensembled (14 templates) normalized text embeddings."""
        if self._text is None:
            self._text = NounEmbeddings(self.clip)
        return self._text(names).to(self.clip.device)

    def encode_regions(self, pixels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Normalized features of normalized crops; the crop masks feed the mask prompts, if any."""
        return self.clip.encode_regions(pixels, masks)


def load_eval_model(label: str, spec: str, prompts: str | None, device: str, seed: int = 0) -> EvalModel:
    """`spec`: NAME[@PRETRAINED_OR_PATH] or a finetune run folder."""
    return EvalModel(label, load_adapted_clip(spec, device, seed, prompts, flag=f"--model {label}"))


def parse_model_argument(value: str) -> tuple[str, str]:
    """`LABEL=SPEC` -> (label, spec)."""
    label, sep, spec = value.partition("=")
    if not sep or not label or not spec:
        raise ConfigError(f"--model: expected LABEL=SPEC (SPEC: NAME[@WEIGHTS] or a finetune output folder), got {value!r}")
    return label, spec
