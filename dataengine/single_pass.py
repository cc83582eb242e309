"""The single-pass region encoder: every region of an image from one forward of an open_clip ViT.

The method encodes each region as its own masked 224x224 crop, one ViT forward per region. Here
the whole image goes through the tower once, and each region gets a *region token*: a copy of the
class token, added before the last `blocks` residual blocks, that attends only to itself and to
the patch tokens its mask covers (an additive attention bias of log(coverage), so a patch half
inside the region counts half, and patches outside count not at all). The class and patch tokens
never see the region tokens, so they run exactly as in the plain tower, and region tokens do not
see each other: a region's feature does not depend on the other regions (up to float rounding).
A region token passes through `ln_post` and `proj` like the class token; with a region covering
the whole image it *is* the class token, so its feature is the plain image feature.

As in SAN (Xu et al. 2023) and MaskCLIP's region tokens, the tower's weights are used unchanged:
any open_clip ViT with class-token pooling works, pretrained or finetuned. The image is resized
so that its long side is `long_side` pixels (aspect kept, each side a whole number of patches) and
the position embeddings are resampled to that grid (timm's `resample_abs_pos_embed`), so small
regions can cover more than a patch or two.

Mask prompts (MPT) do not apply: they stand in for the patches *outside* a region of a crop, and a
region token never attends to those patches. A model with mask prompts is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError


class SinglePassError(ConfigError):
    """A model the single-pass encoder cannot use."""


def check_single_pass_tower(visual, blocks: int | None) -> None:
    """Refuse, before any work, a tower whose pooled output is not its class token."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise SinglePassError(f"match.encoder single-pass needs an open_clip ViT; this model's visual tower is a "
                              f"{type(visual).__name__} (use match.encoder crops)")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise SinglePassError("match.encoder single-pass needs a ViT pooled by its class token (this one pools by "
                              f"{'attention' if visual.attn_pool is not None else visual.pool_type}); use match.encoder crops")
    depth = len(visual.transformer.resblocks)
    if blocks is not None and not 1 <= blocks <= depth:
        raise SinglePassError(f"match.single_pass_blocks {blocks} does not fit this tower of {depth} blocks "
                              f"(1..{depth})")


def check_single_pass_model(name: str, blocks: int | None) -> None:
    """`check_single_pass_tower` on the open_clip model `name`, built on the meta device (no weights
    are allocated or read), so that a run refuses before any work starts. Hub and local-dir models
    are checked only when the matcher loads them (their config is not known before)."""
    import logging
    import warnings

    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        return
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip logs that a model without weights is randomly initialised
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = open_clip.create_model(name, device="meta")
    finally:
        logging.disable(previous)
    check_single_pass_tower(model.visual, blocks)


def refuse_mask_prompts(has_prompts: bool) -> None:
    if has_prompts:
        raise SinglePassError("match.encoder single-pass does not use mask prompts: they stand in for the patches "
                              "outside a region's crop, which a region token never attends to; use the crops "
                              "encoder with this model, or give its weights without the prompts")


