"""Region preprocessing for CLIP, exactly as in the method: tight box of the mask (no padding),
outside-mask pixels set to the CLIP pixel mean, bicubic resize to SxS without keeping the aspect
ratio, mask resized nearest-neighbour.

`prepare_regions` does it for many regions of one image with tensor operations, in one of two
ways that give the same pixels (both are torch's antialiased bicubic, a = -0.5 like PIL's):

- On a GPU, batched: crops are gathered with index tensors and resized by two batched matrix
  products with per-size weight matrices, out = Wy @ crop @ Wx^T (the weights are read off by
  resizing an identity matrix with `F.interpolate`, cached per size, and padded to the longest
  crop one region at a time). The dense products are mostly multiplications by zero, which a GPU
  does not mind.
- On a CPU, region by region through torch's 8-bit antialiased resize (SIMD, separable, only the
  few taps each output pixel needs), which does far less work than the dense products; with
  small CLIP models preparation can be the larger half of matching (`bench/bench_matcher.py`
  prints the share of matcher time outside the forward).

`prepare_region_pil` is the plain one-region reference (PIL), used by tests and the benchmark.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@lru_cache(maxsize=512)  # 224 x length floats each: a few hundred MB at most
def _resize_weights(length: int, size: int, device: str) -> torch.Tensor:
    """(size, length) matrix W with resize(x) = W @ x for 1-D signals (antialiased bicubic)."""
    identity = torch.eye(length, dtype=torch.float64)[None, None]
    weights = F.interpolate(identity, size=(size, length), mode="bicubic", antialias=True, align_corners=False)
    return weights[0, 0].to(device=device, dtype=torch.float32)


def _stacked_weights(lengths: torch.Tensor, size: int, padded: int, device) -> torch.Tensor:
    """(R, size, padded): each region's weights, zero over the padding of shorter crops."""
    return torch.stack([F.pad(_resize_weights(length, size, str(device)), (0, padded - length))
                        for length in lengths.tolist()])


def _nearest_indices(starts: torch.Tensor, lengths: torch.Tensor, size: int) -> torch.Tensor:
    """PIL NEAREST source index per output pixel: start + floor((i + 0.5) * length / size)."""
    steps = (torch.arange(size, device=starts.device, dtype=torch.float64) + 0.5) / size
    offsets = torch.floor(steps[None] * lengths[:, None].double()).long()
    return starts[:, None] + torch.minimum(offsets, lengths[:, None] - 1)


def prepare_regions(image: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, size: int,
                    fill: tuple[float, float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked, resized crops of many regions of one image.

    image: (3, H, W) uint8; masks: (R, H, W) bool; boxes: (R, 4) int64 tight boxes (x, y, w, h).
    Returns crops (R, 3, size, size) uint8 and crop masks (R, size, size) bool.
    """
    # The fill is rounded to 8 bits like every stored pixel (and like PIL): (123, 117, 104) for CLIP's mean.
    fill_value = torch.tensor([round(v) for v in fill], device=image.device, dtype=torch.uint8)
    boxes = boxes.to(image.device).long()
    resize = resize_each if image.device.type == "cpu" else resize_batched
    crops = resize(image, masks, boxes, size, fill_value)
    x0, y0, widths, heights = boxes.unbind(1)
    region = torch.arange(len(boxes), device=image.device)[:, None, None]
    out_rows, out_cols = _nearest_indices(y0, heights, size), _nearest_indices(x0, widths, size)
    return crops, masks[region, out_rows[:, :, None], out_cols[:, None, :]]


def resize_each(image, masks, boxes, size: int, fill_value) -> torch.Tensor:
    """CPU: each region cropped, masked and resized by torch's 8-bit antialiased bicubic kernel."""
    crops = torch.empty((len(boxes), 3, size, size), dtype=torch.uint8)
    for region, (x, y, w, h) in enumerate(boxes.tolist()):
        masked = torch.where(masks[region, y : y + h, x : x + w], image[:, y : y + h, x : x + w], fill_value[:, None, None])
        crops[region] = F.interpolate(masked[None], size=(size, size), mode="bicubic", antialias=True)[0]
    return crops


def resize_batched(image, masks, boxes, size: int, fill_value) -> torch.Tensor:
    """GPU: all regions at once, crops gathered by index and resized by batched matrix products."""
    device = image.device
    x0, y0, widths, heights = boxes.unbind(1)
    pad_h, pad_w = int(heights.max()), int(widths.max())
    height, width = image.shape[1:]
    rows = (y0[:, None] + torch.arange(pad_h, device=device)[None]).clamp_(max=height - 1)  # (R, pad_h)
    cols = (x0[:, None] + torch.arange(pad_w, device=device)[None]).clamp_(max=width - 1)  # (R, pad_w)
    region = torch.arange(len(boxes), device=device)[:, None, None]
    crop_masks = masks[region, rows[:, :, None], cols[:, None, :]]  # (R, pad_h, pad_w)
    crops = image[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)  # (R, 3, pad_h, pad_w) uint8
    masked = torch.where(crop_masks[:, None], crops, fill_value[None, :, None, None]).float()
    weights_y = _stacked_weights(heights, size, pad_h, device)  # (R, size, pad_h)
    weights_x = _stacked_weights(widths, size, pad_w, device)  # (R, size, pad_w)
    resized = weights_y[:, None] @ masked @ weights_x[:, None].transpose(-1, -2)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Whole uint8 images (N, 3, H, W) to S x S: the full-frame region of `prepare_regions` (the same
    antialiased bicubic, aspect not kept), so that whole images and region crops look alike to CLIP."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True)


def normalize(crops: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (R, 3, S, S) crops to CLIP input: /255, minus mean, over std."""
    mean = torch.tensor(mean, device=crops.device)[None, :, None, None]
    std = torch.tensor(std, device=crops.device)[None, :, None, None]
    return (crops.float() / 255.0 - mean) / std


def prepare_region_pil(image: Image.Image, mask: np.ndarray, box, size: int,
                       fill: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Reference for one region: PIL crop, composite onto the fill colour, BICUBIC/NEAREST resize."""
    x, y, w, h = (int(v) for v in box)
    crop = image.crop((x, y, x + w, y + h))
    crop_mask = Image.fromarray(mask[y : y + h, x : x + w].astype(np.uint8) * 255)
    background = Image.new("RGB", crop.size, tuple(int(round(v)) for v in fill))
    masked = Image.composite(crop, background, crop_mask)
    resized = masked.resize((size, size), Image.BICUBIC)
    resized_mask = crop_mask.resize((size, size), Image.NEAREST)
    return np.asarray(resized), np.asarray(resized_mask) > 0
