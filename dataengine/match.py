"""Matching caption nouns to proposals with CLIP.

The method's rule: for each noun, the proposal with the highest cosine similarity gets the noun.
Precision filters, applied in this order, each recording why a noun lost its pair:

1. `min_mentions`: the noun is in at least N of the image's captions (too_few_mentions);
2. `min_score` on the best cosine (below_min_score);
3. `min_margin` on best minus second best (below_min_margin);
4. `mutual_best`: the noun's best proposal also prefers this noun among the image's nouns
   (not_mutual_best);
5. `vocabulary` + `vocabulary_top_k`: the noun is among the top k of its region's classification
   over a vocabulary (the corpus's own nouns, or a file) (outside_vocabulary_top_k);
6. `one_to_one`: a max-total-score assignment, scipy's linear_sum_assignment (no_free_proposal);
7. `max_pairs_per_image`: the highest-scoring pairs stay (over_max_pairs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .clip import ClipModel, NounEmbeddings
from .config import DEFAULT_MASK_PIXELS, MatchConfig, masks_per_chunk
from .keys import pair_key
from .reasons import (
    BELOW_MIN_MARGIN,
    BELOW_MIN_SCORE,
    NO_FREE_PROPOSAL,
    NOT_MUTUAL_BEST,
    NOUN_LEVEL,
    OUTSIDE_VOCABULARY_TOP_K,
    OVER_MAX_PAIRS,
    TOO_FEW_MENTIONS,
)
from .records import Pair, Reject, Sample
from .regions import normalize, prepare_regions
from .single_pass import SinglePassEncoder, patch_coverage


@dataclass
class Choice:
    noun_index: int
    proposal_index: int
    score: float
    margin: float | None  # None when the image has a single proposal


@dataclass
class Selection:
    pairs: list[Choice] = field(default_factory=list)
    rejects: list[tuple[Choice, str]] = field(default_factory=list)


@dataclass
class VocabularyCheck:
    """A region's classification over the vocabulary: `scores(proposal)` is the proposal's cosine
    to every vocabulary noun; `columns[noun]` is the image noun's place in the vocabulary (None
    where the vocabulary lacks it, which fails the check)."""

    scores: Callable[[int], np.ndarray]
    columns: list[int | None]
    top_k: int

    def keeps(self, proposal: int, noun: int) -> bool:
        column = self.columns[noun]
        if column is None:
            return False
        row = self.scores(proposal)
        return int((row > row[column]).sum()) < self.top_k  # ties count for the noun


def select_pairs(similarity: np.ndarray, config: MatchConfig, captions: list[int] | None = None,
                 vocabulary: VocabularyCheck | None = None) -> Selection:
    """similarity: (proposals, nouns) cosine similarities of one image; captions: how many of the
    image's captions mention each noun (min_mentions); vocabulary: for the vocabulary filter."""
    num_proposals, num_nouns = similarity.shape
    best = similarity.argmax(axis=0)
    top2 = -np.sort(-similarity, axis=0)[:2]
    selection = Selection()
    candidates = []
    for noun in range(num_nouns):
        margin = float(top2[0, noun] - top2[1, noun]) if num_proposals > 1 else None
        choice = Choice(noun, int(best[noun]), float(top2[0, noun]), margin)
        reason = _first_failed_filter(choice, similarity, config, captions, vocabulary)
        if reason is None:
            candidates.append(choice)
        else:
            selection.rejects.append((choice, reason))
    if config.one_to_one:
        candidates = _one_to_one(candidates, similarity, selection)
        candidates = _recheck_moved(candidates, config, vocabulary, selection)
    if config.max_pairs_per_image is not None:
        candidates.sort(key=lambda c: (-c.score, c.noun_index))
        selection.rejects.extend((c, OVER_MAX_PAIRS) for c in candidates[config.max_pairs_per_image :])
        candidates = candidates[: config.max_pairs_per_image]
    selection.pairs = sorted(candidates, key=lambda c: c.noun_index)
    return selection


