"""Shared set-up for the benchmark scripts: the sample data and a quiet, offline environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO_MINI = SHARED_DATA / "coco-val-mini"


def offline_environment() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def require_coco_mini() -> Path:
    if not (COCO_MINI / "captions.json").exists():
        sys.exit(f"benchmark data not found: {COCO_MINI} (see ../shared/data/README.md)")
    return COCO_MINI
