"""open_clip models for matching: loading by NAME[@PRETRAINED_OR_PATH] or from a finetune output
folder (its finetuned weights and mask prompts), the package's own model configs (a tiny one for
tests and demos), and a per-run cache of prompt-ensembled noun embeddings."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from .checkpoint import file_sha256, load_state_dict
from .config import ConfigError
from .hub import hub_access

# ViLD's 14 prompt templates, as in the method reference.
TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)
log = logging.getLogger(__name__)
PACKAGE_MODEL_CONFIGS = Path(__file__).parent / "data" / "model_configs"


def register_package_models() -> None:
    """Makes the package's model configs (dataengine-tiny) and those other packages declare through the
    `dataengine.model_configs` entry point (the controlled world's dataengine-world) open_clip names."""
    import open_clip

    if "dataengine-tiny" not in open_clip.list_models():
        open_clip.add_model_config(PACKAGE_MODEL_CONFIGS)
    for entry in entry_points(group="dataengine.model_configs"):
        if entry.name not in open_clip.list_models():
            open_clip.add_model_config(entry.load())


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device: {device} requested but CUDA is not available here (use --device cpu)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    return device


@dataclass
class ClipModel:
    """An open_clip model in eval mode with what region matching needs from it."""

    spec: str
    model: object
    tokenizer: object
    device: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    architecture: str = ""  # the open_clip model name that rebuilds this network (e.g. with -quickgelu)
    prompts: object = None  # a dataengine.prompts.MaskPromptedViT around model.visual, or None

    @property
    def fill_rgb(self) -> tuple[float, float, float]:
        """Outside-mask pixel value (0..255): the pixel mean, which normalizes to zero."""
        return tuple(255.0 * m for m in self.mean)

    def autocast(self):
        import torch

        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return contextlib.nullcontext()

    def encode_images(self, pixels, pad_to: int | None = None):
        """Normalized image features. With `pad_to`, the batch is padded to that many rows: math
        libraries choose kernels by shape, so only a fixed shape makes each region's features
        independent of how many others share its batch (and the output of executors identical)."""
        import torch

        count = len(pixels)
        if pad_to and count < pad_to:
            pixels = torch.cat([pixels, pixels.new_zeros((pad_to - count, *pixels.shape[1:]))])
        with torch.inference_mode(), self.autocast():
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(features[:count].float(), dim=-1)

    def encode_regions(self, pixels, masks, pad_to: int | None = None):
        """Normalized features of normalized region crops. With mask prompts, the crop masks (B, S, S)
        choose the masked patches, as in training; without, this is `encode_images`."""
        import torch

        if self.prompts is None:
            return self.encode_images(pixels, pad_to)
        count = len(pixels)
        if pad_to and count < pad_to:  # padded rows are unmasked: they never enable the prompts
            pixels = torch.cat([pixels, pixels.new_zeros((pad_to - count, *pixels.shape[1:]))])
            masks = torch.cat([masks, masks.new_ones((pad_to - count, *masks.shape[1:]))])
        with torch.inference_mode(), self.autocast():
            features = self.prompts(pixels.to(self.device, non_blocking=True), masks.to(self.device))
        return torch.nn.functional.normalize(features[:count].float(), dim=-1)

    def encode_texts(self, texts: list[str]):
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode(), self.autocast():
            features = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features.float(), dim=-1)


@dataclass(frozen=True)
class FinetuneRun:
    """What a finetune output folder holds: the spec of its weights (the base model's for an MPT
    run), its mask prompt file (None for a full finetune) and the seed of its base model."""

    folder: str
    spec: str
    prompts: str | None
    seed: int

    def digests(self) -> dict[str, str]:
        """sha256 of the folder's weight and prompt files: a folder trained again is another model."""
        files = [self.prompts] if self.prompts else []
        name, weights = parse_clip_spec(self.spec)
        if weights and Path(weights).parent == Path(self.folder):
            files.append(weights)
        return {Path(path).name: file_sha256(path) for path in sorted(files)}


