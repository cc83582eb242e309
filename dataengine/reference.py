"""The plain, obviously-right matcher: one region at a time, PIL preprocessing, one CLIP forward
per region. Tests check the batched `RegionMatcher` against it; `bench/` measures both."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .clip import ClipModel, NounEmbeddings
from .records import Proposals
from .regions import prepare_region_pil


def reference_similarity(clip: ClipModel, nouns: NounEmbeddings, image: np.ndarray, proposals: Proposals,
                         noun_names: list[str]) -> np.ndarray:
    """(proposals, nouns) cosine similarities computed region by region."""
    picture = Image.fromarray(image)
    masks = proposals.decode()
    text = nouns(noun_names)
    mean = torch.tensor(clip.mean)[:, None, None]
    std = torch.tensor(clip.std)[:, None, None]
    rows = []
    for mask, box in zip(masks, proposals.boxes_xywh, strict=True):
        crop, crop_mask = prepare_region_pil(picture, mask, box, clip.image_size, clip.fill_rgb)
        pixels = (torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255.0 - mean) / std
        feature = clip.encode_regions(pixels[None], torch.from_numpy(crop_mask)[None])[0].cpu()  # with its prompts, if any
        rows.append((feature @ text.T).numpy())
    return np.stack(rows) if rows else np.zeros((0, len(noun_names)))
