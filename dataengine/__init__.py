"""dataengine: mine (masked region, noun) pairs from image-caption data for mask-adapted CLIP."""

from .config import MineConfig
from .pipeline import mine

__all__ = ["MineConfig", "mine"]