def input_grid(height: int, width: int, long_side: int, patch: int) -> tuple[int, int]:
    """Patch grid of an image resized to `long_side` on its long side, aspect kept."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale / patch)), max(1, round(width * scale / patch))


def patch_coverage(masks: torch.Tensor, grid: tuple[int, int], device=None, chunk: int = 16) -> torch.Tensor:
    """(R, H, W) bool masks -> (R, gh*gw) share of each patch's pixels inside the region, on
    `device` (default: the masks'), `chunk` masks at a time: only that many become float at once."""
    pieces = [F.adaptive_avg_pool2d(masks[start : start + chunk, None].to(device).float(), grid).flatten(1)
              for start in range(0, len(masks), chunk)]
    return torch.cat(pieces) if pieces else torch.zeros((0, grid[0] * grid[1]), device=device or masks.device)


class SinglePassRegions(nn.Module):
    """Region tokens on an open_clip VisionTransformer (held, not copied).

    `forward(pixels, coverage)`: pixels (1, 3, gh*p, gw*p) normalized, coverage (R, gh*gw) from
    `patch_coverage`; returns the (R, D) pooled, projected region features (not normalized).
    `blocks`: region tokens join before the last `blocks` blocks (None: all of them).
    `max_regions`: region tokens per forward; an image with more regions runs the last blocks again.
    """

    def __init__(self, visual: nn.Module, blocks: int | None = None, max_regions: int = 128):
        super().__init__()
        check_single_pass_tower(visual, blocks)
        self.visual = visual
        self.patch = int(visual.patch_size[0])
        self.grid = tuple(int(v) for v in visual.grid_size)
        depth = len(visual.transformer.resblocks)
        self.split = depth - (blocks or depth)
        self.max_regions = max_regions
        self.heads = _heads(visual.transformer.resblocks[0])
        self._positions: dict[tuple[int, int], torch.Tensor] = {}

    def forward(self, pixels: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        grid = (pixels.shape[-2] // self.patch, pixels.shape[-1] // self.patch)
        tokens = self._run(self.visual.transformer.resblocks[: self.split], self._embeds(pixels, grid))
        features = [self._region_tokens(tokens, coverage[start : start + self.max_regions])
                    for start in range(0, len(coverage), self.max_regions)]
        pooled = self.visual.ln_post(torch.cat(features)) if features else tokens.new_zeros((0, tokens.shape[-1]))
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def _region_tokens(self, tokens: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        """The last blocks' output at the region tokens of one chunk of regions."""
        count = len(coverage)
        regions = tokens[:, :1].expand(1, count, tokens.shape[-1])
        sequence = torch.cat([tokens, regions], dim=1)
        bias = attention_bias(coverage.to(tokens.device), tokens.shape[1])
        bias = bias.to(tokens.dtype if tokens.is_floating_point() else torch.float32)
        output = self._run(self.visual.transformer.resblocks[self.split :], sequence,
                           bias[None].expand(self.heads, -1, -1))
        return output[0, tokens.shape[1] :]

    def _run(self, blocks, tokens: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        batch_first = self.visual.transformer.batch_first
        x = tokens if batch_first else tokens.transpose(0, 1)
        for block in blocks:
            x = block(x, attn_mask=bias)
        return x if batch_first else x.transpose(0, 1)

    def _embeds(self, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The tower's own token embedding (`_embeds`), with position embeddings for `grid`."""
        visual = self.visual
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(len(x), 1, -1)
        x = torch.cat([cls, x], dim=1) + self._position_embedding(grid).to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x))

    def _position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.visual.positional_embedding
        embedding = self.visual.positional_embedding
        key = (grid, embedding.device, embedding.dtype)
        if key not in self._positions:  # the tower's weights are frozen here: resampled once per grid
            from timm.layers import resample_abs_pos_embed

            with torch.no_grad():
                self._positions[key] = resample_abs_pos_embed(embedding[None], new_size=list(grid),
                                                              old_size=list(self.grid), num_prefix_tokens=1)[0]
        return self._positions[key]


def attention_bias(coverage: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """(T, T) additive attention mask, T = image_tokens + R, for [class, patches..., regions...].

    Class and patch tokens attend to each other only (as in the plain tower); region r attends to
    itself (bias 0) and to patch p with bias log(coverage[r, p]) (-inf outside its region)."""
    count = len(coverage)
    total = image_tokens + count
    bias = torch.full((total, total), float("-inf"), device=coverage.device)
    bias[:image_tokens, :image_tokens] = 0.0
    bias[image_tokens:, 1:image_tokens] = coverage.log()
    rows = torch.arange(image_tokens, total, device=coverage.device)
    bias[rows, rows] = 0.0
    return bias


def _heads(block) -> int:
    attention = block.attn
    heads = getattr(attention, "num_heads", None)
    if heads is None:
        raise SinglePassError(f"match.encoder single-pass: cannot read the head count of {type(attention).__name__}")
    return int(heads)


class SinglePassEncoder:
    """The single-pass path of a ClipModel: `grid(H, W)` is the patch grid of an image, and
    `encoder(image, coverage)` the L2-normalized (R, D) features (on the CPU) of the regions whose
    `patch_coverage` on that grid is given; image: (3, H, W) uint8 on the model's device."""

    def __init__(self, clip, blocks: int | None = None, long_side: int | None = None):
        refuse_mask_prompts(clip.prompts is not None)
        self.clip = clip
        self.regions = SinglePassRegions(clip.model.visual, blocks).to(clip.device).eval()
        self.long_side = long_side if long_side is not None else clip.image_size
        if self.long_side < 1:
            raise SinglePassError(f"single-pass long side: must be at least 1 pixel, got {self.long_side}")

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return input_grid(height, width, self.long_side, self.regions.patch)

    def __call__(self, image: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        clip = self.clip
        if not len(coverage):
            return torch.zeros((0, clip.model.visual.output_dim))
        pixels = prepare_image(image, self.grid(*image.shape[1:]), self.regions.patch, clip.mean, clip.std)
        with torch.inference_mode(), clip.autocast():
            features = self.regions(pixels, coverage.to(clip.device))
        return F.normalize(features.float(), dim=-1).cpu()


def prepare_image(image: torch.Tensor, grid: tuple[int, int], patch: int, mean, std) -> torch.Tensor:
    """(3, H, W) uint8 -> (1, 3, gh*patch, gw*patch) normalized: antialiased bicubic, as for crops,
    in float (not rounded to 8 bits)."""
    size = (grid[0] * patch, grid[1] * patch)
    pixels = F.interpolate(image[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    pixels = pixels.clamp_(0, 255) / 255.0
    mean = torch.tensor(mean, device=image.device)[None, :, None, None]
    std = torch.tensor(std, device=image.device)[None, :, None, None]
    return (pixels - mean) / std
