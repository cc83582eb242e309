"""The dataset's own instance masks (COCO polygons/RLE): the ground-truth-mask baseline.

The decoder turns every image upright by its EXIF orientation; annotations may have been drawn
on the stored pixels (COCO's own: `source.annotation_frame: stored`, the default) or on the
upright view (`exif`, as many newer labelling tools do). Masks are rasterised in their own frame
and then turned with the pixels, so that masks and pixels agree for every orientation 1..8.
Where the JSON's width and height fit only one frame (orientations 5..8 swap them), the sizes
decide; where they fit neither, the image is a `size_mismatch` reject.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from ..images import ORIENTATION_TRANSFORMS, ImageRejected
from ..masks import rle_from_annotation
from ..reasons import SIZE_MISMATCH
from ..records import Proposals, Sample
from . import ProposalGenerator

FRAMES = ("stored", "exif")


class AnnotationProposals(ProposalGenerator):
    name = "annotations"
    postprocess = False  # ground truth is kept as it is; only empty masks are dropped
    needs_annotations = True

    def generate(self, sample: Sample) -> Proposals:
        if sample.annotations is None:
            raise ValueError("annotation proposals need instance annotations (coco source with --instances)")
        frame, size = annotation_frame(sample)
        rles = [rle_from_annotation(a["segmentation"], *size) for a in sample.annotations]
        orientation = getattr(sample, "orientation", 1) or 1
        if frame == "stored" and orientation != 1:
            rles = [turn_upright(rle, orientation) for rle in rles]
        proposals = Proposals(rles, np.ones(len(rles)), self.name)
        return proposals.filter(proposals.areas > 0)


def annotation_frame(sample: Sample) -> tuple[str, tuple[int, int]]:
    """The frame the sample's annotations were drawn in and its (height, width)."""
    upright = (sample.height, sample.width)
    orientation = getattr(sample, "orientation", 1) or 1
    stored = upright[::-1] if orientation >= 5 else upright
    sizes = {"stored": stored, "exif": upright}
    wanted = getattr(sample, "annotation_frame", "stored") or "stored"
    if sample.annotated_size is None:
        return wanted, sizes[wanted]
    annotated = tuple(int(v) for v in sample.annotated_size)
    fitting = [frame for frame in (wanted, *FRAMES) if sizes.get(frame) == annotated]
    if not fitting:
        raise ImageRejected(SIZE_MISMATCH, f"decoded image is {upright[0]}x{upright[1]} (h x w, EXIF orientation "
                                           f"{orientation}) but the annotations were drawn on "
                                           f"{annotated[0]}x{annotated[1]}")
    return fitting[0], annotated


def turn_upright(rle: dict, orientation: int) -> dict:
    """A mask on the stored pixels, turned as the decoder turned the pixels (PIL's exif_transpose)."""
    mask = mask_utils.decode(rle)
    turned = ORIENTATION_TRANSFORMS[orientation](mask)
    return mask_utils.encode(np.asfortranarray(turned.astype(np.uint8)))