def finetune_run(spec: str, flag: str = "--clip") -> FinetuneRun | None:
    """The finetune output folder `spec` names (it holds train.json), or None when `spec` is not a
    folder. A folder that is not a finetune run is an error."""
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        return None
    try:
        summary = json.loads((folder / "train.json").read_text())
        config = summary["config"]
        base = config["clip"]
        if not isinstance(base, str):
            raise TypeError("config.clip is not a string")
    except FileNotFoundError:
        raise ConfigError(f"{flag}: {folder} is not a finetune output folder (no train.json)") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{flag}: {folder / 'train.json'} is not a finetune summary ({type(error).__name__})") from None
    if not summary.get("finished"):
        log.warning("%s is an unfinished training run: using its latest saved weights and prompts", folder)
    name = summary.get("architecture") or parse_clip_spec(base)[0]
    weights, prompts = folder / "model.pt", folder / "prompts.pt"
    spec = f"{name}@{weights}" if weights.exists() else base
    return FinetuneRun(str(folder), spec, str(prompts) if prompts.exists() else None, int(config.get("seed", 0)))


def load_adapted_clip(spec: str, device: str = "cpu", seed: int = 0, prompts: str | None = None,
                      flag: str = "--clip") -> ClipModel:
    """`load_clip`, and also a finetune output folder: its weights, with its mask prompts applied
    to every region (`prompts`: a prompt file to use instead of the folder's)."""
    from .prompts import wrap_with_prompts

    run = finetune_run(spec, flag)
    if run is not None:
        spec, prompts, seed = run.spec, prompts or run.prompts, run.seed
    clip = load_clip(spec, device, seed=seed)
    if prompts:
        if not Path(prompts).expanduser().exists():
            raise ConfigError(f"--prompts: no such file {prompts}")
        clip.prompts = wrap_with_prompts(clip.model.visual, Path(prompts).expanduser()).to(device).eval()
    return clip


def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    name, _, pretrained = spec.partition("@")
    if not name:
        raise ConfigError(f"--clip: expected NAME[@PRETRAINED_OR_PATH], got {spec!r}")
    return name, pretrained or None


def check_clip_spec(spec: str) -> tuple[str, str | None]:
    """Check a spec without loading weights: a known model name, and a known pretrained tag or an
    existing checkpoint file. Returns (name, pretrained) with the checkpoint path resolved."""
    import open_clip

    register_package_models()
    name, pretrained = parse_clip_spec(spec)
    if name.startswith(("hf-hub:", "local-dir:")):
        return name, pretrained
    if name not in open_clip.list_models():
        raise ConfigError(f"--clip: unknown open_clip model {name!r} (see open_clip.list_models())")
    if pretrained is None:
        return name, None
    if Path(pretrained).expanduser().exists():
        return name, str(Path(pretrained).expanduser())
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        known = ", ".join(tags) or "none"
        raise ConfigError(f"--clip: cannot load {spec}: {pretrained!r} is neither a checkpoint file nor a pretrained "
                          f"tag of {name} (tags: {known})")
    return name, pretrained


def fetch_clip_weights(spec: str) -> None:
    """Make sure a pretrained tag's weights are in the local cache (downloading them where a network
    exists), without building the model: a missing model is an error before any work starts."""
    import open_clip

    name, pretrained = check_clip_spec(spec)
    if pretrained and Path(pretrained).exists():
        check_clip_checkpoint(spec)
        return
    if not pretrained or name.startswith(("hf-hub:", "local-dir:")):
        return
    try:
        with hub_access():
            path = open_clip.download_pretrained(open_clip.get_pretrained_cfg(name, pretrained))
    except Exception as error:  # network, cache and hub errors all mean the same thing here
        raise ConfigError(f"--clip: cannot get the weights of {spec} ({type(error).__name__}); on a machine "
                          "without network, give a local checkpoint: NAME@/path/to/weights.pt") from error
    if not path:
        raise ConfigError(f"--clip: no download location known for {spec}")


