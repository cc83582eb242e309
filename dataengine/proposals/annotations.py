"""The dataset's own instance masks (COCO polygons/RLE): the ground-truth-mask baseline."""

from __future__ import annotations

import numpy as np

from ..images import ImageRejected
from ..masks import rle_from_annotation
from ..reasons import SIZE_MISMATCH
from ..records import Proposals, Sample
from . import ProposalGenerator


class AnnotationProposals(ProposalGenerator):
    name = "annotations"
    postprocess = False  # ground truth is kept as it is; only empty masks are dropped
    needs_annotations = True

    def generate(self, sample: Sample) -> Proposals:
        if sample.annotations is None:
            raise ValueError("annotation proposals need instance annotations (coco source with --instances)")
        size = (sample.height, sample.width)
        if sample.annotated_size is not None and tuple(sample.annotated_size) != size:
            # e.g. an EXIF rotation the annotators did not see: the masks would not fit the image
            raise ImageRejected(SIZE_MISMATCH, f"decoded image is {size[0]}x{size[1]} (h x w) but the annotations "
                                               f"were drawn on {sample.annotated_size[0]}x{sample.annotated_size[1]}")
        rles = [rle_from_annotation(a["segmentation"], *size) for a in sample.annotations]
        proposals = Proposals(rles, np.ones(len(rles)), self.name)
        return proposals.filter(proposals.areas > 0)