def _recheck_moved(candidates: list[Choice], config: MatchConfig, vocabulary, selection: Selection) -> list[Choice]:
    """The assignment may have moved a noun to another, weaker proposal: the filters that depend on
    the proposal are checked again there (mutual best cannot fail: the nouns that pass it already
    have distinct best proposals, which the assignment keeps)."""
    kept = []
    for choice in candidates:
        if config.min_score is not None and choice.score < config.min_score:
            selection.rejects.append((choice, BELOW_MIN_SCORE))
        elif vocabulary is not None and not vocabulary.keeps(choice.proposal_index, choice.noun_index):
            selection.rejects.append((choice, OUTSIDE_VOCABULARY_TOP_K))
        else:
            kept.append(choice)
    return kept


def _first_failed_filter(choice: Choice, similarity: np.ndarray, config: MatchConfig, captions, vocabulary) -> str | None:
    """The reason of the first per-noun filter (1-5 of the module's list) the choice fails, if any."""
    if captions is not None and captions[choice.noun_index] < config.min_mentions:
        return TOO_FEW_MENTIONS
    if config.min_score is not None and choice.score < config.min_score:
        return BELOW_MIN_SCORE
    if config.min_margin is not None and choice.margin is not None and choice.margin < config.min_margin:
        return BELOW_MIN_MARGIN
    if config.mutual_best and int(similarity[choice.proposal_index].argmax()) != choice.noun_index:
        return NOT_MUTUAL_BEST
    if vocabulary is not None and not vocabulary.keeps(choice.proposal_index, choice.noun_index):
        return OUTSIDE_VOCABULARY_TOP_K
    return None


def _one_to_one(candidates: list[Choice], similarity: np.ndarray, selection: Selection) -> list[Choice]:
    from scipy.optimize import linear_sum_assignment

    if not candidates:
        return candidates
    nouns = [c.noun_index for c in candidates]
    proposals, assigned = linear_sum_assignment(similarity[:, nouns], maximize=True)
    proposal_of = dict(zip(assigned.tolist(), proposals.tolist(), strict=True))
    kept = []
    for column, choice in enumerate(candidates):
        if column not in proposal_of:
            selection.rejects.append((choice, NO_FREE_PROPOSAL))
            continue
        proposal = proposal_of[column]
        kept.append(Choice(choice.noun_index, proposal, float(similarity[proposal, choice.noun_index]), choice.margin))
    return kept