def load_clip(spec: str, device: str = "cpu", seed: int = 0) -> ClipModel:
    """`ViT-B-16@openai`, `ViT-B-16@/path/to/checkpoint.pt`, or a bare name for a seeded random init."""
    import open_clip
    import torch

    name, pretrained = check_clip_spec(spec)
    if not pretrained:
        log.info("CLIP %s: no pretrained weights requested: seeded random initialisation", name)
    checkpoint = _checkpoint_file(name, pretrained)
    if checkpoint:
        _read_checkpoint(checkpoint)  # weights only: refused before open_clip unpickles it
    quick_gelu = _trained_with_quick_gelu(name, pretrained)
    try:
        with torch.random.fork_rng(devices=[]), hub_access():
            torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=pretrained, device=device, force_quick_gelu=quick_gelu)
    except Exception as error:  # a file's contents can make the loading fail in many ways
        if not (checkpoint or isinstance(error, RuntimeError)):
            raise
        raise ConfigError(f"--clip: cannot load {spec}: {_first_line(error)}") from None
    model.eval()
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    architecture = f"{name}-quickgelu" if quick_gelu and f"{name}-quickgelu" in open_clip.list_models() else name
    return ClipModel(spec, model, open_clip.get_tokenizer(name), device, int(size),
                     tuple(visual.image_mean or open_clip.OPENAI_DATASET_MEAN),
                     tuple(visual.image_std or open_clip.OPENAI_DATASET_STD), architecture)


def _checkpoint_file(name: str, pretrained: str | None) -> str | None:
    """The user's checkpoint file of a spec (None for a pretrained tag or a hub model)."""
    if not pretrained or name.startswith(("hf-hub:", "local-dir:")) or not Path(pretrained).exists():
        return None
    return pretrained


def _read_checkpoint(path: str) -> None:
    """A checkpoint file holds tensors and plain containers only (a .safetensors or .npz file
    cannot hold code and is left to open_clip's own readers)."""
    if not path.endswith((".safetensors", ".npz", ".npy")):
        load_state_dict(path, "--clip", mmap=True)


def check_clip_checkpoint(spec: str) -> None:
    """Everything about a checkpoint file that can fail, checked without allocating the weights: it
    loads weights only, and its tensors fit the model (open_clip loads them into a model on the
    meta device, with its own conversions). A run calls this before it touches its output folder."""
    import open_clip

    name, pretrained = check_clip_spec(spec)
    checkpoint = _checkpoint_file(name, pretrained)
    if not checkpoint:
        return
    _read_checkpoint(checkpoint)
    try:
        with warnings.catch_warnings():  # loading into meta tensors warns once per parameter
            warnings.simplefilter("ignore")
            open_clip.create_model(name, pretrained=checkpoint, device="meta")
    except Exception as error:
        raise ConfigError(f"--clip: cannot load {spec}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    """One line of a loading error ('Error(s) in loading state_dict' says what is wrong on its second)."""
    text = " ".join(line.strip() for line in str(error).strip().splitlines()[:2])
    text = text if len(text) <= 300 else text[:297] + "..."
    return text if isinstance(error, RuntimeError) and text else f"{type(error).__name__}: {text}"


def _trained_with_quick_gelu(name: str, pretrained: str | None) -> bool:
    """OpenAI's weights (and some others) need QuickGELU, which the plain model configs lack: open_clip
    only warns, and the network would silently compute something else."""
    import open_clip

    if not pretrained or Path(pretrained).exists() or name.endswith("-quickgelu"):
        return False
    return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))


class NounEmbeddings:
    """Prompt-ensembled text embeddings (14 templates, normalized, averaged, renormalized), each
    distinct noun encoded once per run, always in chunks of `batch_size` nouns (padded with
    repeats) so that an embedding does not depend on which other nouns were new at the time."""

    def __init__(self, clip: ClipModel, batch_size: int = 16):
        self.clip = clip
        self.batch_size = batch_size
        self.cache: dict[str, object] = {}

    def __call__(self, nouns: list[str]):
        import torch

        missing = list(dict.fromkeys(noun for noun in nouns if noun not in self.cache))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            padded = chunk + chunk[:1] * (self.batch_size - len(chunk))
            prompts = [template.format(noun) for noun in padded for template in TEMPLATES]
            features = self.clip.encode_texts(prompts).reshape(len(padded), len(TEMPLATES), -1).mean(1)[: len(chunk)]
            for noun, feature in zip(chunk, torch.nn.functional.normalize(features, dim=-1).cpu(), strict=True):
                self.cache[noun] = feature
        if not nouns:
            return torch.zeros(0, 0)
        return torch.stack([self.cache[noun] for noun in nouns])
