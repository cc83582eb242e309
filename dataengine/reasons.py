"""Every reject reason, in one place: the code, the README and `schemas/` all follow this list.

An image-level reason means the input image gave no pair at all; a noun-level reason means one
caption noun of an image got no pair (the image may still have pairs from its other nouns).
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_LEVEL = "image"
NOUN_LEVEL = "noun"


@dataclass(frozen=True)
class Reason:
    name: str
    level: str
    meaning: str


REASONS: tuple[Reason, ...] = (
    Reason("missing_file", IMAGE_LEVEL, "the image file or tar member does not exist, or is not a regular file"),
    Reason("empty_file", IMAGE_LEVEL, "the image file has zero bytes"),
    Reason("decode_error", IMAGE_LEVEL, "the bytes are not an image PIL can decode (truncated, garbage)"),
    Reason("too_large", IMAGE_LEVEL, "the file, its pixel count or its decoded size exceeds the limits"),
    Reason("bad_metadata", IMAGE_LEVEL, "a webdataset KEY.json that is not a JSON object (the parser's message)"),
    Reason("no_caption", IMAGE_LEVEL, "no caption text after normalisation"),
    Reason("no_nouns", IMAGE_LEVEL, "no caption noun survived the noun filters"),
    Reason("no_proposals", IMAGE_LEVEL, "the proposal generator found no mask"),
    Reason("size_mismatch", IMAGE_LEVEL, "annotation masks whose frame does not match the decoded image"),
    Reason("no_pairs", IMAGE_LEVEL, "every noun of the image got a noun-level reject"),
    Reason("duplicate_key", IMAGE_LEVEL, "a second input with a key already seen"),
    Reason("source_error", IMAGE_LEVEL, "an input row the source cannot read (malformed line, wrong type, path outside --images)"),
    Reason("out_of_memory", IMAGE_LEVEL, "the sample ran out of memory alone, after one retry"),
    Reason("stage_error", IMAGE_LEVEL, "an exception in a stage, with its class and message"),
    Reason("too_few_mentions", NOUN_LEVEL, "the noun is in fewer of the image's captions than --min-mentions"),
    Reason("below_min_score", NOUN_LEVEL, "the best proposal's cosine is under --min-score"),
    Reason("below_min_margin", NOUN_LEVEL, "best minus second-best cosine is under --min-margin"),
    Reason("not_mutual_best", NOUN_LEVEL, "--mutual-best: the noun's best proposal prefers another noun of the image"),
    Reason("outside_vocabulary_top_k", NOUN_LEVEL, "--vocabulary: the noun is not among the top --vocabulary-top-k "
           "classes of its region over the vocabulary"),
    Reason("no_free_proposal", NOUN_LEVEL, "--one-to-one left no proposal for this noun"),
    Reason("over_max_pairs", NOUN_LEVEL, "the image already has --max-pairs-per-image pairs"),
    Reason("below_noun_margin", NOUN_LEVEL, "dataengine filter --min-noun-margin: the median margin of the noun's pairs "
           "over the corpus is under the setting (CLIP cannot tell this noun's region from the others), so all its "
           "pairs go"),
    Reason("below_noun_quantile", NOUN_LEVEL, "dataengine filter --noun-quantile: the pair's score is under its noun's "
           "score quantile over the corpus"),
    Reason("over_max_pairs_per_noun", NOUN_LEVEL, "dataengine filter --max-pairs-per-noun: the noun already has that many "
           "higher-scoring pairs in the corpus"),
)
REASON_NAMES = tuple(reason.name for reason in REASONS)

(MISSING_FILE, EMPTY_FILE, DECODE_ERROR, TOO_LARGE, BAD_METADATA, NO_CAPTION, NO_NOUNS, NO_PROPOSALS,
 SIZE_MISMATCH, NO_PAIRS, DUPLICATE_KEY, SOURCE_ERROR, OUT_OF_MEMORY, STAGE_ERROR,
 TOO_FEW_MENTIONS, BELOW_MIN_SCORE, BELOW_MIN_MARGIN, NOT_MUTUAL_BEST, OUTSIDE_VOCABULARY_TOP_K, NO_FREE_PROPOSAL,
 OVER_MAX_PAIRS, BELOW_NOUN_MARGIN, BELOW_NOUN_QUANTILE, OVER_MAX_PAIRS_PER_NOUN) = REASON_NAMES


def reasons_markdown() -> str:
    """The README's table of reasons (a test keeps the README equal to it)."""
    rows = ["| reason | level | meaning |", "|---|---|---|"]
    rows += [f"| `{reason.name}` | {reason.level} | {reason.meaning} |" for reason in REASONS]
    return "\n".join(rows)
