"""Mask prompt tuning (MPT) as a wrapper around an open_clip VisionTransformer.

The wrapper does not copy open_clip's forward: it registers forward hooks on the tower's own
modules. The hook on the patch embedding (`conv1`) replaces masked patch tokens by prompts[0]
(before the class token and the positional embedding are added, as in the method's code); the
hooks on the first depth-1 residual blocks replace the masked patch tokens of their output by
prompts[1..depth-1]. The class token is never touched. With no masked patch the tower's output is
the plain tower's, exactly.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_tensors
from .config import ConfigError


class MPTError(ConfigError):
    """A model or prompt file that mask prompt tuning cannot use."""


def patch_grid(visual) -> tuple[int, int]:
    return tuple(int(v) for v in visual.grid_size)


DEFAULT_DEPTH = 3  # the method's


def prompt_depth(visual, depth: int | None) -> int:
    """The depth to use: as asked, or by default the method's 3, capped at the tower's block count
    (the package's 2-block test towers take 2)."""
    if depth is not None:
        return depth
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)  # None: not a ViT, check_vit says so
    return DEFAULT_DEPTH if blocks is None else min(DEFAULT_DEPTH, len(blocks))


def check_vit(visual, depth: int) -> None:
    """Refuse what mask prompt tuning cannot use, before any work starts."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise MPTError(f"mask prompt tuning needs an open_clip ViT; this model's visual tower is a "
                       f"{type(visual).__name__}")
    if not isinstance(visual.patch_dropout, nn.Identity):
        raise MPTError("mask prompt tuning needs patch_dropout = 0 (dropped tokens lose their patch positions)")
    if getattr(visual.transformer, "grad_checkpointing", False):
        raise MPTError("mask prompt tuning does not work with gradient checkpointing (the recomputed blocks "
                       "would run without the prompts)")
    blocks = len(visual.transformer.resblocks)
    if not 1 <= depth <= blocks:
        raise MPTError(f"--prompt-depth {depth} does not fit this tower of {blocks} blocks: pass --prompt-depth "
                       f"1..{blocks} (or leave it out: {min(DEFAULT_DEPTH, blocks)} here)")


def masked_patches(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) region masks (True = inside the region) -> (B, gh*gw) bool, True where the patch
    is masked out: a patch counts as masked only when all of its pixels are outside the region."""
    visible = F.adaptive_max_pool2d(masks[:, None].float(), grid)  # any visible pixel keeps the patch
    return (visible[:, 0] == 0).flatten(1)


class MaskPromptedViT(nn.Module):
    """An open_clip visual tower with learnable mask prompts of shape (depth, patches, width).

    `forward(images, masks)` returns the tower's pooled output; `masks` are (B, H, W) bool at the
    input resolution, or None for the plain tower. The tower itself is held, not copied: freezing
    or training its weights is the caller's choice.
    """

    def __init__(self, visual: nn.Module, depth: int = DEFAULT_DEPTH, init_std: float = 0.02,
                 generator: torch.Generator | None = None):
        super().__init__()
        check_vit(visual, depth)
        self.visual = visual
        self.grid = patch_grid(visual)
        width = visual.conv1.out_channels
        self.prompts = nn.Parameter(torch.randn(depth, self.grid[0] * self.grid[1], width, generator=generator) * init_std)
        self._masked: torch.Tensor | None = None
        self._hooks = [visual.conv1.register_forward_hook(self._replace_patch_embeddings)]
        for index in range(depth - 1):
            self._hooks.append(visual.transformer.resblocks[index].register_forward_hook(self._block_hook(index + 1)))

    @property
    def depth(self) -> int:
        return self.prompts.shape[0]

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        with self._masking(None if masks is None else masked_patches(masks.to(images.device), self.grid)):
            return self.visual(images)

    @contextlib.contextmanager
    def _masking(self, masked: torch.Tensor | None):
        self._masked = masked if masked is not None and bool(masked.any()) else None
        try:
            yield
        finally:
            self._masked = None

    def _replace_patch_embeddings(self, module, inputs, output):
        if self._masked is None:
            return None
        batch, width = output.shape[:2]
        prompt = self.prompts[0].to(output.dtype).t().reshape(1, width, *output.shape[2:])
        keep = ~self._masked.reshape(batch, 1, *output.shape[2:])
        return torch.where(keep, output, prompt)

    def _block_hook(self, level: int):
        def replace_patch_tokens(module, inputs, output):
            if self._masked is None:
                return None
            tokens = output if self.visual.transformer.batch_first else output.transpose(0, 1)
            patches = torch.where(~self._masked[..., None], tokens[:, 1:], self.prompts[level].to(tokens.dtype))
            tokens = torch.cat([tokens[:, :1], patches], dim=1)
            return tokens if self.visual.transformer.batch_first else tokens.transpose(0, 1)

        return replace_patch_tokens

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def save_prompts(path, wrapper: MaskPromptedViT, model_name: str) -> None:
    """The learned prompts on their own: the whole result of MPT, shareable across tasks."""
    torch.save({"format": "dataengine-mask-prompts/1", "model": model_name, "depth": wrapper.depth,
                "grid": list(wrapper.grid), "prompts": wrapper.prompts.detach().cpu()}, path)


def read_prompt_file(path, what: str = "--prompts") -> dict:
    """A prompt file as save_prompts writes it; whatever else it is (not a file, damaged, not
    tensors, other keys) is a one-line ConfigError that names it."""
    try:
        saved = load_tensors(path, what)
    except ConfigError as error:
        raise MPTError(str(error)) from None
    if not isinstance(saved, dict) or saved.get("format") != "dataengine-mask-prompts/1":
        raise MPTError(f"{what}: {path} is not a mask prompt file written by dataengine finetune")
    depth, prompts = saved.get("depth"), saved.get("prompts")
    if (not isinstance(depth, int) or isinstance(depth, bool) or not isinstance(prompts, torch.Tensor)
            or prompts.ndim != 3 or prompts.shape[0] != depth or not prompts.is_floating_point()):
        raise MPTError(f"{what}: {path} is a damaged mask prompt file (it needs an int 'depth' and a "
                       "(depth, patches, width) float tensor 'prompts')")
    return saved


def wrap_with_prompts(visual: nn.Module, path) -> MaskPromptedViT:
    """A tower wrapped with the prompts of a prompt file (its depth taken from the file)."""
    saved = read_prompt_file(path)
    check_vit(visual, 1)
    blocks = len(visual.transformer.resblocks)
    if not 1 <= saved["depth"] <= blocks:
        raise MPTError(f"mask prompts {path} have depth {saved['depth']} (model {saved.get('model')}); this "
                       f"model's tower has {blocks} blocks")
    wrapper = MaskPromptedViT(visual, depth=saved["depth"])
    prompts = saved["prompts"]
    if prompts.shape != wrapper.prompts.shape:
        raise MPTError(f"mask prompts {path} have shape {tuple(prompts.shape)} (model {saved.get('model')}); "
                       f"this model needs {tuple(wrapper.prompts.shape)}")
    with torch.no_grad():
        wrapper.prompts.copy_(prompts)
    return wrapper