class Timer:
    """Accumulates seconds per phase. On a GPU, `sync=True` waits for the device at each phase edge
    so that time is attributed to the right phase (benchmarks); off by default, since the waits
    would stop crop preparation from overlapping the forward."""

    def __init__(self, device: str, sync: bool = False):
        self.cuda = device.startswith("cuda") and sync
        self.seconds: dict[str, float] = {}

    def phase(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                timer._sync()
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer._sync()
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.start

        return _Phase()

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def default_batch_size(device: str) -> int:
    """Regions per forward. On a GPU, big batches; on a CPU, a ViT forward gains little from
    batching and large batches slow it down (`--batch-size` sets it; `bench/bench_matcher.py`
    measures regions/s on a machine)."""
    return 64 if device.startswith("cuda") else 8


class RegionMatcher:
    """Scores every proposal of a batch of images against the images' nouns, batched across images.

    Masks are decoded a chunk at a time, at most `mask_pixels` mask pixels (masks x image pixels)
    at once: memory per image stays bounded however large the image and however many proposals."""

    def __init__(self, clip: ClipModel, config: MatchConfig, mask_pixels: int = DEFAULT_MASK_PIXELS):
        self.clip = clip
        self.config = config
        self.mask_pixels = mask_pixels
        self.batch_size = config.batch_size or default_batch_size(clip.device)
        self.noun_embeddings = NounEmbeddings(clip)
        self.timer = Timer(clip.device)
        words = config.vocabulary_words  # resolved from match.vocabulary by the run (pipeline.resolve_vocabulary)
        self.vocabulary = self.noun_embeddings(words).cpu() if words else None  # (V, D), for the vocabulary filter
        self.vocabulary_column = {noun: column for column, noun in enumerate(words or [])}
        self.single_pass = (SinglePassEncoder(clip, config.single_pass_blocks, config.single_pass_long_side)
                            if config.encoder == "single-pass" else None)

    def region_features(self, samples: list[Sample]) -> list[torch.Tensor]:
        """L2-normalized CLIP features of every proposal, (P_i, D) per sample, in proposal order."""
        if self.single_pass is not None:
            return [self._single_pass_features(sample) for sample in samples]
        owners, pending, features = [], [], []
        for number, sample in enumerate(samples):
            for start, crops in self._crops_of(sample):
                pending.append(crops)
                owners.append((number, start, len(crops[0])))
                while sum(len(pixels) for pixels, _ in pending) >= self.batch_size:
                    pending = self._forward_full_batch(pending, features)
        if pending:
            with self.timer.phase("forward"):
                features.append(self._encode(*_concatenated(pending)))
        chunks = torch.cat(features) if features else torch.zeros(0, 1)
        return _split_by_owner(chunks, owners, [len(s.proposals) for s in samples])

    def _forward_full_batch(self, pending: list[tuple[torch.Tensor, torch.Tensor]], features: list[torch.Tensor]):
        pixels, masks = _concatenated(pending)
        size = self.batch_size
        with self.timer.phase("forward"):
            features.append(self._encode(pixels[:size], masks[:size]))
        return [(pixels[size:], masks[size:])] if len(pixels) > size else []

    def _encode(self, pixels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_regions(pixels, masks, pad_to=self.batch_size)

    def _single_pass_features(self, sample: Sample) -> torch.Tensor:
        """One forward of the whole image, a region token per proposal (dataengine/single_pass.py).
        Each image is its own forward, so its features depend on nothing but the image itself."""
        with self.timer.phase("prepare"):
            image = self._image_tensor(sample.image)
            coverage = self._patch_coverage(sample, self.single_pass.grid(*sample.image.shape[:2]))
        with self.timer.phase("forward"):
            return self.single_pass(image, coverage)

    def _patch_coverage(self, sample: Sample, grid: tuple[int, int]) -> torch.Tensor:
        """(P, patches) share of each patch inside each proposal, masks decoded a memory-bounded chunk at a time."""
        rles = sample.proposals.rles
        step = masks_per_chunk(self.mask_pixels, sample.image.shape[0], sample.image.shape[1])
        chunks = [patch_coverage(self._mask_tensor(rles, list(range(start, min(start + step, len(rles))))), grid)
                  for start in range(0, len(rles), step)]
        return torch.cat(chunks) if chunks else patch_coverage(torch.zeros((0, 1, 1), dtype=torch.bool), grid)

    def _crops_of(self, sample: Sample):
        """Normalized crops and crop masks of one sample's proposals, in chunks of similar box size
        (see `_size_chunks`)."""
        with self.timer.phase("prepare"):
            image = self._image_tensor(sample.image)
            boxes = torch.from_numpy(sample.proposals.boxes_xywh)
        for chosen in _size_chunks(boxes, self._masks_per_chunk(sample.image)):
            with self.timer.phase("prepare"):
                masks = self._mask_tensor(sample.proposals.rles, chosen.tolist())
                crops, crop_masks = prepare_regions(image, masks, boxes[chosen], self.clip.image_size, self.clip.fill_rgb)
                del masks
                pixels = normalize(crops, self.clip.mean, self.clip.std)
            yield chosen, (pixels, crop_masks)  # outside the timed phase: the consumer runs forwards in between

    def _masks_per_chunk(self, image: np.ndarray) -> int:
        return min(self.batch_size, masks_per_chunk(self.mask_pixels, image.shape[0], image.shape[1]))

    def _image_tensor(self, image: np.ndarray) -> torch.Tensor:
        # torch wants a writable array (decoded images may be read-only views of PIL buffers)
        return torch.from_numpy(np.require(image, requirements=["C", "W"])).to(self.clip.device, non_blocking=True).permute(2, 0, 1)

    def _mask_tensor(self, rles: list[dict], indices: list[int]) -> torch.Tensor:
        """The masks `indices` of `rles`, decoded at full resolution: (len(indices), H, W) bool."""
        decoded = np.moveaxis(mask_utils.decode([rles[i] for i in indices]), -1, 0).astype(bool)
        return torch.from_numpy(decoded).to(self.clip.device, non_blocking=True)

    def match(self, samples: list[Sample]) -> None:
        """Fill `pairs` and `noun_rejects` of every sample."""
        text = self.noun_embeddings([n.noun for s in samples for n in s.nouns])
        features = self.region_features(samples)
        offset = 0
        for sample, regions in zip(samples, features, strict=True):
            nouns = text[offset : offset + len(sample.nouns)]
            offset += len(sample.nouns)
            similarity = (regions.cpu() @ nouns.T).numpy()
            selection = select_pairs(similarity, self.config, [noun.captions for noun in sample.nouns],
                                     self._vocabulary_check(sample, regions))
            with self.timer.phase("prepare"):
                sample.pairs = self._pairs(sample, selection.pairs)
            sample.noun_rejects = [
                Reject(NOUN_LEVEL, reason, stage="match", noun=sample.nouns[c.noun_index], score=c.score, margin=c.margin)
                for c, reason in selection.rejects
            ]

    def _vocabulary_check(self, sample: Sample, regions: torch.Tensor) -> VocabularyCheck | None:
        """Each region's scores over the vocabulary, computed only for the proposals a noun chose."""
        if self.vocabulary is None:
            return None
        rows: dict[int, np.ndarray] = {}

        def scores(proposal: int) -> np.ndarray:
            if proposal not in rows:
                rows[proposal] = (regions[proposal].cpu() @ self.vocabulary.T).numpy()
            return rows[proposal]

        columns = [self.vocabulary_column.get(noun.noun) for noun in sample.nouns]
        return VocabularyCheck(scores, columns, self.config.vocabulary_top_k)

    def _pairs(self, sample: Sample, choices: list[Choice]) -> list[Pair]:
        if not choices:
            return []
        image = self._image_tensor(sample.image)
        proposals = [c.proposal_index for c in choices]
        boxes = torch.from_numpy(sample.proposals.boxes_xywh[proposals])
        step = self._masks_per_chunk(sample.image)
        crops, crop_masks = [], []
        for start in range(0, len(choices), step):
            masks = self._mask_tensor(sample.proposals.rles, proposals[start : start + step])
            chunk, chunk_masks = prepare_regions(image, masks, boxes[start : start + step], self.clip.image_size,
                                                 self.clip.fill_rgb)
            del masks
            crops.append(chunk.permute(0, 2, 3, 1).cpu().numpy())
            crop_masks.append(chunk_masks.cpu().numpy())
        crops, crop_masks = np.concatenate(crops), np.concatenate(crop_masks)
        return [
            Pair(pair_key(sample.key, c.noun_index), sample.nouns[c.noun_index], c.proposal_index, c.score, c.margin,
                 crops[i], crop_masks[i])
            for i, c in enumerate(choices)
        ]


PADDED_PIXELS_PER_CHUNK = 4_000_000


def _size_chunks(boxes: torch.Tensor, max_regions: int) -> list[torch.Tensor]:
    """Proposal indices in chunks of similar box size: `prepare_regions` pads a chunk's crops to its
    largest box, so sorting by area and bounding regions x padded pixels keeps both waste and memory low."""
    areas = (boxes[:, 2] * boxes[:, 3]).numpy()
    order = np.argsort(areas, kind="stable")
    chunks, current, tallest, widest = [], [], 0, 0
    for index in order:
        height, width = int(boxes[index, 3]), int(boxes[index, 2])
        grown = (len(current) + 1) * max(tallest, height) * max(widest, width)
        if current and (len(current) == max_regions or grown > PADDED_PIXELS_PER_CHUNK):
            chunks.append(torch.tensor(current))
            current, tallest, widest = [], 0, 0
        current.append(int(index))
        tallest, widest = max(tallest, height), max(widest, width)
    if current:
        chunks.append(torch.tensor(current))
    return chunks


def _concatenated(pending: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([pixels for pixels, _ in pending]), torch.cat([masks for _, masks in pending])


def _split_by_owner(features: torch.Tensor, owners, counts: list[int]) -> list[torch.Tensor]:
    """Reassemble per-sample features in proposal order from chunks given in (sample, indices) order."""
    result = [torch.zeros(count, features.shape[-1]) for count in counts]
    offset = 0
    for number, indices, length in owners:
        result[number][indices] = features[offset : offset + length].cpu()
        offset += length
    return result
