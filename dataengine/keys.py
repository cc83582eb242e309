"""Deterministic, tar-safe keys derived from the input (never random, never time-based)."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY_LENGTH = 96
NOUN_INDEX_DIGITS = 4  # pair keys end in _nDDDD: unique per image, so unique overall


def safe_key(raw: str) -> str:
    """A key usable as a WebDataset member stem: [A-Za-z0-9_-] only (webdataset splits keys at the
    first dot). When cleaning changed the text, a short hash of the original keeps keys distinct."""
    cleaned = _UNSAFE.sub("_", raw).strip("_") or "x"
    if cleaned == raw and len(raw) <= MAX_KEY_LENGTH:
        return raw
    digest = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:10]
    return f"{cleaned[: MAX_KEY_LENGTH - 11]}-{digest}"


def pair_key(sample_key: str, noun_index: int) -> str:
    return f"{sample_key}_n{noun_index:0{NOUN_INDEX_DIGITS}d}"
