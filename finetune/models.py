"""CLIP models to evaluate: a pretrained spec, a checkpoint, learned mask prompts, or a finetune run
folder (which knows its base model, its finetuned weights and its prompts)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dataengine.clip import ClipModel, NounEmbeddings, load_clip, parse_clip_spec
from dataengine.config import ConfigError

from .mpt import MaskPromptedViT, wrap_with_prompts

log = logging.getLogger(__name__)


@dataclass
class EvalModel:
    label: str
    clip: ClipModel
    prompts: MaskPromptedViT | None = None
    _text: NounEmbeddings | None = field(default=None, repr=False)

    def class_embeddings(self, names: list[str]) -> torch.Tensor:
        """(C, D) prompt-ensembled (14 templates) normalized text embeddings."""
        if self._text is None:
            self._text = NounEmbeddings(self.clip)
        return self._text(names).to(self.clip.device)

    def encode_regions(self, pixels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Normalized features of normalized crops; the crop masks feed the mask prompts, if any."""
        pixels = pixels.to(self.clip.device)
        if self.prompts is None:
            return self.clip.encode_images(pixels)
        with torch.inference_mode(), self.clip.autocast():
            features = self.prompts(pixels, masks.to(self.clip.device))
        return F.normalize(features.float(), dim=-1)


def describe_run(folder: Path) -> tuple[str, str | None, int]:
    """A finetune run folder -> (clip spec with its finetuned weights, prompt file or None, seed)."""
    try:
        summary = json.loads((folder / "train.json").read_text())
        config = summary["config"]
        config["clip"]  # noqa: B018 (a run folder names its base model)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"--model: {folder / 'train.json'} is not a finetune summary ({type(error).__name__})") from None
    if not summary.get("finished"):
        log.warning("%s is an unfinished training run: evaluating its latest saved weights and prompts", folder)
    name = summary.get("architecture") or parse_clip_spec(config["clip"])[0]
    spec = f"{name}@{folder / 'model.pt'}" if (folder / "model.pt").exists() else config["clip"]
    prompts = folder / "prompts.pt"
    return spec, str(prompts) if prompts.exists() else None, int(config.get("seed", 0))


def load_eval_model(label: str, spec: str, prompts: str | None, device: str, seed: int = 0) -> EvalModel:
    """`spec`: NAME[@PRETRAINED_OR_PATH] or a finetune run folder."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not (folder / "train.json").exists():
            raise ConfigError(f"--model {label}: {folder} is not a finetune output folder (no train.json)")
        spec, run_prompts, seed = describe_run(folder)
        prompts = prompts or run_prompts
    clip = load_clip(spec, device, seed=seed)
    wrapper = None
    if prompts:
        if not Path(prompts).expanduser().exists():
            raise ConfigError(f"--prompts: no such file {prompts}")
        wrapper = wrap_with_prompts(clip.model.visual, Path(prompts).expanduser()).to(device).eval()
    return EvalModel(label, clip, wrapper)


def parse_model_argument(value: str) -> tuple[str, str]:
    """`LABEL=SPEC` -> (label, spec)."""
    label, sep, spec = value.partition("=")
    if not sep or not label or not spec:
        raise ConfigError(f"--model: expected LABEL=SPEC (SPEC: NAME[@WEIGHTS] or a finetune output folder), got {value!r}")
    return label, spec
