"""The dataset's own instance masks (COCO polygons/RLE): the ground-truth-mask baseline."""

from __future__ import annotations

import numpy as np

from ..masks import rle_from_annotation
from ..records import Proposals, Sample
from . import ProposalGenerator


class AnnotationProposals(ProposalGenerator):
    name = "annotations"
    postprocess = False  # ground truth is kept as it is; only empty masks are dropped
    needs_annotations = True

    def generate(self, sample: Sample) -> Proposals:
        if sample.annotations is None:
            raise ValueError("annotation proposals need instance annotations (coco source with --instances)")
        rles = [rle_from_annotation(a["segmentation"], sample.height, sample.width) for a in sample.annotations]
        if not rles:
            return Proposals([], np.zeros(0), self.name)
        from pycocotools import mask as mask_utils

        masks = np.moveaxis(mask_utils.decode(rles), -1, 0)
        return Proposals.from_masks(masks, np.ones(len(rles)), self.name)
